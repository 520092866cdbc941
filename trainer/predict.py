"""``benbeam predict``: map whole Sentinel-2 tiles with a trained U-Net.

A tile (an L2A ``.SAFE`` folder or a multi-band GeoTIFF, read through ``trainer.tiles``) is
processed chunk by chunk; every chunk runs the model on every window of one *global*
sliding-window grid that touches it and blends the windows' softmax with a smooth weight,
so the result does not depend on the chunk size (chunked = unchunked up to float
summation order) and no seam appears at window or chunk borders. Peak memory is bounded
by the chunk size, never by the tile size. Per tile it writes, keeping the tile's CRS and
transform, tiled and compressed GeoTIFFs:

    <tile>_class.tif      uint8 class id (0..18), 255 = no data
    <tile>_maxprob.tif    float32 max_k p_k                     (NaN = no data)
    <tile>_entropy.tif    float32 −Σ p_k ln p_k, natural log     (NaN = no data)
    <tile>_gap.tif        float32 top-1 minus top-2 probability  (NaN = no data)
    <tile>_probs.tif      19 bands, with --save_probs (uint8 round(254·p), 255 = no data; or float32)
    <tile>_<name>.tif     float32 layers of --extra functions    (NaN = no data)
    <tile>_classmap.json  id → name and RGB colour, nodata 255, what each layer means
    <tile>_summary.json   what went in and came out: pixels, classes, time, peak memory, device
    preview.png           colour-coded class map (≤ --preview_size px) with a legend

The maths (window grid, blending weights, layers) is plain numpy; ``Predictor`` holds the
model and its inference contract; ``predict_tile`` does one tile; ``run(argv)`` is the
command line. Many tiles: ``trainer.predict_beam`` (a Beam pipeline) or ``--benchmark``.
"""

from __future__ import annotations

import argparse
import csv
import importlib
import importlib.util
import json
import logging
import math
import os
import re
import sys
import time
from dataclasses import dataclass, field

import numpy as np

LOG = logging.getLogger("benbeam.predict")

DEFAULTS = {"chunk_size": 1024, "overlap": 32, "batch_size": 16, "probs_dtype": "uint8", "preview_size": 1024}
BLEND_FLOOR = 0.02  # weight of a window's edge pixels relative to its centre (edges still count)
GDAL_CACHE_MB = 64  # GDAL's block cache: bounded, so dirty output blocks never grow with the tile
NODATA_CLASS = 255
PROBS_SCALE = 254  # uint8 probabilities: round(254·p); 255 is nodata
BUILTIN_LAYERS = ("class", "maxprob", "entropy", "gap", "probs")
_LAYER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
PREVIEW = "preview.png"
NODATA_COLOR = (235, 235, 235)

LAYER_DOC = {
    "class": "uint8 class id (argmax of the blended probabilities); 255 = no data",
    "maxprob": "float32 max_k p_k; NaN = no data",
    "entropy": "float32 -sum_k p_k ln p_k in nats (natural log), 0 .. ln(19) = 2.944; divide by ln(19) for 0..1; "
               "NaN = no data",
    "gap": "float32 top-1 minus top-2 probability (0 = a tie, 1 = certain); NaN = no data",
    "probs": "19 bands in class order: the blended per-pixel softmax; uint8 round(254*p) with 255 = no data "
             "(divide by 254), or float32 with NaN = no data (--probs_dtype)",
}


class PredictError(ValueError):
    """A user error: bad flags, a model or tile that cannot be used, an unwritable output."""


# --------------------------------------------------------------------------- window grid and blending (numpy)


def window_starts(size: int, patch: int, overlap: int) -> np.ndarray:
    """Start offsets of the sliding windows along one axis of ``size`` pixels.

    Stride ``patch − overlap`` from 0; the last window is aligned to the edge (it may
    overlap its neighbour more). Fixed by the tile size alone, so every chunk sees the
    same global grid.
    """
    if size < patch:
        raise PredictError(f"the tile is {size} px along one axis; the model needs at least {patch} px")
    stride = patch - overlap
    if stride < 1:
        raise PredictError(f"--overlap must be smaller than the model's {patch}-px input, got {overlap}")
    n = math.ceil((size - patch) / stride) + 1
    return np.unique(np.minimum(np.arange(n, dtype=np.int64) * stride, size - patch))


def blend_weights(patch: int, floor: float = BLEND_FLOOR) -> np.ndarray:
    """float32[patch, patch]: a separable Hann window raised to ``floor`` at the edges.

    Overlapping windows are averaged with these weights, so each pixel is dominated by the
    windows that see it near their centre (U-Net predictions are weakest at a window's
    border) and predictions change smoothly from one window to the next.
    """
    i = np.arange(patch, dtype=np.float64)
    w1 = floor + (1.0 - floor) * np.sin(np.pi * (i + 0.5) / patch) ** 2
    return np.outer(w1, w1).astype(np.float32)


@dataclass(frozen=True)
class Chunk:
    index: int
    row_off: int
    col_off: int
    height: int
    width: int

    @property
    def rows(self) -> tuple[int, int]:
        return self.row_off, self.row_off + self.height

    @property
    def cols(self) -> tuple[int, int]:
        return self.col_off, self.col_off + self.width


