"""The run report: `convert` writes report.html (self-contained) with its plots and run.json;
`benbeam report DATASET` writes it again; a real headless Chromium shows every section with
every image decoded."""

import json
import re

import pytest

from bigearthnet_beam.beam_pipeline.cli import main
from bigearthnet_beam.beam_pipeline.report_page import SECTIONS
from bigearthnet_beam.schemas import manifest
from bigearthnet_beam.transforms.progress import LOCAL_RUNNER  # what a local run records
from tests.browser import render, require_chromium
from tests.helpers import IN_PROCESS
from tests.helpers import read_manifest as _manifest


@pytest.fixture(scope="module")
def dataset(converted):
    """The session's converted replica (tests/conftest.py), every fault kind dead-lettered; read-only."""
    return converted


@pytest.mark.slow
def test_convert_writes_the_report_its_plots_and_the_run_record(dataset):
    html = (dataset / manifest.REPORT_HTML).read_text()
    assert 'src="http' not in html and "<script" not in html  # self-contained, nothing to fetch
    plots = {p.name for p in (dataset / manifest.REPORT_DIR).iterdir()}
    assert {"histograms.svg", "classes.svg", "failures.svg"} <= plots
    assert {f"sample-{i}-rgb.png" for i in range(6)} <= plots
    run = json.loads((dataset / manifest.RUN_JSON).read_text())
    man = _manifest(dataset)
    n = sum(s["input"] for s in man["splits"].values())
    assert run["patches"] == n and run["seconds"] > 0
    assert run["patches_per_s"] == pytest.approx(n / run["seconds"], 0.01)
    assert run["runner"] == LOCAL_RUNNER and run["counters"]["patches_written"] == n - man["failures"]["total"]
    # the manifest does not mention run.json or the report: it stays byte-identical between runs
    assert manifest.RUN_JSON not in json.dumps(man) and manifest.REPORT_HTML not in json.dumps(man)


@pytest.mark.slow
def test_the_report_renders_in_chromium_with_every_section_and_image(dataset, tmp_path):
    require_chromium()
    page = render(dataset / manifest.REPORT_HTML, screenshot=str(tmp_path / "report.png"))
    assert page["errors"] == []
    assert page["sections"] == list(SECTIONS)
    assert len(page["headings"]) == 1 + len(SECTIONS)
    man = _manifest(dataset)
    images = page["images"]
    assert len(images) == 3 + 2 * 6  # failures, histograms, classes + 6 samples × (RGB, label map)
    for img in images:
        assert img["loaded"], f"image {img['alt']!r} did not load"
    assert {i["id"] for i in images} >= {"plot-histograms", "plot-classes", "plot-failures"}
    assert page["scroll_width"] <= 1280  # nothing overflows the window sideways
    text = page["text"]
    for reason, count in man["failures"]["by_reason"].items():  # every failure reason, counted
        assert re.search(rf"{reason}\s[\d\s]*\s{count}\b", text), reason
    for split, s in man["splits"].items():  # the accounting row of every split
        assert re.search(rf"{split}\s+{s['input']}\s+{s['written']}\s+{s['failed']}\s", text), split
    assert "Every input row is accounted for." in text
    assert "patches per second" in text
    for band in man["statistics"]["bands"]:
        assert band in text
    assert (tmp_path / "report.png").stat().st_size > 10_000


def test_benbeam_report_regenerates_it_identically(dataset, tmp_path, capsys):
    out = tmp_path / "again.html"
    assert main(["report", str(dataset), "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    assert out.read_bytes() == (dataset / manifest.REPORT_HTML).read_bytes()
    assert (tmp_path / manifest.REPORT_DIR / "histograms.svg").read_bytes() == (
        dataset / manifest.REPORT_DIR / "histograms.svg"
    ).read_bytes()


@pytest.mark.slow
def test_a_dataset_without_run_record_or_histograms_still_gets_a_report(replica, dataset, tmp_path):
    """`--stats` from an earlier run: no histograms.npz; a copied dataset without run.json."""
    reben = replica
    out = tmp_path / "ds2"
    assert (
        main(
            [
                "convert",
                "--max_failure_fraction",
                "1",
                "--meta",
                str(reben / "metadata.parquet"),
                "--out",
                str(out),
                "--shard_size",
                "8",
                "--stats",
                str(dataset / manifest.STATS_JSON),
                "--no_report",
                *IN_PROCESS,
            ]
        )
        == 0
    )
    assert not (out / manifest.REPORT_HTML).exists()
    (out / manifest.RUN_JSON).unlink()
    assert main(["report", str(out)]) == 0
    html = (out / manifest.REPORT_HTML).read_text()
    assert "Not recorded: this dataset has no <code>run.json</code>" in html
    assert "No histograms: the statistics were given with <code>--stats</code>" in html


def test_report_on_a_folder_that_is_no_dataset_is_a_clear_error(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "dataset.json" in err and "not a complete dataset" in err


def test_a_dead_letter_without_a_split_is_listed_as_unknown_not_none():
    """A row whose split is missing is dead-lettered with ``"split": null``: the page says "?"."""
    from bigearthnet_beam.beam_pipeline.report_page import _failures_section

    man = {"failures": {"file": manifest.FAILURES_JSONL}}
    dead = [{"patch_id": "p1", "split": None, "stage": "metadata", "reason": "bad_split", "detail": "x"}]
    page = _failures_section(man, dead, {})
    assert '<td class="l">p1</td><td class="l">?</td>' in page and "None" not in page
