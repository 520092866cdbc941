"""One tile: ``predict_tile`` maps an opened tile into a folder (the predictor's blended chunks
through the layers, the GeoTIFF writer and the preview) and returns its summary;
``open_tile_at`` opens a local or remote tile for a model; ``print_summary`` is the
command's report line."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time

import numpy as np

from bigearthnet_beam.trainer.inference import staging
from bigearthnet_beam.trainer.inference.grid import check_chunk_size, chunk_grid, window_starts
from bigearthnet_beam.trainer.inference.layers import (
    LAYER_DOC,
    NODATA_CLASS,
    classmap,
    layers_from_probs,
    palette,
    probs_for_file,
)
from bigearthnet_beam.trainer.inference.memory import device_name, peak_rss_bytes, reset_peak_rss, rss_bytes
from bigearthnet_beam.trainer.inference.plugins import Extra, load_extra
from bigearthnet_beam.trainer.inference.predictor import Predictor
from bigearthnet_beam.trainer.inference.preview import render_preview
from bigearthnet_beam.trainer.inference.settings import DEFAULTS, PREVIEW, PROBS_DTYPES, PredictError
from bigearthnet_beam.trainer.inference.stac import item_bytes, item_name, tile_item
from bigearthnet_beam.trainer.inference.styles import style_files
from bigearthnet_beam.trainer.inference.writer import GDAL_CACHE_MB, LayerWriter
from bigearthnet_beam.transforms.progress import Bar

LOG = logging.getLogger("benbeam.predict")


def fmt_bytes(n: float) -> str:
    """``1.23 GiB`` / ``456 MiB``."""
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def stderr_progress(msg: str) -> None:
    """The default progress callback: one line on stderr (a tile's chunks get one overall progress line instead)."""
    print(msg, file=sys.stderr, flush=True)


def predict_tile(
    predictor: Predictor,
    source,
    out_dir: str,
    *,
    chunk_size: int = DEFAULTS["chunk_size"],
    save_probs: bool = False,
    probs_dtype: str = DEFAULTS["probs_dtype"],
    extras=(),
    preview_size: int = DEFAULTS["preview_size"],
    progress=stderr_progress,
    preview_name: str = PREVIEW,
) -> dict:
    """Map one opened tile (a ``trainer.tiles.TileSource``) into the local ``out_dir``; returns the summary.

    Every output is written under a temporary name and renamed once all are complete;
    ``<tile>_summary.json`` is written last.
    """
    import rasterio

    block = check_chunk_size(chunk_size)
    if probs_dtype not in PROBS_DTYPES:
        raise PredictError(f"--probs_dtype must be uint8 or float32, got {probs_dtype!r}")
    if tuple(source.channels) != predictor.channels:
        raise PredictError(
            f"tile {source.name} provides channels {list(source.channels)}, the model needs {list(predictor.channels)}"
        )
    extras = [e if isinstance(e, Extra) else load_extra(e) for e in extras]
    for e in extras:
        e.names = None
    t0 = time.perf_counter()
    reset_peak_rss()
    rss_start = rss_bytes()
    height, width = int(source.height), int(source.width)
    p = predictor.patch
    rows = window_starts(height, p, predictor.overlap)
    cols = window_starts(width, p, predictor.overlap)
    chunks = chunk_grid(height, width, chunk_size)
    os.makedirs(out_dir, exist_ok=True)
    info = predictor.info
    k = predictor.num_classes
    counts = np.zeros(k + 1, dtype=np.int64)  # last: no data
    runs = skips = 0
    w = LayerWriter(
        out_dir, source.name, crs=source.crs, transform=source.transform, width=width, height=height, block=block
    )
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB):
        try:
            pal = palette(info)
            # a scene classifier (pretrained_predictor.WindowClassifier) gives its layers a multi-label meaning
            layer_fn = getattr(predictor, "layers_from_probs", layers_from_probs)
            layer_doc = {**LAYER_DOC, **getattr(predictor, "layer_doc", {})}
            w.open(
                "class",
                dtype="uint8",
                nodata=NODATA_CLASS,
                categorical=True,
                colormap={i: (*map(int, pal[i]), 255) for i in range(256)},
                tags={"classes": json.dumps(list(info["classes"])), "layer": layer_doc["class"]},
            )
            for name in ("maxprob", "entropy", "gap"):
                w.open(name, dtype="float32", nodata=float("nan"), tags={"layer": layer_doc[name]})
            if save_probs:
                w.open(
                    "probs",
                    dtype=probs_dtype,
                    count=k,
                    nodata=255 if probs_dtype == "uint8" else float("nan"),
                    descriptions=list(info["classes"]),
                    tags={"layer": layer_doc["probs"]},
                )
            # the default: one overall line for the tile's chunks (a bar on a terminal, a line every ~10 s otherwise);
            # another callback (the Beam workers' log) gets a line per chunk
            bar = Bar(source.name, total=len(chunks), unit=" chunks") if progress is stderr_progress else None
            for ch in chunks:
                probs, valid, n_run, n_skip = predictor.predict_chunk(source, ch, rows, cols)
                runs, skips = runs + n_run, skips + n_skip
                layers = layer_fn(probs, valid)
                for name, arr in layers.items():
                    w.write(name, ch, arr)
                counts += np.bincount(np.where(valid, layers["class"], k).ravel(), minlength=k + 1)[: k + 1]
                del layers
                if save_probs:
                    w.write("probs", ch, probs_for_file(probs, valid, probs_dtype))
                for e in extras:
                    for name, arr in e(probs).items():
                        if name not in w.datasets:
                            w.open(name, dtype="float32", nodata=float("nan"), tags={"layer": f"--extra {e.spec}"})
                        arr[~valid] = np.nan
                        w.write(name, ch, arr)
                del probs
                if bar is not None:
                    bar.update(1)
                elif progress:
                    dt = time.perf_counter() - t0
                    eta = dt / (ch.index + 1) * (len(chunks) - ch.index - 1)
                    progress(
                        f"{source.name}: chunk {ch.index + 1}/{len(chunks)} "
                        f"({100.0 * (ch.index + 1) / len(chunks):.0f}%), {dt:.1f} s, ~{eta:.0f} s left"
                    )
            if bar is not None:
                bar.close(complete=True)
            w.close()
            extra_names = [n for e in extras for n in (e.names or ())]
            cm = classmap(info, probs_dtype=probs_dtype if save_probs else None, extras=extra_names)
            if hasattr(predictor, "layer_doc"):
                cm["layers"].update({k: v for k, v in predictor.layer_doc.items() if k in cm["layers"]})
                if "probs" in cm["layers"]:
                    cm["layers"]["probs"] = predictor.layer_doc["probs"] + f"; this run: {probs_dtype}"
                cm["entropy_log"] = predictor.entropy_note
            w.write_file(
                f"{source.name}_classmap.json",
                (json.dumps(cm, indent=2, sort_keys=False, allow_nan=False) + "\n").encode(),
            )
            for fname, data in style_files(source.name, info).items():  # GDAL categories, QGIS styles
                w.write_sidecar(fname, data)
            render_preview(
                w.tmp[f"{source.name}_class.tif"],
                info,
                counts,
                w.tmp_path(preview_name),
                max_size=preview_size,
                title=source.name,
            )
            seconds = time.perf_counter() - t0
            outputs = w.commit()
        except BaseException:
            w.abort()
            raise
    pixels = height * width
    summary = {
        "tile": source.name,
        "path": str(getattr(source, "path", "")),
        "width": width,
        "height": height,
        "pixels": pixels,
        "valid_pixels": int(counts[:k].sum()),
        "crs": str(source.crs),
        "transform": list(source.transform)[:6],
        "class_pixels": {info["classes"][i]: int(counts[i]) for i in range(k) if counts[i]},
        "seconds": seconds,
        "pixels_per_s": pixels / seconds if seconds > 0 else None,
        "peak_rss_bytes": peak_rss_bytes(),
        "rss_start_bytes": rss_start,
        "device": predictor.device_name() if hasattr(predictor, "device_name") else device_name(),
        "model": getattr(predictor, "path", None),
        "channels": list(predictor.channels),
        "chunk_size": chunk_size,
        "chunks": len(chunks),
        "overlap": predictor.overlap,
        "batch_size": predictor.batch_size,
        "windows_run": runs,
        "windows_skipped": skips,
        "warnings": list(getattr(source, "warnings", []) or []),
        "outputs": sorted(outputs + [f"{source.name}_summary.json", item_name(source.name)]),
    }
    tmp = os.path.join(out_dir, f".tmp-{os.getpid()}-{source.name}_summary.json")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(summary, fh, indent=2, allow_nan=False)
        fh.write("\n")
    os.replace(tmp, os.path.join(out_dir, f"{source.name}_summary.json"))
    item = tile_item(summary, info, summary["outputs"], probs_dtype=probs_dtype if save_probs else None)
    tmp = os.path.join(out_dir, f".tmp-{os.getpid()}-{item_name(source.name)}")
    with open(tmp, "wb") as fh:
        fh.write(item_bytes(item))
    os.replace(tmp, os.path.join(out_dir, item_name(source.name)))  # the STAC item, last
    return summary