def chunk_grid(height: int, width: int, chunk_size: int) -> list[Chunk]:
    """Row-major chunks of ``chunk_size`` px (smaller at the right and bottom edges)."""
    out = []
    for r in range(0, height, chunk_size):
        for c in range(0, width, chunk_size):
            out.append(Chunk(len(out), r, c, min(chunk_size, height - r), min(chunk_size, width - c)))
    return out


def touching(starts: np.ndarray, lo: int, hi: int, patch: int) -> np.ndarray:
    """The window starts whose [s, s + patch) intersects [lo, hi)."""
    return starts[(starts < hi) & (starts + patch > lo)]


def check_chunk_size(chunk_size: int) -> int:
    """Chunks are whole multiples of the output block size (128 px): every chunk write then
    fills whole GeoTIFF blocks (a block is never compressed twice). Returns the block size."""
    if chunk_size < 128 or chunk_size % 128:
        raise PredictError(f"--chunk_size must be a positive multiple of 128 px, got {chunk_size}")
    return 512 if chunk_size % 512 == 0 else 256 if chunk_size % 256 == 0 else 128


# --------------------------------------------------------------------------- layers from the probability cube (numpy)


def entropy(probs: np.ndarray) -> np.ndarray:
    """−Σ_k p_k ln p_k over the last axis (natural log; 0·ln 0 = 0), float32."""
    p = np.asarray(probs, dtype=np.float32)
    t = np.log(np.maximum(p, np.float32(1e-30)))
    t *= p
    return -t.sum(axis=-1, dtype=np.float32)


def layers_from_probs(probs: np.ndarray, valid: np.ndarray) -> dict[str, np.ndarray]:
    """The per-pixel layers of an (h, w, K) probability cube: ``class`` (uint8, 255 where
    not ``valid``), ``maxprob``, ``entropy``, ``gap`` (float32, NaN where not ``valid``)."""
    k = probs.shape[-1]
    cls = np.argmax(probs, axis=-1).astype(np.uint8)
    top = np.partition(probs, k - 2, axis=-1)[..., k - 2:]  # [..., 0] second largest, [..., 1] largest
    maxprob = np.ascontiguousarray(top[..., 1])
    gap = maxprob - top[..., 0]
    ent = entropy(probs)
    invalid = ~valid
    cls[invalid] = NODATA_CLASS
    for a in (maxprob, gap, ent):
        a[invalid] = np.nan
    return {"class": cls, "maxprob": maxprob, "entropy": ent, "gap": gap}


def probs_for_file(probs: np.ndarray, valid: np.ndarray, dtype: str) -> np.ndarray:
    """The probability cube as written by --save_probs (see ``LAYER_DOC['probs']``)."""
    if dtype == "uint8":
        q = np.rint(np.clip(probs, 0.0, 1.0) * PROBS_SCALE).astype(np.uint8)
        q[~valid] = 255
        return q
    q = probs.astype(np.float32, copy=True)
    q[~valid] = np.nan
    return q


# --------------------------------------------------------------------------- --extra functions


@dataclass
class Extra:
    """A user layer function ``f(probs float32[h, w, K]) -> 2-D array | {name: 2-D array}``."""

    spec: str
    fn: object = field(repr=False)
    names: tuple[str, ...] | None = None  # fixed by the first chunk

    def __call__(self, probs: np.ndarray) -> dict[str, np.ndarray]:
        h, w = probs.shape[:2]
        try:
            res = self.fn(probs)
        except Exception as e:  # noqa: BLE001 - reported with the spec that failed
            raise RuntimeError(f"--extra {self.spec} raised {type(e).__name__}: {e}") from e
        if isinstance(res, dict):
            out = dict(res)
        else:
            out = {getattr(self.fn, "__name__", "").strip("_<>") or "extra": res}
        layers = {}
        for name, arr in out.items():
            if not isinstance(name, str) or not _LAYER_NAME.match(name) or name in BUILTIN_LAYERS:
                raise PredictError(f"--extra {self.spec} returned a layer named {name!r}: names must be letters, "
                                   f"digits, '_' or '-' and none of {', '.join(BUILTIN_LAYERS)}")
            a = np.asarray(arr)
            if a.shape != (h, w) or not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
                raise PredictError(f"--extra {self.spec} returned {name!r} with shape {a.shape} and dtype {a.dtype}; "
                                   f"it must return a numeric 2-D array of the input's (h, w) = {(h, w)}")
            layers[name] = a.astype(np.float32)
        if self.names is None:
            self.names = tuple(layers)
        elif tuple(layers) != self.names:
            raise PredictError(f"--extra {self.spec} returned layers {sorted(layers)} on one chunk and "
                               f"{sorted(self.names)} on another; it must return the same names every time")
        return layers


