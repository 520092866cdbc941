"""The window grid, the chunk grid and the blending weights of tile inference (plain numpy)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from bigearthnet_beam.trainer.inference.settings import PredictError

BLEND_FLOOR = 0.02  # weight of a window's edge pixels relative to its centre (edges still count)


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
    w1 = hann_1d(patch, floor)
    return np.outer(w1, w1).astype(np.float32)


def hann_1d(patch: int, floor: float = BLEND_FLOOR) -> np.ndarray:
    """float64[patch]: one axis of ``blend_weights`` (the weight is separable)."""
    i = np.arange(patch, dtype=np.float64)
    return floor + (1.0 - floor) * np.sin(np.pi * (i + 0.5) / patch) ** 2


@dataclass(frozen=True)
class Chunk:
    """One chunk of a tile: its index in row-major order and its pixel window."""

    index: int
    row_off: int
    col_off: int
    height: int
    width: int

    @property
    def rows(self) -> tuple[int, int]:
        """[first, last + 1) row of the chunk."""
        return self.row_off, self.row_off + self.height

    @property
    def cols(self) -> tuple[int, int]:
        """[first, last + 1) column of the chunk."""
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