def model_resampling(model: str) -> str:
    """The resampling the model's training data was converted with, from the model's JSON
    sidecar (no TensorFlow needed); ``bilinear`` (convert's default) when not recorded."""
    from bigearthnet_beam.trainer.model import sidecar_path
    from bigearthnet_beam.transforms import storage

    try:
        info = json.loads(storage.read_bytes(sidecar_path(model)))
    except (FileNotFoundError, ValueError):
        return "bilinear"
    return info.get("resampling") or "bilinear"


def open_source(path: str, channels, s1: str | None = None, resampling: str = "bilinear"):
    """``trainer.tiles.open_tile`` of a local tile with its errors turned into ``PredictError``.
    ``resampling`` of the 20 m / 60 m bands: that of the training data's ``benbeam convert --resampling``."""
    from bigearthnet_beam.trainer.tiles import open_tile

    if not os.path.exists(path):
        raise PredictError(f"tile {path} does not exist")
    if s1 is not None and not os.path.exists(s1):
        raise PredictError(f"--s1 {s1} does not exist")
    try:
        return open_tile(path, channels, s1=s1, resampling=resampling)
    except (ValueError, FileNotFoundError) as e:
        raise PredictError(str(e)) from None


@contextlib.contextmanager
def open_tile_at(path: str, channels, s1: str | None = None, resampling: str = "bilinear"):
    """Yield the opened tile at a local path or an ``s3://`` / ``gs://`` URL (fetched into a
    temporary folder, only the files ``channels`` need); closed and cleaned up on exit.
    Messages name the URL, not the local copy."""
    with staging.local_tile(path, channels, s1) as st:
        try:
            src = open_source(st.path, channels, st.s1, resampling)
        except PredictError as e:
            raise PredictError(st.restore(str(e))) from None
        src.warnings = [st.restore(w) for w in src.warnings or []]
        with src:
            yield src