def load_extra(spec: str) -> Extra:
    """``module:function`` (an importable module) or ``path/to/file.py:function``."""
    mod_name, sep, fn_name = str(spec).rpartition(":")
    if not sep or not mod_name or not fn_name:
        raise PredictError(f"--extra {spec!r} must be module:function (e.g. mylayers:water_mask) or "
                           "path/to/file.py:function")
    try:
        if mod_name.endswith(".py"):
            if not os.path.isfile(mod_name):
                raise PredictError(f"--extra {spec}: file {mod_name} does not exist")
            key = "benbeam_extra_" + re.sub(r"\W", "_", os.path.abspath(mod_name))
            module = sys.modules.get(key)
            if module is None:
                s = importlib.util.spec_from_file_location(key, mod_name)
                module = importlib.util.module_from_spec(s)
                s.loader.exec_module(module)
                sys.modules[key] = module
        else:
            if os.getcwd() not in sys.path and "" not in sys.path:
                sys.path.append(os.getcwd())
            module = importlib.import_module(mod_name)
    except PredictError:
        raise
    except Exception as e:  # noqa: BLE001 - any import failure is the user's to fix
        raise PredictError(f"--extra {spec}: cannot import {mod_name}: {type(e).__name__}: {e}") from None
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise PredictError(f"--extra {spec}: {mod_name} has no function {fn_name!r}")
    return Extra(spec, fn)


# --------------------------------------------------------------------------- memory and device


def reset_peak_rss() -> None:
    """Reset the kernel's peak resident set size of this process (Linux ≥ 4.0; else a no-op)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def _status_bytes(field: str) -> int | None:
    """A ``kB`` field of /proc/self/status in bytes (None where /proc is missing)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def rss_bytes() -> int:
    """Current resident set size of this process (VmRSS; 0 where /proc is missing)."""
    return _status_bytes("VmRSS") or 0


