"""Overall progress lines (``transforms.progress``): done / total, %, patches/s and an ETA, as
periodic lines on a non-terminal, a bar refreshed in place on a terminal; per-shard lines only
with ``--verbose``."""

import io
import logging
import multiprocessing
import re
import time

import pytest

from bigearthnet_beam.transforms import progress

LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (?P<label>[\w: ]+): (?P<n>\d+)/(?P<total>\d+) patches "
    r"\((?P<pct>\d+)%\), (?P<rate>\?|\s*[\d.]+) patches/s(, ETA (?P<eta>\?|\d\d:\d\d)| in [\d.]+ s)$"
)


def _report(folder, stage, n, delay):
    import os

    os.environ[progress.ENV_DIR] = folder
    for _ in range(n):
        time.sleep(delay)
        progress.shard_done(stage, 5)


def _lines(text):
    out = [LINE.match(line) for line in text.splitlines() if line.strip()]
    assert all(out), text
    return out


@pytest.mark.slow  # starts worker processes
def test_worker_processes_report_and_the_driver_prints_lines_with_an_eta(monkeypatch):
    monkeypatch.setenv(progress.ENV_INTERVAL, "0.2")
    stream = io.StringIO()
    passes = [progress.Pass("statistics", "convert: statistics", 20), progress.Pass("write", "convert: write", 40)]
    ctx = multiprocessing.get_context("spawn")  # fresh processes that see only the environment, like Beam's workers
    with progress.Watcher(passes, stream=stream, tty=False) as w:
        procs = [ctx.Process(target=_report, args=(w.folder, "statistics", 2, 0.4)) for _ in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        procs = [ctx.Process(target=_report, args=(w.folder, "write", 4, 0.3)) for _ in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
    lines = _lines(stream.getvalue())
    for label, total in (("convert: statistics", 20), ("convert: write", 40)):
        mine = [m for m in lines if m["label"] == label]
        assert mine[0]["n"] == "0" and mine[0]["eta"] == "?"  # a line at once: the start is not silent
        assert any(m["eta"] not in (None, "?") and 0 < int(m["n"]) < total for m in mine), mine
        assert [int(m["n"]) for m in mine] == sorted(int(m["n"]) for m in mine)
        last = mine[-1]
        assert (last["n"], last["total"], last["pct"], last["eta"]) == (str(total), str(total), "100", None)
    assert lines[-1]["label"] == "convert: write"  # the passes in order, one after the other


def test_failed_run_does_not_claim_completion(monkeypatch):
    stream = io.StringIO()
    with pytest.raises(RuntimeError):
        with progress.Watcher([progress.Pass("write", "convert: write", 10)], stream=stream, tty=False):
            progress.shard_done("write", 3)
            raise RuntimeError("job failed")
    last = _lines(stream.getvalue())[-1]
    assert (last["n"], last["pct"]) == ("3", "30")


def test_a_line_ends_once():
    stream = io.StringIO()
    bar = progress.Bar("validate", 4, stream=stream, tty=False)
    bar.update(4)
    bar.close(complete=True)
    bar.close(complete=True)
    assert [m["n"] for m in _lines(stream.getvalue())] == ["0", "4"]


def test_terminal_bar_is_refreshed_in_place():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    stream = Tty()
    bar = progress.Bar("convert: write", 50, stream=stream)
    for _ in range(5):
        time.sleep(0.25)
        bar.update(10)
    bar.close()
    text = stream.getvalue()
    assert "\r" in text and text.count("\n") == 1  # one line, rewritten
    assert re.search(r"convert: write: 50/50 patches 100%\|.*\| +[\d.]+ patches/s ETA 00:00", text), text


def test_without_a_watcher_workers_report_nothing(monkeypatch, tmp_path):
    monkeypatch.delenv(progress.ENV_DIR, raising=False)
    monkeypatch.chdir(tmp_path)
    progress.shard_done("write", 5)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "msg,level,shown",
    [
        ("worker: wrote train/train-00000-of-00004.tfrecord: 8 patches, 0 failed, 3.1 patches/s", logging.INFO, False),
        (
            "wrote validation/validation-00001-of-00002.tfrecord.gz: 8 patches, 1 failed, 2.0 patches/s",
            logging.INFO,
            False,
        ),
        ("worker: statistics: train shard 3 of 9: 180 patches in 40.2 s", logging.INFO, False),
        ("worker: wrote /data/out/dataset.json", logging.INFO, True),
        (
            "worker: wrote train/train-00000-of-00004.tfrecord: 8 patches, 0 failed, 3.1 patches/s",
            logging.WARNING,
            True,
        ),
    ],
)
def test_per_shard_lines_are_kept_for_verbose(msg, level, shown):
    rec = logging.LogRecord("benbeam", level, __file__, 1, msg, (), None)
    assert progress.ShardLineFilter().filter(rec) is shown


@pytest.mark.slow
def test_convert_prints_overall_lines_not_shard_lines_on_a_non_terminal(tmp_path, capfd, caplog, monkeypatch):
    from bigearthnet_beam.beam_pipeline.cli import main

    monkeypatch.setenv(progress.ENV_INTERVAL, "0.2")
    root = tmp_path / "reben"
    assert main(["synth", "--out", str(root), "--n", "24", "--seed", "4", "--workers", "1"]) == 0
    capfd.readouterr()
    argv = ["convert", "--meta", str(root / "metadata.parquet"), "--shard_size", "2", "--no_report", "--workers", "2"]
    assert main(argv + ["--out", str(tmp_path / "a")]) == 0
    err = capfd.readouterr().err + caplog.text  # log lines reach pytest's handler, progress lines stderr
    caplog.clear()
    lines = [LINE.match(line) for line in err.splitlines() if LINE.match(line)]
    assert {m["label"] for m in lines} == {"convert: statistics", "convert: write"}
    assert any(m["eta"] not in (None, "?") for m in lines), err
    totals = {m["label"]: m["total"] for m in lines}
    assert [(m["n"], m["pct"]) for m in lines if m["eta"] is None] == [
        (totals["convert: statistics"], "100"),
        ("24", "100"),
    ]
    assert not re.search(r"wrote \S+\.tfrecord: ", err) and "statistics: train shard" not in err

    stats = tmp_path / "a" / "stats.json"
    assert main(argv + ["--out", str(tmp_path / "b"), "--stats", str(stats), "--verbose"]) == 0
    err = capfd.readouterr().err + caplog.text
    assert re.search(r"wrote train/train-\d{5}-of-\d{5}\.tfrecord: ", err), err  # --verbose: per-shard lines
    assert [m["label"] for m in map(LINE.match, err.splitlines()) if m] and "convert: statistics" not in err
