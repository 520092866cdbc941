"""``benbeam predict --benchmark``: map many tiles one after the other, timing each, and write
``benchmark_report.csv`` and ``viewer.html``."""

from __future__ import annotations

import contextlib
import csv
import os

from bigearthnet_beam.trainer.inference.predictor import Predictor
from bigearthnet_beam.trainer.inference.settings import REPORT_CSV, VIEWER, PredictError
from bigearthnet_beam.trainer.inference.stac import write_collection
from bigearthnet_beam.trainer.inference.tile import open_tile_at, predict_tile, stderr_progress
from bigearthnet_beam.trainer.inference.viewer import write_viewer

REPORT_FIELDS = (
    "tile",
    "pixels",
    "seconds",
    "pixels_per_s",
    "peak_memory_mib",
    "device",
    "chunk_size",
    "batch_size",
    "overlap",
    "windows_run",
)


def report_row(s: dict) -> dict:
    """The ``benchmark_report.csv`` row of a tile's summary."""
    return {
        "tile": s["tile"],
        "pixels": s["pixels"],
        "seconds": f"{s['seconds']:.3f}",
        "pixels_per_s": f"{s['pixels_per_s']:.0f}" if s.get("pixels_per_s") else "",
        "peak_memory_mib": f"{s['peak_rss_bytes'] / 2**20:.1f}",
        "device": s["device"],
        "chunk_size": s["chunk_size"],
        "batch_size": s["batch_size"],
        "overlap": s["overlap"],
        "windows_run": s["windows_run"],
    }


def write_report_csv(path: str, summaries: list[dict]) -> None:
    """One ``report_row`` per summary, renamed into place when complete."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        wr = csv.DictWriter(fh, fieldnames=REPORT_FIELDS)
        wr.writeheader()
        for s in summaries:
            wr.writerow(report_row(s))
    os.replace(tmp, path)


def benchmark(
    predictor: Predictor,
    tiles: list[str],
    out: str,
    *,
    s1_for=None,
    progress=stderr_progress,
    resampling: str = "bilinear",
    **kwargs,
) -> list[dict]:
    """Map every tile (local paths or URLs) into the local ``out/<tile name>/`` one after the
    other, timing each; writes ``benchmark_report.csv``, ``viewer.html`` and the STAC
    ``collection.json`` over the tiles' items. A tile that
    cannot be opened is reported and skipped."""
    summaries, failures = [], []
    for i, path in enumerate(tiles):
        if progress:
            progress(f"tile {i + 1}/{len(tiles)}: {path}")
        with contextlib.ExitStack() as stack:
            try:
                src = stack.enter_context(
                    open_tile_at(path, predictor.channels, s1_for(path) if s1_for else None, resampling)
                )
            except PredictError as e:
                failures.append({"tile": os.path.basename(path.rstrip("/")), "path": path, "reason": str(e)})
                if progress:
                    progress(f"benbeam predict: error: {e}")
                continue
            for msg in src.warnings:
                if progress:
                    progress(f"benbeam predict: warning: {src.name}: {msg}")
            s = predict_tile(predictor, src, os.path.join(out, src.name), progress=progress, **kwargs)
        s["dir"] = src.name
        summaries.append(s)
    write_report_csv(os.path.join(out, REPORT_CSV), summaries)
    write_collection(out, summaries)  # collection.json: the STAC collection of the tiles' items
    write_viewer(os.path.join(out, VIEWER), summaries, failures, title="benbeam predict: benchmark")
    return summaries + [dict(f, failed=True) for f in failures]