def peak_rss_bytes() -> int:
    """Peak resident set size of this process since the last ``reset_peak_rss`` (VmHWM)."""
    hwm = _status_bytes("VmHWM")
    if hwm is not None:
        return hwm
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def device_name() -> str:
    """TensorFlow's first visible GPU (its name, ``×N`` for several) or ``CPU``."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return "CPU"
    try:
        name = tf.config.experimental.get_device_details(gpus[0]).get("device_name") or gpus[0].name
    except Exception:  # noqa: BLE001 - a name is only for the report
        name = gpus[0].name
    return name + (f" ×{len(gpus)}" if len(gpus) > 1 else "")


# --------------------------------------------------------------------------- the model


class Predictor:
    """A loaded model with its inference contract: preprocessing exactly as the ETL did
    (the training dataset's statistics, the model's channel order) and chunk prediction."""

    def __init__(self, model, info: dict, *, batch_size: int = DEFAULTS["batch_size"],
                 overlap: int = DEFAULTS["overlap"]):
        import tensorflow as tf

        from transforms.normalize import NormParams

        for k in ("channels", "statistics", "classes", "input_shape"):
            if k not in info:
                raise PredictError(f"the model's info has no {k!r}: it was not saved by `benbeam train`")
        if batch_size < 1:
            raise PredictError(f"--batch_size must be at least 1, got {batch_size}")
        self.model, self.info = model, info
        self.channels = tuple(info["channels"])
        self.patch = int(info["input_shape"][0])
        self.num_classes = len(info["classes"])
        if self.num_classes > 255:
            raise PredictError("more than 255 classes do not fit a uint8 class map")
        self.batch_size, self.overlap = int(batch_size), int(overlap)
        if not 0 <= self.overlap < self.patch:
            raise PredictError(f"--overlap must be in 0..{self.patch - 1} px, got {overlap}")
        stats = info["statistics"]
        try:
            self.norm = NormParams.from_stats(stats["bands"], clip=bool(stats["clip"]), channels=self.channels)
        except (KeyError, TypeError, ValueError) as e:
            raise PredictError(f"the model's statistics cannot normalise its channels: {e}") from None
        # The ETL stored float16 images: the model saw values rounded to float16.
        self.float16_inputs = info.get("image_dtype") == "float16"
        self.weights = blend_weights(self.patch)
        spec = tf.TensorSpec([None, self.patch, self.patch, len(self.channels)], tf.float32)

        def _seg(x):
            y = model(x, training=False)
            return y["seg"] if isinstance(y, dict) else y

        self._fn = tf.function(_seg, input_signature=[spec])

    @classmethod
    def load(cls, path: str, **kwargs) -> "Predictor":
        from trainer.model import load_model

        try:
            model, info = load_model(path)
        except FileNotFoundError as e:
            raise PredictError(str(e)) from None
        except ValueError as e:
            raise PredictError(f"cannot use model {path}: {e}") from None
        p = cls(model, info, **kwargs)
        p.path = str(path)
        return p

    def preprocess(self, pixels: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """Raw (h, w, C) pixels → the model's input: the ETL's normalisation; 0 (the dataset
        mean) at pixels without data, which get no class anyway."""
        from transforms.normalize import normalize

        x = normalize(np.asarray(pixels, dtype=np.float32), self.norm, inplace=pixels.dtype == np.float32)
        if self.float16_inputs:
            x = x.astype(np.float16).astype(np.float32)
        x[~valid] = 0.0
        np.nan_to_num(x, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
        return x

    def run_batch(self, batch: np.ndarray) -> np.ndarray:
        return self._fn(batch).numpy()

    def predict_chunk(self, source, chunk: Chunk, rows: np.ndarray, cols: np.ndarray) -> tuple:
        """Blended probabilities of one chunk: ``(probs float32[h, w, K], valid bool[h, w],
        windows run, windows skipped)``.

        Runs every global window that touches the chunk (reading chunk + margin once), skips
        windows without a valid pixel inside the chunk, and adds the windows in global
        row-major order, so a pixel's sum is the same whatever the chunking.
        """
        from rasterio.windows import Window

        p = self.patch
        r0, r1 = chunk.rows
        c0, c1 = chunk.cols
        ys, xs = touching(rows, r0, r1, p), touching(cols, c0, c1, p)
        ry0, rx0 = int(ys[0]), int(xs[0])
        ry1, rx1 = int(ys[-1]) + p, int(xs[-1]) + p
        pixels, valid = source.read(Window(rx0, ry0, rx1 - rx0, ry1 - ry0))
        valid = np.asarray(valid, dtype=bool)
        if pixels.shape[:2] != (ry1 - ry0, rx1 - rx0) or valid.shape != pixels.shape[:2]:
            raise RuntimeError(f"tile {source.name}: a read of {(ry1 - ry0, rx1 - rx0)} px returned "
                               f"{pixels.shape[:2]} pixels and a {valid.shape} mask")
        cvalid = valid[r0 - ry0:r1 - ry0, c0 - rx0:c1 - rx0]
        h, w = chunk.height, chunk.width
        acc = np.zeros((h, w, self.num_classes), dtype=np.float32)
        wsum = np.zeros((h, w), dtype=np.float32)
        todo = []
        for y in ys:
            for x in xs:
                iy0, iy1, ix0, ix1 = max(y, r0), min(y + p, r1), max(x, c0), min(x + p, c1)
                if cvalid[iy0 - r0:iy1 - r0, ix0 - c0:ix1 - c0].any():
                    todo.append((int(y), int(x), int(iy0), int(iy1), int(ix0), int(ix1)))
        skipped = len(ys) * len(xs) - len(todo)
        if todo:
            x_in = self.preprocess(pixels, valid)
            del pixels
            for b in range(0, len(todo), self.batch_size):
                part = todo[b:b + self.batch_size]
                batch = np.stack([x_in[y - ry0:y - ry0 + p, x - rx0:x - rx0 + p] for y, x, *_ in part])
                out = self.run_batch(batch)
                for (y, x, iy0, iy1, ix0, ix1), o in zip(part, out):
                    wt = self.weights[iy0 - y:iy1 - y, ix0 - x:ix1 - x]
                    acc[iy0 - r0:iy1 - r0, ix0 - c0:ix1 - c0] += o[iy0 - y:iy1 - y, ix0 - x:ix1 - x] * wt[..., None]
                    wsum[iy0 - r0:iy1 - r0, ix0 - c0:ix1 - c0] += wt
            np.divide(acc, wsum[..., None], out=acc, where=wsum[..., None] > 0)
        return acc, np.ascontiguousarray(cvalid), len(todo), skipped


# --------------------------------------------------------------------------- writing


class LayerWriter:
    """Open GeoTIFFs of one tile, written chunk by chunk under temporary names; ``commit``
    renames them all (an interrupted run leaves no finished-looking output)."""

    def __init__(self, out_dir: str, stem: str, *, crs, transform, width: int, height: int, block: int):
        self.out_dir, self.stem = out_dir, stem
        self.base = dict(driver="GTiff", width=width, height=height, crs=crs, transform=transform, tiled=True,
                         blockxsize=block, blockysize=block, compress="deflate", BIGTIFF="IF_SAFER")
        self.datasets: dict = {}
        self.tmp: dict[str, str] = {}  # file name -> temporary path

    def path(self, fname: str) -> str:
        return os.path.join(self.out_dir, fname)

    def tmp_path(self, fname: str) -> str:
        p = os.path.join(self.out_dir, f".tmp-{os.getpid()}-{fname}")
        self.tmp[fname] = p
        return p

    def open(self, layer: str, *, dtype: str, nodata, count: int = 1, descriptions=None, colormap=None,
             tags=None) -> None:
        import rasterio

        fname = f"{self.stem}_{layer}.tif"
        prof = dict(self.base, dtype=dtype, count=count, nodata=nodata,
                    predictor=3 if dtype == "float32" else 2, interleave="pixel" if count > 1 else "band")
        ds = rasterio.open(self.tmp_path(fname), "w", **prof)
        if descriptions:
            for i, d in enumerate(descriptions, 1):
                ds.set_band_description(i, d)
        if colormap:
            ds.write_colormap(1, colormap)
        if tags:
            ds.update_tags(**tags)
        self.datasets[layer] = ds

    def write(self, layer: str, chunk: Chunk, arr: np.ndarray) -> None:
        from rasterio.windows import Window

        win = Window(chunk.col_off, chunk.row_off, chunk.width, chunk.height)
        ds = self.datasets[layer]
        if arr.ndim == 2:
            ds.write(arr, 1, window=win)
        else:
            ds.write(np.moveaxis(arr, -1, 0), window=win)

    def close(self) -> None:
        for ds in self.datasets.values():
            if not ds.closed:
                ds.close()

    def write_file(self, fname: str, data: bytes) -> None:
        with open(self.tmp_path(fname), "wb") as fh:
            fh.write(data)

    def commit(self) -> list[str]:
        self.close()
        done = []
        for fname, tmp in self.tmp.items():
            os.replace(tmp, self.path(fname))
            done.append(fname)
        self.tmp = {}
        return done

    def abort(self) -> None:
        self.close()
        for tmp in self.tmp.values():
            try:
                os.remove(tmp)
            except OSError:
                pass
        self.tmp = {}


def classmap(info: dict, *, probs_dtype: str | None = None, extras=()) -> dict:
    """The ``*_classmap.json`` content: id → name and RGB colour, nodata, and the layers."""
    colors = info.get("class_colors") or [[128, 128, 128]] * len(info["classes"])
    classes = {str(i): {"name": n, "color": [int(v) for v in colors[i][:3]]} for i, n in enumerate(info["classes"])}
    classes[str(NODATA_CLASS)] = {"name": "no data", "color": list(NODATA_COLOR)}
    layers = {k: v for k, v in LAYER_DOC.items() if k != "probs"}
    if probs_dtype:
        layers["probs"] = LAYER_DOC["probs"] + f"; this run: {probs_dtype}"
    for name in extras:
        layers[name] = "float32 user layer (--extra); NaN = no data"
    return {"classes": classes, "nodata": NODATA_CLASS, "layers": layers,
            "entropy_log": "natural (nats); normalised entropy = entropy / ln(19)"}


def palette(info: dict) -> np.ndarray:
    """uint8[256, 3]: colour of each class id (no data and unused ids: ``NODATA_COLOR``)."""
    pal = np.tile(np.asarray(NODATA_COLOR, dtype=np.uint8), (256, 1))
    for i, c in enumerate(info.get("class_colors") or []):
        pal[i] = [int(v) for v in c[:3]]
    return pal


def render_preview(class_tif: str, info: dict, counts: np.ndarray, path: str, *, max_size: int,
                   title: str = "") -> tuple[int, int]:
    """A colour-coded class map read back from ``class_tif`` at ≤ ``max_size`` px (nearest,
    a decimated read: memory stays small) with a legend of the classes present."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import rasterio
    from matplotlib.patches import Patch
    from rasterio.enums import Resampling

    with rasterio.open(class_tif) as ds:
        f = max(1, math.ceil(max(ds.height, ds.width) / max_size))
        shape = (math.ceil(ds.height / f), math.ceil(ds.width / f))
        small = ds.read(1, out_shape=shape, resampling=Resampling.nearest)
    pal = palette(info)
    rgb = pal[small]
    total = int(counts.sum())
    handles = []
    for i in np.flatnonzero(counts[: len(info["classes"])]):
        name = info["classes"][i]
        name = name if len(name) <= 40 else name[:39] + "…"
        handles.append(Patch(facecolor=pal[i] / 255.0, edgecolor="0.3",
                             label=f"{i:2d} {name} ({100.0 * counts[i] / total:.1f}%)"))
    if counts[-1]:
        handles.append(Patch(facecolor=np.asarray(NODATA_COLOR) / 255.0, edgecolor="0.3",
                             label=f"no data ({100.0 * counts[-1] / total:.1f}%)"))
    legend_w, line_h = 330, 17
    h_px, w_px = shape
    fig_h = max(h_px, 40 + line_h * (len(handles) + 2))
    fig = plt.figure(figsize=((w_px + legend_w) / 100.0, fig_h / 100.0), dpi=100)
    ax = fig.add_axes([0.0, 1.0 - h_px / fig_h, w_px / (w_px + legend_w), h_px / fig_h])
    ax.imshow(rgb, interpolation="nearest")
    ax.set_axis_off()
    fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(w_px / (w_px + legend_w) + 0.01, 0.99),
               fontsize=7, frameon=False, title=title or None, title_fontsize=8, alignment="left")
    tmp = f"{path}.tmp-{os.getpid()}.png"
    fig.savefig(tmp, dpi=100, metadata={"Software": None})
    plt.close(fig)
    os.replace(tmp, path)
    return shape


