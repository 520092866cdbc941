"""Upsampling of 20 m and 60 m bands to the 10 m grid, reproducing GDAL's own resampling
(what ``rasterio``'s ``read(out_shape=..., resampling=...)`` returns) with precomputed
separable weight matrices: ``W_rows @ X @ W_cols.T`` (numpy only).

GDAL's convolution resampling maps destination pixel centres to source coordinates
``(i + 0.5) / factor - 0.5``, evaluates the kernel on the source pixels in reach, drops
taps that fall outside the raster and renormalises the remaining weights. "nearest"
takes the source pixel containing the destination centre; "average" when upsampling
covers a single source pixel, so it equals "nearest".
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

RESAMPLING_METHODS = ("bilinear", "nearest", "cubic", "average")


def _bilinear(t: np.ndarray) -> np.ndarray:
    t = np.abs(t)
    return np.where(t < 1.0, 1.0 - t, 0.0)


def _cubic(t: np.ndarray, a: float = -0.5) -> np.ndarray:
    t = np.abs(t)
    w = np.zeros_like(t)
    m1 = t <= 1.0
    m2 = (t > 1.0) & (t < 2.0)
    w[m1] = (a + 2) * t[m1] ** 3 - (a + 3) * t[m1] ** 2 + 1
    w[m2] = a * t[m2] ** 3 - 5 * a * t[m2] ** 2 + 8 * a * t[m2] - 4 * a
    return w


@lru_cache(maxsize=64)
def weights(n_src: int, factor: int, method: str) -> np.ndarray:
    """float32[n_src*factor, n_src]: the 1-D resampling matrix."""
    if method not in RESAMPLING_METHODS:
        raise ValueError(f"resampling must be one of {RESAMPLING_METHODS}, got {method!r}")
    n_dst = n_src * factor
    centres = (np.arange(n_dst) + 0.5) / factor  # in source pixel units
    w = np.zeros((n_dst, n_src), dtype=np.float64)
    if method in ("nearest", "average"):
        idx = np.minimum(np.floor(centres).astype(int), n_src - 1)
        w[np.arange(n_dst), idx] = 1.0
    else:
        kernel, radius = (_bilinear, 1) if method == "bilinear" else (_cubic, 2)
        pos = centres - 0.5
        for i, p in enumerate(pos):
            lo = int(np.floor(p)) - radius + 1
            taps = np.arange(lo, lo + 2 * radius)
            k = kernel(taps - p)
            keep = (taps >= 0) & (taps < n_src)
            k = k[keep]
            w[i, taps[keep]] = k / k.sum()
    out = w.astype(np.float32)
    out.setflags(write=False)
    return out


def upsample(arr: np.ndarray, factor: int, method: str = "bilinear") -> np.ndarray:
    """Upsample (h, w) or (bands, h, w) by an integer factor; returns float32.

    ``weights(h) @ x @ weights(w).T`` (single-threaded BLAS: see beam_pipeline.cli).
    """
    x = np.asarray(arr, dtype=np.float32)
    if factor == 1:
        return x.copy()
    if x.ndim not in (2, 3):
        raise ValueError(f"upsample takes (h, w) or (bands, h, w), got shape {x.shape}")
    if method not in RESAMPLING_METHODS:
        raise ValueError(f"resampling must be one of {RESAMPLING_METHODS}, got {method!r}")
    if method in ("nearest", "average"):
        return np.repeat(np.repeat(x, factor, axis=-2), factor, axis=-1)
    return np.matmul(np.matmul(weights(x.shape[-2], factor, method), x), weights(x.shape[-1], factor, method).T)


# --------------------------------------------------------------------------- windows of a band (tiles)


def taps(n_src: int, factor: int, method: str, dst_start: int, dst_stop: int) -> tuple[np.ndarray, np.ndarray]:
    """(idx int64[n, T], w float32[n, T]) for destination pixels dst_start..dst_stop-1 of a band
    of n_src source pixels upsampled by ``factor``: the nonzero part of the rows of
    ``weights(n_src, factor, method)``, computed the same way (bit for bit) without building
    the (n_src·factor × n_src) matrix. Dropped taps get weight 0, index clipped.
    """
    if method not in RESAMPLING_METHODS:
        raise ValueError(f"resampling must be one of {RESAMPLING_METHODS}, got {method!r}")
    centres = (np.arange(dst_start, dst_stop) + 0.5) / factor
    if method in ("nearest", "average") or factor == 1:
        idx = np.minimum(np.floor(centres).astype(np.int64), n_src - 1)[:, None]
        return idx, np.ones(idx.shape, dtype=np.float32)
    kernel, radius = (_bilinear, 1) if method == "bilinear" else (_cubic, 2)
    pos = centres - 0.5
    lo = np.floor(pos).astype(np.int64) - radius + 1
    t = lo[:, None] + np.arange(2 * radius)
    k = kernel(t - pos[:, None])
    keep = (t >= 0) & (t < n_src)
    k = np.where(keep, k, 0.0)
    total = k[:, 0].copy()
    for j in range(1, k.shape[1]):  # left to right, as weights() sums the kept taps (dropped ones
        total += k[:, j]  # are only ever at the ends, and adding 0.0 is exact)
    return np.clip(t, 0, n_src - 1), (k / total[:, None]).astype(np.float32)


def _apply_taps(block: np.ndarray, idx: np.ndarray, w: np.ndarray, axis: int) -> np.ndarray:
    """Sum over taps of w * block gathered along ``axis`` (fixed order: identical results
    whatever the window)."""
    out = None
    for t in range(idx.shape[1]):
        g = np.take(block, idx[:, t], axis=axis)
        ww = w[:, t][:, None] if axis == 0 else w[:, t][None, :]
        term = ww * g
        out = term if out is None else out + term
    return out


def resample_window(
    block: np.ndarray,
    block_origin: tuple[int, int],
    src_shape: tuple[int, int],
    factor: int,
    dst_window: tuple[int, int, int, int],
    method: str = "bilinear",
) -> np.ndarray:
    """Upsample part of a band: float32 (h, w) of the 10 m window (row0, col0, h, w).

    ``block`` holds source rows/cols starting at ``block_origin`` of a band of ``src_shape``;
    it must cover ``source_span`` of the window. Equals ``upsample`` of the whole band cropped
    to the window (up to float32 rounding: same weights, same sums).
    """
    r0, c0, h, w = dst_window
    ir, wr = taps(src_shape[0], factor, method, r0, r0 + h)
    ic, wc = taps(src_shape[1], factor, method, c0, c0 + w)
    x = np.asarray(block, dtype=np.float32)
    rows = _apply_taps(x, ir - block_origin[0], wr, 0)
    return _apply_taps(rows, ic - block_origin[1], wc, 1)


def source_span(n_src: int, factor: int, method: str, dst_start: int, dst_stop: int) -> tuple[int, int]:
    """[lo, hi) of the source pixels that destination pixels dst_start..dst_stop-1 reach."""
    idx, _ = taps(n_src, factor, method, dst_start, dst_stop)
    return int(idx.min()), int(idx.max()) + 1


# --------------------------------------------------------------------------- phases (banded form)


@lru_cache(maxsize=64)
def phases(n_src: int, factor: int, method: str) -> tuple[int, tuple[tuple[tuple[int, np.ndarray], ...], ...]]:
    """The rows of ``weights(n_src, factor, method)`` by output phase, for a banded upsampling without
    the (n_src·factor × n_src) matrix: ``(pad, taps)`` where ``taps[r]`` lists ``(offset, w float32[n_src])``
    such that destination pixel ``i·factor + r`` is ``sum(w[i] * x_pad[pad + offset + i])`` over the
    list, in order, with ``x_pad`` = ``x`` edge-padded by ``pad`` on both sides. The weights and their
    order are ``taps()``'s, bit for bit; a tap GDAL drops at a border has weight 0 there."""
    idx, w = taps(n_src, factor, method, 0, n_src * factor)
    i = np.arange(n_src)
    out, pad = [], 0
    for r in range(factor):
        ri, rw = idx[r::factor], w[r::factor]
        mid = n_src // 2  # an interior row: no tap clipped
        phase = []
        for t in range(idx.shape[1]):
            if not rw[:, t].any():
                continue
            d = int(ri[mid, t]) - mid
            if not np.array_equal(np.clip(i + d, 0, n_src - 1), ri[:, t]):
                raise ValueError(f"{method} x{factor} on {n_src} pixels has no banded form")
            pad = max(pad, -d, d)
            w_t = np.ascontiguousarray(rw[:, t])
            w_t.setflags(write=False)
            phase.append((d, w_t))
        out.append(tuple(phase))
    return pad, tuple(out)
