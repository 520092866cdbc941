"""``WindowClassifier``: ``benbeam predict`` with a reBEN authors' scene classifier (``--model ORG/NAME``).

The authors' models classify a whole 120 × 120 px patch (19 independent sigmoid probabilities),
they do not segment it. A tile is mapped in two passes, each with memory bounded by a strip or
a chunk, never by the tile:

1. the window table: the model runs once on every window of the global grid (the same
   ``grid.window_starts`` as the U-Net's; stride = 120 − overlap), strip by strip (one row of
   windows read at a time), giving ``float32[rows, cols, 19]`` — NaN for windows without a
   valid pixel, which are not run. The Beam path fills the same table with ``RunInference``;
2. the maps: chunk by chunk, each pixel gets probabilities from the windows that cover it —
   ``nearest`` (default): those of the window whose centre is nearest (the map has the windows'
   resolution: blocks of stride × stride px); ``blend``: the Hann-weighted mean of every window
   covering it (the U-Net's blending weight; smooth, upsampled). Then the usual layers, with the
   multi-label meaning (``LAYER_DOC``).

Preprocessing is the authors' (``trainer.pretrained.authors``): the tile is read with NEAREST
resampling of the 20 m bands (a 10 m pixel takes the 20 m pixel that contains it), so a window
starting at an even offset holds exactly the authors' nearest-upsampled patch; an odd stride is
refused for a model with 20 m bands. Then ``(x − mean) / std`` with their ``120_nearest``
statistics; pixels without data are set to 0 (the mean) as for the U-Net.
"""

from __future__ import annotations

import numpy as np

from bigearthnet_beam.schemas.bands import BAND_BY_NAME, S1_NAMES
from bigearthnet_beam.schemas.classes import CLASS_NAMES, NUM_CLASSES, class_colors
from bigearthnet_beam.schemas.errors import InputError, UnavailableError
from bigearthnet_beam.trainer.inference.grid import Chunk, hann_1d
from bigearthnet_beam.trainer.inference.layers import layers_from_probs
from bigearthnet_beam.trainer.inference.settings import DEFAULTS, PredictEnvironmentError, PredictError
from bigearthnet_beam.trainer.pretrained import authors

PATCH = authors.IMAGE_SIZE
WINDOW_MAPS = ("nearest", "blend")
RESAMPLING = "nearest"  # the authors' upsampling of 20 m (and 60 m) bands

LAYER_DOC = {
    "class": "uint8 class id: the most probable of the 19 labels (argmax of the per-label sigmoid probabilities; "
    "a scene classifier: other labels may be present too, see probs); 255 = no data",
    "maxprob": "float32 max_k p_k: the probability of the most probable label (labels are independent: "
    "the 19 probabilities do not sum to 1); NaN = no data",
    "entropy": "float32 sum_k H(p_k) of the 19 independent labels, H(p) = -p ln p - (1-p) ln(1-p), in nats: "
    "0 = every label certain, 19 ln 2 = 13.17 = every label a coin toss; NaN = no data",
    "gap": "float32 top-1 minus top-2 label probability (small = two labels equally likely, which a "
    "multi-label scene may well hold); NaN = no data",
    "probs": "19 bands in class order: the per-label sigmoid probability of the window(s) over the pixel "
    "(independent, not summing to 1); uint8 round(254*p) with 255 = no data (divide by 254), or float32 "
    "with NaN = no data (--probs_dtype)",
}
ENTROPY_NOTE = "natural (nats); sum of 19 binary entropies, normalised = entropy / (19 ln 2)"


def binary_entropy_sum(probs: np.ndarray) -> np.ndarray:
    """Σ_k −p ln p − (1−p) ln(1−p) over the last axis (nats; 0·ln 0 = 0), float32."""
    p = np.clip(np.asarray(probs, dtype=np.float32), 0.0, 1.0)
    q = 1.0 - p
    tiny = np.float32(1e-30)
    return -(p * np.log(np.maximum(p, tiny)) + q * np.log(np.maximum(q, tiny))).sum(axis=-1, dtype=np.float32)


def multilabel_layers(probs: np.ndarray, valid: np.ndarray) -> dict[str, np.ndarray]:
    """The per-pixel layers of an (h, w, 19) cube of independent label probabilities (see ``LAYER_DOC``):
    the U-Net's layers, with the entropy summed over the 19 independent labels."""
    return layers_from_probs(probs, valid, entropy_of=binary_entropy_sum)