# --------------------------------------------------------------------------- one tile


def _fmt_bytes(n: float) -> str:
    return f"{n / 2 ** 30:.2f} GiB" if n >= 2 ** 30 else f"{n / 2 ** 20:.0f} MiB"


def _stderr_progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def predict_tile(predictor: Predictor, source, out_dir: str, *, chunk_size: int = DEFAULTS["chunk_size"],
                 save_probs: bool = False, probs_dtype: str = DEFAULTS["probs_dtype"], extras=(),
                 preview_size: int = DEFAULTS["preview_size"], progress=_stderr_progress,
                 preview_name: str = PREVIEW) -> dict:
    """Map one opened tile (a ``trainer.tiles.TileSource``) into ``out_dir``; returns the summary.

    Every output is written under a temporary name and renamed once all are complete;
    ``<tile>_summary.json`` is written last.
    """
    import rasterio

    block = check_chunk_size(chunk_size)
    if probs_dtype not in ("uint8", "float32"):
        raise PredictError(f"--probs_dtype must be uint8 or float32, got {probs_dtype!r}")
    if tuple(source.channels) != predictor.channels:
        raise PredictError(f"tile {source.name} provides channels {list(source.channels)}, the model needs "
                           f"{list(predictor.channels)}")
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
    w = LayerWriter(out_dir, source.name, crs=source.crs, transform=source.transform, width=width,
                    height=height, block=block)
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB):
        try:
            pal = palette(info)
            w.open("class", dtype="uint8", nodata=NODATA_CLASS,
                   colormap={i: (*map(int, pal[i]), 255) for i in range(256)},
                   tags={"classes": json.dumps(list(info["classes"])), "layer": LAYER_DOC["class"]})
            for name in ("maxprob", "entropy", "gap"):
                w.open(name, dtype="float32", nodata=float("nan"), tags={"layer": LAYER_DOC[name]})
            if save_probs:
                w.open("probs", dtype=probs_dtype, count=k, nodata=255 if probs_dtype == "uint8" else float("nan"),
                       descriptions=list(info["classes"]), tags={"layer": LAYER_DOC["probs"]})
            for ch in chunks:
                probs, valid, n_run, n_skip = predictor.predict_chunk(source, ch, rows, cols)
                runs, skips = runs + n_run, skips + n_skip
                layers = layers_from_probs(probs, valid)
                for name, arr in layers.items():
                    w.write(name, ch, arr)
                counts += np.bincount(np.where(valid, layers["class"], k).ravel(), minlength=k + 1)[: k + 1]
                del layers
                if save_probs:
                    w.write("probs", ch, probs_for_file(probs, valid, probs_dtype))
                for e in extras:
                    for name, arr in e(probs).items():
                        if name not in w.datasets:
                            w.open(name, dtype="float32", nodata=float("nan"),
                                   tags={"layer": f"--extra {e.spec}"})
                        arr[~valid] = np.nan
                        w.write(name, ch, arr)
                del probs
                if progress:
                    dt = time.perf_counter() - t0
                    eta = dt / (ch.index + 1) * (len(chunks) - ch.index - 1)
                    progress(f"{source.name}: chunk {ch.index + 1}/{len(chunks)} "
                             f"({100.0 * (ch.index + 1) / len(chunks):.0f}%), {dt:.1f} s, ~{eta:.0f} s left")
            w.close()
            extra_names = [n for e in extras for n in (e.names or ())]
            cm = classmap(info, probs_dtype=probs_dtype if save_probs else None, extras=extra_names)
            w.write_file(f"{source.name}_classmap.json",
                         (json.dumps(cm, indent=2, sort_keys=False, allow_nan=False) + "\n").encode())
            render_preview(w.tmp[f"{source.name}_class.tif"], info, counts, w.tmp_path(preview_name),
                           max_size=preview_size, title=source.name)
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
        "device": device_name(),
        "model": getattr(predictor, "path", None),
        "channels": list(predictor.channels),
        "chunk_size": chunk_size,
        "chunks": len(chunks),
        "overlap": predictor.overlap,
        "batch_size": predictor.batch_size,
        "windows_run": runs,
        "windows_skipped": skips,
        "warnings": list(getattr(source, "warnings", []) or []),
        "outputs": sorted(outputs + [f"{source.name}_summary.json"]),
    }
    tmp = os.path.join(out_dir, f".tmp-{os.getpid()}-{source.name}_summary.json")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(summary, fh, indent=2, allow_nan=False)
        fh.write("\n")
    os.replace(tmp, os.path.join(out_dir, f"{source.name}_summary.json"))
    return summary