def predict_path(
    predictor: Predictor, path: str, out_dir: str, *, s1: str | None = None, resampling: str = "bilinear", **kwargs
) -> dict:
    """Open ``path`` (local or a URL) for the model's channels and map it into the local
    ``out_dir`` (see ``predict_tile``)."""
    with open_tile_at(path, predictor.channels, s1, resampling) as src:
        for msg in src.warnings:
            LOG.warning("%s: %s", src.name, msg)
            if kwargs.get("progress", stderr_progress) is stderr_progress:
                print(f"benbeam predict: warning: {src.name}: {msg}", file=sys.stderr)
        return predict_tile(predictor, src, out_dir, **kwargs)


def print_summary(s: dict, out_dir: str, stream=None) -> None:
    """Two lines about a mapped tile: size, speed, memory, device; where its files went."""
    stream = stream or sys.stdout
    pps = s["pixels_per_s"] or 0
    print(
        f"{s['tile']}: {s['width']}×{s['height']} px ({s['valid_pixels']:,} with data) in {s['seconds']:.1f} s "
        f"= {pps:,.0f} px/s; peak memory {fmt_bytes(s['peak_rss_bytes'])} (RSS); device {s['device']}; "
        f"{s['chunks']} chunks, {s['windows_run']} windows",
        file=stream,
    )
    print(f"wrote {len(s['outputs'])} files to {out_dir}", file=stream)