def nearest_window(starts: np.ndarray, lo: int, hi: int, patch: int = PATCH) -> np.ndarray:
    """For each pixel in [lo, hi) of one axis: the index in ``starts`` of the window whose centre
    is nearest to the pixel's centre (ties: the earlier window). That window contains the pixel."""
    centres = starts.astype(np.float64) + patch / 2.0
    px = np.arange(lo, hi, dtype=np.float64) + 0.5
    return np.argmin(np.abs(px[:, None] - centres[None, :]), axis=1)


def axis_weights(starts: np.ndarray, lo: int, hi: int, patch: int = PATCH) -> np.ndarray:
    """float64[len(starts), hi − lo]: the 1-D Hann blending weight of each window at each pixel (0 outside it)."""
    w1 = hann_1d(patch)
    rel = np.arange(lo, hi)[None, :] - starts[:, None]
    inside = (rel >= 0) & (rel < patch)
    return np.where(inside, w1[np.clip(rel, 0, patch - 1)], 0.0)


def table_to_chunk(table: np.ndarray, rows, cols, chunk: Chunk, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """(probs float32[h, w, 19], covered bool[h, w]) of one chunk from the window table."""
    r0, r1 = chunk.rows
    c0, c1 = chunk.cols
    if mode == "nearest":
        iy, ix = nearest_window(rows, r0, r1), nearest_window(cols, c0, c1)
        probs = table[iy[:, None], ix[None, :]]
        covered = np.isfinite(probs[..., 0])
        return np.nan_to_num(probs, nan=0.0).astype(np.float32, copy=False), covered
    ri = np.nonzero((rows < r1) & (rows + PATCH > r0))[0]
    ci = np.nonzero((cols < c1) & (cols + PATCH > c0))[0]
    sub = table[ri][:, ci]  # (ni, nj, K)
    ok = np.isfinite(sub[..., 0]).astype(np.float32)
    vals = np.nan_to_num(sub, nan=0.0) * ok[..., None]
    wr = axis_weights(rows[ri], r0, r1).astype(np.float32)
    wc = axis_weights(cols[ci], c0, c1).astype(np.float32)
    rowsum = np.tensordot(wr, vals, axes=([0], [0]))  # (h, nj, K): windows' rows weighted
    acc = np.ascontiguousarray(np.matmul(rowsum.transpose(0, 2, 1), wc).transpose(0, 2, 1))  # (h, w, K)
    del rowsum
    wsum = wr.T @ ok @ wc
    covered = wsum > 0
    np.divide(acc, wsum[..., None], out=acc, where=covered[..., None])
    acc[~covered] = 0.0
    return acc, covered


class WindowClassifier:
    """The ``Predictor`` interface of ``trainer.inference.tile.predict_tile`` for a scene
    classifier: ``channels``, ``patch``, ``num_classes``, ``info``, ``overlap``, ``batch_size``,
    ``needs_s1``, ``predict_chunk``; plus the multi-label ``layers_from_probs`` and ``layer_doc``.

    ``model``: a ``trainer.pretrained.PretrainedModel`` (the window table is computed here), or
    None with a ``table`` given (the Beam path computed it with ``RunInference``).
    """

    layer_doc = LAYER_DOC
    entropy_note = ENTROPY_NOTE

    def __init__(
        self,
        model=None,
        *,
        bands=None,
        batch_size: int = DEFAULTS["batch_size"],
        overlap: int = 0,
        window_map: str = "nearest",
        table: np.ndarray | None = None,
        path: str | None = None,
    ):
        if batch_size < 1:
            raise PredictError(f"--batch_size must be at least 1, got {batch_size}")
        if not 0 <= overlap < PATCH:
            raise PredictError(f"--overlap must be in 0..{PATCH - 1} px (a stride of 1..{PATCH}), got {overlap}")
        if window_map not in WINDOW_MAPS:
            raise PredictError(f"--window_map must be one of {WINDOW_MAPS}, got {window_map!r}")
        self.model = model
        self.channels = tuple(model.bands if model is not None else bands)
        if any(BAND_BY_NAME[b].resolution_m > 10 for b in self.channels) and (PATCH - overlap) % 2:
            raise PredictError(
                f"a stride of {PATCH - overlap} px puts windows at odd offsets, where the model's 20 m bands do "
                "not start on their own grid as in the authors' patches; use an even stride (--stride / --overlap)"
            )
        self.patch, self.num_classes = PATCH, NUM_CLASSES
        self.batch_size, self.overlap, self.window_map = int(batch_size), int(overlap), window_map
        self.path = path if path is not None else getattr(model, "ref", None)
        self.info = {
            "classes": list(CLASS_NAMES),
            "class_colors": [list(c) for c in class_colors()],
            "channels": list(self.channels),
            "task": "multi-label scene classification (reBEN authors' model)",
        }
        # the tile whose table is held (the object itself: an id could be reused by the next tile)
        self._table, self._table_source, self._pending = table, None, (0, 0)
        if table is not None:
            self._table_source = "given"
            self._pending = (int(np.isfinite(table[..., 0]).sum()), int((~np.isfinite(table[..., 0])).sum()))

    @classmethod
    def load(cls, ref: str, *, device: str = "cpu", revision: str | None = None, **kwargs) -> WindowClassifier:
        """Load the authors' model at ``ref`` (folder or hub id); its errors as ``PredictError``s."""
        from bigearthnet_beam.trainer.pretrained.model import load

        try:
            model = load(ref, revision=revision, device=device)
        except UnavailableError as e:
            raise PredictEnvironmentError(str(e)) from None
        except InputError as e:
            raise PredictError(f"cannot use model {ref}: {e}") from None
        return cls(model, **kwargs)

    def device_name(self) -> str:
        """``CPU`` or the CUDA device's name (the summary's ``device``), without TensorFlow."""
        dev = getattr(self.model, "device", None)
        if dev is None or dev.type != "cuda":
            return "CPU"
        import torch

        return torch.cuda.get_device_name(dev)

    @property
    def needs_s1(self) -> bool:
        """Whether the model reads Sentinel-1 channels (a tile then needs its S1 raster)."""
        return any(c in S1_NAMES for c in self.channels)

    def layers_from_probs(self, probs: np.ndarray, valid: np.ndarray) -> dict[str, np.ndarray]:
        """The multi-label layers (``multilabel_layers``)."""
        return multilabel_layers(probs, valid)

    def normalise_strip(self, pixels: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """Raw (h, w, C) pixels → normalised float32 (h, w, C): the authors' statistics; 0 where no data."""
        mean, std = authors.mean_std(self.channels)
        x = np.array(pixels, dtype=np.float32, copy=True)
        x -= mean.reshape(-1)
        x /= std.reshape(-1)
        x[~valid] = 0.0
        np.nan_to_num(x, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
        return x

    def strip_windows(self, source, y: int, cols: np.ndarray):
        """The windows of the strip at row ``y``: yields ``(column index, float32[C, 120, 120])`` for each
        window holding a valid pixel (normalised, channel-first), and returns the count skipped."""
        from rasterio.windows import Window

        pixels, valid = source.read(Window(0, int(y), int(source.width), PATCH))
        valid = np.asarray(valid, dtype=bool)
        x = self.normalise_strip(pixels, valid)
        del pixels
        for j, c in enumerate(cols):
            c = int(c)
            if valid[:, c : c + PATCH].any():
                yield j, np.ascontiguousarray(x[:, c : c + PATCH].transpose(2, 0, 1))

    def window_table(self, source, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """float32[len(rows), len(cols), 19]: every window's probabilities (NaN: no valid pixel), strip by strip."""
        table = np.full((len(rows), len(cols), NUM_CLASSES), np.nan, dtype=np.float32)
        run = 0
        for i, y in enumerate(rows):
            batch_j, batch_x = [], []
            for j, win in self.strip_windows(source, int(y), cols):
                batch_j.append(j)
                batch_x.append(win)
                if len(batch_x) == self.batch_size:
                    table[i, batch_j] = self.model.proba_normalised(np.stack(batch_x), batch_size=self.batch_size)
                    run += len(batch_x)
                    batch_j, batch_x = [], []
            if batch_x:
                table[i, batch_j] = self.model.proba_normalised(np.stack(batch_x), batch_size=self.batch_size)
                run += len(batch_x)
        self._pending = (run, len(rows) * len(cols) - run)
        return table

    def predict_chunk(self, source, chunk: Chunk, rows: np.ndarray, cols: np.ndarray) -> tuple:
        """``(probs float32[h, w, 19], valid bool[h, w], windows run, windows skipped)`` of one chunk.

        The first call for a tile computes its window table (all windows are counted then)."""
        from rasterio.windows import Window

        if self._table_source != "given" and self._table_source is not source:
            if self.model is None:
                raise RuntimeError("a WindowClassifier without a model needs its window table")
            self._table, self._table_source = self.window_table(source, rows, cols), source
        if self._table.shape[:2] != (len(rows), len(cols)):
            raise RuntimeError(f"window table {self._table.shape[:2]} does not fit the grid {(len(rows), len(cols))}")
        n_run, n_skip = self._pending
        self._pending = (0, 0)
        _, valid = source.read(Window(chunk.col_off, chunk.row_off, chunk.width, chunk.height))
        probs, covered = table_to_chunk(self._table, rows, cols, chunk, self.window_map)
        valid = np.asarray(valid, dtype=bool) & covered
        probs[~valid] = 0.0
        return probs, np.ascontiguousarray(valid), n_run, n_skip