def model_resampling(model: str) -> str:
    """The resampling the model's training data was converted with, from the model's JSON
    sidecar (no TensorFlow needed); ``bilinear`` (convert's default) when not recorded."""
    import json

    from transforms import storage
    from trainer.model import sidecar_path

    try:
        info = json.loads(storage.read_bytes(sidecar_path(model)))
    except (FileNotFoundError, ValueError):
        return "bilinear"
    return info.get("resampling") or "bilinear"


def open_source(path: str, channels, s1: str | None = None, resampling: str = "bilinear"):
    """``trainer.tiles.open_tile`` with its errors turned into ``PredictError``. ``resampling``
    of the 20 m / 60 m bands: that of the training data's ``benbeam convert --resampling``."""
    from trainer.tiles import open_tile

    if not os.path.exists(path):
        raise PredictError(f"tile {path} does not exist")
    if s1 is not None and not os.path.exists(s1):
        raise PredictError(f"--s1 {s1} does not exist")
    try:
        return open_tile(path, channels, s1=s1, resampling=resampling)
    except (ValueError, FileNotFoundError) as e:
        raise PredictError(str(e)) from None


def predict_path(predictor: Predictor, path: str, out_dir: str, *, s1: str | None = None,
                 resampling: str = "bilinear", **kwargs) -> dict:
    """Open ``path`` for the model's channels and map it (see ``predict_tile``)."""
    src = open_source(path, predictor.channels, s1, resampling)
    with src:
        for msg in getattr(src, "warnings", []) or []:
            LOG.warning("%s: %s", src.name, msg)
            if kwargs.get("progress", _stderr_progress) is _stderr_progress:
                print(f"benbeam predict: warning: {src.name}: {msg}", file=sys.stderr)
        return predict_tile(predictor, src, out_dir, **kwargs)


# --------------------------------------------------------------------------- several tiles: benchmark

_SAFE_NAME = re.compile(r"S2[A-D]_MSI(?:L2A|L1C)_(\d{8}T\d{6})_N\d{4}_R\d{3}_(T\d{2}[A-Z]{3})_")


