"""``report.html``: what a conversion did, for a person to read.

``benbeam convert`` writes it after ``dataset.json``; ``benbeam report DATASET`` writes it
again from the dataset alone. One self-contained HTML file (SVG plots and PNG sample
images embedded as data URIs, no scripts, no network) plus the same images as files under
``report/``:

- accounting: input, written and failed patches per split, and the invariant;
- failures per split and reason, with the first failing patches and their reasons;
- throughput of the run (from ``run.json``, which convert writes beside the manifest);
- per-band histograms from ``histograms.npz`` with the clipping percentiles marked;
- class pixel frequencies per split, in the classes' own colours;
- sample patches as RGB (B04, B03, B02) beside their label maps.

Everything but the throughput section is a function of the dataset's files, so a report
regenerated from the same dataset has the same content. This module reads the dataset and
writes the files (and is ``benbeam report``); ``report_page`` builds the HTML page and
``report_plots`` draws its images.
"""

from __future__ import annotations

import json
import logging
import sys

from bigearthnet_beam.beam_pipeline.report_page import build_html
from bigearthnet_beam.beam_pipeline.report_plots import (
    plot_classes,
    plot_failures,
    plot_histograms,
    render_sample,
    sample_params,
)
from bigearthnet_beam.schemas import manifest
from bigearthnet_beam.transforms import containment, flagtypes, storage

LOG = logging.getLogger("benbeam")

REPORT_HTML, REPORT_DIR, RUN_JSON = manifest.REPORT_HTML, manifest.REPORT_DIR, manifest.RUN_JSON
SAMPLES = 6


# --------------------------------------------------------------------------- inputs


def _read(dataset: str, rel: str, st: storage.Storage) -> bytes | None:
    """A file of the dataset, or None if it does not exist; a path that leaves the dataset
    (``containment.check_relative``) is refused, never opened."""
    try:
        return st.read_bytes(containment.check_relative(rel, dataset))
    except FileNotFoundError:
        return None


def _failures(dataset: str, man: dict, st: storage.Storage) -> list[dict]:
    data = _read(dataset, man["failures"].get("file", manifest.FAILURES_JSONL), st)
    if not data:
        return []
    return [json.loads(line) for line in data.decode("utf-8").splitlines() if line.strip()]


def _samples(dataset: str, man: dict, st: storage.Storage, n: int = SAMPLES) -> list[dict]:
    """The first ``n`` records of the first non-empty shards (validation first, then train, test)."""
    from bigearthnet_beam.schemas import tfrecord
    from bigearthnet_beam.transforms import raw_decode
    from bigearthnet_beam.transforms.encode import decode_example, iter_records

    order = [s for s in ("validation", "train", "test") if s in man["splits"]]
    per_split: dict[str, list] = {}
    for split in order:  # up to n from each split's first non-empty shard
        sh = next((sh for sh in man["splits"][split]["shards"] if sh["records"]), None)
        if sh is None:
            continue
        got = per_split.setdefault(split, [])
        for rec in iter_records(
            containment.check_relative(sh["path"], dataset, what="shard"), man["compression"], st=st
        ):
            ex = decode_example(rec, man["image_dtype"])
            got.append(raw_decode.as_normalized(ex, man) if man["image_dtype"] == tfrecord.RAW else ex)
            if len(got) >= n:
                break
    out: list[dict] = []
    while len(out) < n and any(per_split.values()):  # then take them in turn: several splits shown
        for split in order:
            if per_split.get(split) and len(out) < n:
                out.append(per_split[split].pop(0))
    return out


# --------------------------------------------------------------------------- entry points


def write_report(dataset: str, out: str | None = None, st: storage.Storage | None = None) -> str:
    """Write ``report.html`` (and the plots under ``report/``) for a complete dataset, read and
    written under ``st`` (default ``Storage()``); returns the report's URL. ``out``: another
    place for the HTML file."""
    from bigearthnet_beam.beam_pipeline.verify import load_manifest

    st = st if st is not None else storage.Storage()
    man = load_manifest(dataset, st)
    failures = _failures(dataset, man, st)
    run_raw = _read(dataset, RUN_JSON, st)
    run = json.loads(run_raw) if run_raw else None
    npz = _read(dataset, man["files"]["histograms"], st) if man["files"].get("histograms") else None
    plots = {
        "classes": plot_classes(man),
        "failures": plot_failures(man, failures),
        "histograms": plot_histograms(man, npz) if npz else None,
    }
    examples = _samples(dataset, man, st)
    params = sample_params(man) if examples else None
    samples = [(ex, *render_sample(ex, man, params)) for ex in examples]
    page = build_html(dataset, man, failures=failures, plots=plots, samples=samples, run=run)
    target = out or storage.join(dataset, REPORT_HTML)
    plot_dir = storage.join(storage.parent(target), REPORT_DIR)
    for name, svg in plots.items():
        if svg:
            st.write_bytes_atomic(storage.join(plot_dir, f"{name}.svg"), svg)
    for i, (_, rgb, lab) in enumerate(samples):
        st.write_bytes_atomic(storage.join(plot_dir, f"sample-{i}-rgb.png"), rgb)
        st.write_bytes_atomic(storage.join(plot_dir, f"sample-{i}-label.png"), lab)
    st.write_bytes_atomic(target, page.encode("utf-8"))
    return target


def run(argv: list[str] | None = None) -> int:
    """``benbeam report DATASET [--out HTML]``."""
    from bigearthnet_beam.beam_pipeline.options import add_storage_args
    from bigearthnet_beam.transforms.cli_args import storage_from_args

    argv = list(sys.argv[1:] if argv is None else argv)
    ap = flagtypes.Parser(
        prog="benbeam report",
        allow_abbrev=False,
        description="(Re)write a converted dataset's report.html and its plots.",
    )
    ap.add_argument("dataset", help="dataset directory or URL (holding dataset.json)")
    ap.add_argument(
        "--out", type=flagtypes.output, default=None, help="where to write the HTML (default: DATASET/report.html)"
    )
    add_storage_args(ap)
    args = ap.parse_args(argv)
    st = storage_from_args(args)
    try:
        url = write_report(args.dataset, args.out, st)
    except manifest.ManifestError as e:
        print(f"benbeam report: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {url}")
    return 0