def s1_sidecar(path: str) -> str | None:
    """The S1 raster beside a tile, ``<dir>/T<tile>_<date>_s1.tif`` (the synth-tile layout),
    for a ``.SAFE`` folder (name parsed from the product name) or ``<stem>_s1.tif``."""
    d, base = os.path.split(path.rstrip("/"))
    cands = []
    m = _SAFE_NAME.match(base)
    if m:
        cands.append(f"{m.group(2)}_{m.group(1)}_s1.tif")
    cands.append(f"{os.path.splitext(base)[0]}_s1.tif")
    for c in cands:
        if os.path.isfile(os.path.join(d, c)):
            return os.path.join(d, c)
    return None


REPORT_CSV = "benchmark_report.csv"
VIEWER = "viewer.html"
REPORT_FIELDS = ("tile", "pixels", "seconds", "pixels_per_s", "peak_memory_mib", "device", "chunk_size",
                 "batch_size", "overlap", "windows_run")


def report_row(s: dict) -> dict:
    return {"tile": s["tile"], "pixels": s["pixels"], "seconds": f"{s['seconds']:.3f}",
            "pixels_per_s": f"{s['pixels_per_s']:.0f}" if s.get("pixels_per_s") else "",
            "peak_memory_mib": f"{s['peak_rss_bytes'] / 2 ** 20:.1f}", "device": s["device"],
            "chunk_size": s["chunk_size"], "batch_size": s["batch_size"], "overlap": s["overlap"],
            "windows_run": s["windows_run"]}


def write_report_csv(path: str, summaries: list[dict]) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        wr = csv.DictWriter(fh, fieldnames=REPORT_FIELDS)
        wr.writeheader()
        for s in summaries:
            wr.writerow(report_row(s))
    os.replace(tmp, path)


def benchmark(predictor: Predictor, tiles: list[str], out: str, *, s1_for=None, progress=_stderr_progress,
              resampling: str = "bilinear", **kwargs) -> list[dict]:
    """Map every tile into ``out/<tile name>/`` one after the other, timing each; writes
    ``benchmark_report.csv`` and ``viewer.html``. A tile that fails is reported and skipped."""
    from trainer.viewer import write_viewer

    summaries, failures = [], []
    for i, path in enumerate(tiles):
        if progress:
            progress(f"tile {i + 1}/{len(tiles)}: {path}")
        try:
            src = open_source(path, predictor.channels, s1_for(path) if s1_for else None, resampling)
        except PredictError as e:
            failures.append({"tile": os.path.basename(path.rstrip("/")), "path": path, "reason": str(e)})
            if progress:
                progress(f"benbeam predict: error: {e}")
            continue
        with src:
            for msg in getattr(src, "warnings", []) or []:
                if progress:
                    progress(f"benbeam predict: warning: {src.name}: {msg}")
            s = predict_tile(predictor, src, os.path.join(out, src.name), progress=progress, **kwargs)
        s["dir"] = src.name
        summaries.append(s)
    write_report_csv(os.path.join(out, REPORT_CSV), summaries)
    write_viewer(os.path.join(out, VIEWER), summaries, failures, title="benbeam predict: benchmark")
    return summaries + [dict(f, failed=True) for f in failures]


# --------------------------------------------------------------------------- command line


def _nonneg_int(s: str) -> int:
    v = int(s)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {s}")
    return v


def add_predict_args(ap: argparse.ArgumentParser) -> argparse.ArgumentParser:
    from trainer.train import _positive_int, add_storage_flags

    ap.add_argument("--model", required=True, help="a .keras model written by `benbeam train`")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--tile", help="one tile: a Sentinel-2 L2A .SAFE folder or a multi-band GeoTIFF")
    src.add_argument("--input_dir", help="every tile in this folder (--benchmark, or a Beam pipeline)")
    ap.add_argument("--out", required=True, help="output folder (local)")
    ap.add_argument("--s1", default=None,
                    help="Sentinel-1 VV/VH raster for --tile (needed by a model trained on S2+S1 or S1)")
    ap.add_argument("--resampling", choices=("bilinear", "nearest", "cubic", "average"), default=None,
                    help="resampling of the 20 m and 60 m bands to 10 m (default: the training data's "
                         "`benbeam convert --resampling`, recorded in the model; bilinear for older models)")
    ap.add_argument("--chunk_size", type=_positive_int, default=DEFAULTS["chunk_size"],
                    help="chunk side in px, a multiple of 128; peak memory grows with its square "
                         "(default: %(default)s)")
    ap.add_argument("--overlap", type=_nonneg_int, default=DEFAULTS["overlap"],
                    help="overlap of neighbouring 120-px windows, blended with a Hann weight (default: %(default)s)")
    ap.add_argument("--batch_size", type=_positive_int, default=DEFAULTS["batch_size"],
                    help="windows per model call (default: %(default)s; larger on a GPU)")
    ap.add_argument("--save_probs", action="store_true", help="also write the 19-band probability cube")
    ap.add_argument("--probs_dtype", choices=("uint8", "float32"), default=DEFAULTS["probs_dtype"],
                    help="uint8: round(254·p), 255 = no data; float32: exact, NaN = no data (default: %(default)s)")
    ap.add_argument("--extra", action="append", default=[], metavar="MODULE:FUNCTION",
                    help="a user layer f(probs[h, w, 19]) -> 2-D array or {name: 2-D array}, written as "
                         "<tile>_<name>.tif; repeatable; module may be path/to/file.py")
    ap.add_argument("--preview_size", type=_positive_int, default=DEFAULTS["preview_size"],
                    help="longest side of preview.png's map in px (default: %(default)s)")
    ap.add_argument("--benchmark", action="store_true",
                    help="map the tiles one after the other, timing each: benchmark_report.csv + viewer.html")
    add_storage_flags(ap)
    return ap


def _check_out(out: str) -> None:
    from transforms import storage

    if storage.is_remote(out):
        raise PredictError(f"--out must be a local folder, got {out}")
    try:
        os.makedirs(out, exist_ok=True)
        probe = os.path.join(out, f".tmp-{os.getpid()}-probe")
        with open(probe, "w") as fh:
            fh.write("")
        os.remove(probe)
    except OSError as e:
        raise PredictError(f"cannot write to --out {out}: {e.strerror or e}") from None


def _find_tiles(input_dir: str) -> list[str]:
    from trainer.tiles import find_tiles

    if not os.path.isdir(input_dir):
        raise PredictError(f"--input_dir {input_dir} is not a folder")
    tiles = find_tiles(input_dir)
    if not tiles:
        raise PredictError(f"--input_dir {input_dir} holds no tile (.SAFE folder or GeoTIFF)")
    return tiles


def _print_summary(s: dict, out_dir: str, stream=None) -> None:
    stream = stream or sys.stdout
    pps = s["pixels_per_s"] or 0
    print(f"{s['tile']}: {s['width']}×{s['height']} px ({s['valid_pixels']:,} with data) in {s['seconds']:.1f} s "
          f"= {pps:,.0f} px/s; peak memory {_fmt_bytes(s['peak_rss_bytes'])} (RSS); device {s['device']}; "
          f"{s['chunks']} chunks, {s['windows_run']} windows", file=stream)
    print(f"wrote {len(s['outputs'])} files to {out_dir}", file=stream)


def run(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="benbeam predict",
                                 description="Map whole Sentinel-2 tiles with a model trained by `benbeam train`.",
                                 epilog="Beam pipeline options (--runner, ...) make --input_dir run as a Beam "
                                        "pipeline (the default without --benchmark: DirectRunner).")
    add_predict_args(ap)
    args, beam_args = ap.parse_known_args(argv)
    from beam_pipeline.options import unknown_pipeline_args
    from trainer.train import _configure_storage

    if beam_args:
        unknown = unknown_pipeline_args(beam_args)
        if unknown:
            ap.error(f"unrecognized arguments: {' '.join(unknown)} (neither a benbeam predict flag nor an Apache "
                     "Beam pipeline option; see --help)")
        if args.tile or args.benchmark:
            ap.error("Beam pipeline options apply to --input_dir without --benchmark")
    _configure_storage(args)
    from transforms import storage

    try:
        if not storage.is_remote(args.model) and not os.path.exists(args.model):
            raise PredictError(f"model {args.model} does not exist")
        check_chunk_size(args.chunk_size)
        if args.s1 and not args.tile:
            raise PredictError("--s1 goes with --tile; with --input_dir each tile's S1 raster is found beside it")
        if args.tile and not os.path.exists(args.tile):
            raise PredictError(f"tile {args.tile} does not exist")
        tiles = _find_tiles(args.input_dir) if args.input_dir else [args.tile]
        _check_out(args.out)
        extras = [load_extra(s) for s in args.extra]
        if args.resampling is None:
            args.resampling = model_resampling(args.model)
        settings = dict(chunk_size=args.chunk_size, save_probs=args.save_probs, probs_dtype=args.probs_dtype,
                        preview_size=args.preview_size, resampling=args.resampling)
        if args.input_dir and not args.benchmark:
            from trainer.predict_beam import run_pipeline

            return run_pipeline(model=args.model, tiles=tiles, out=args.out, batch_size=args.batch_size,
                                overlap=args.overlap, extras=list(args.extra), beam_args=beam_args, **settings)
        predictor = Predictor.load(args.model, batch_size=args.batch_size, overlap=args.overlap)
        if args.benchmark:
            needs_s1 = any(c in ("VV", "VH") for c in predictor.channels)
            results = benchmark(predictor, tiles, args.out, extras=extras, s1_for=s1_sidecar if needs_s1 else None,
                                **settings)
            ok = [r for r in results if not r.get("failed")]
            for s in ok:
                _print_summary(s, os.path.join(args.out, s["dir"]))
            print(f"wrote {os.path.join(args.out, REPORT_CSV)} and {os.path.join(args.out, VIEWER)}")
            return 0 if len(ok) == len(results) else 1
        s = predict_path(predictor, args.tile, args.out, s1=args.s1, extras=extras, **settings)
    except PredictError as e:
        print(f"benbeam predict: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("benbeam predict: interrupted; no finished output was left for the tile in progress", file=sys.stderr)
        return 130
    except (RuntimeError, OSError) as e:
        print(f"benbeam predict: error: {e}", file=sys.stderr)
        return 1
    _print_summary(s, args.out)
    return 0
