"""``Predictor``: a loaded model with its inference contract, and the blended softmax of one chunk."""

from __future__ import annotations

import numpy as np

from bigearthnet_beam.schemas.bands import S1_NAMES
from bigearthnet_beam.trainer.inference.grid import Chunk, blend_weights, touching
from bigearthnet_beam.trainer.inference.settings import DEFAULTS, PredictError


class Predictor:
    """A loaded model with its inference contract: preprocessing exactly as the ETL did
    (the training dataset's statistics, the model's channel order) and chunk prediction."""

    def __init__(
        self, model, info: dict, *, batch_size: int = DEFAULTS["batch_size"], overlap: int = DEFAULTS["overlap"]
    ):
        import tensorflow as tf

        from bigearthnet_beam.transforms.normalize import NormParams

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

    @property
    def needs_s1(self) -> bool:
        """Whether the model reads Sentinel-1 channels (a tile then needs its S1 raster)."""
        return any(c in S1_NAMES for c in self.channels)

    @classmethod
    def load(cls, path: str, st=None, **kwargs) -> Predictor:
        """Load a ``.keras`` model written by ``benbeam train`` (local, or s3:// / gs:// under ``st``)."""
        from bigearthnet_beam.trainer.model import load_model

        try:
            model, info = load_model(path, st=st)
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
        from bigearthnet_beam.transforms.normalize import normalize

        x = normalize(np.asarray(pixels, dtype=np.float32), self.norm, inplace=pixels.dtype == np.float32)
        if self.float16_inputs:
            x = x.astype(np.float16).astype(np.float32)
        x[~valid] = 0.0
        np.nan_to_num(x, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
        return x

    def run_batch(self, batch: np.ndarray) -> np.ndarray:
        """The model's softmax of a (n, patch, patch, C) batch of preprocessed windows."""
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
            raise RuntimeError(
                f"tile {source.name}: a read of {(ry1 - ry0, rx1 - rx0)} px returned "
                f"{pixels.shape[:2]} pixels and a {valid.shape} mask"
            )
        cvalid = valid[r0 - ry0 : r1 - ry0, c0 - rx0 : c1 - rx0]
        h, w = chunk.height, chunk.width
        acc = np.zeros((h, w, self.num_classes), dtype=np.float32)
        wsum = np.zeros((h, w), dtype=np.float32)
        todo = []
        for y in ys:
            for x in xs:
                iy0, iy1, ix0, ix1 = max(y, r0), min(y + p, r1), max(x, c0), min(x + p, c1)
                if cvalid[iy0 - r0 : iy1 - r0, ix0 - c0 : ix1 - c0].any():
                    todo.append((int(y), int(x), int(iy0), int(iy1), int(ix0), int(ix1)))
        skipped = len(ys) * len(xs) - len(todo)
        if todo:
            x_in = self.preprocess(pixels, valid)
            del pixels
            for b in range(0, len(todo), self.batch_size):
                part = todo[b : b + self.batch_size]
                batch = np.stack([x_in[y - ry0 : y - ry0 + p, x - rx0 : x - rx0 + p] for y, x, *_ in part])
                out = self.run_batch(batch)
                for (y, x, iy0, iy1, ix0, ix1), o in zip(part, out, strict=True):
                    wt = self.weights[iy0 - y : iy1 - y, ix0 - x : ix1 - x]
                    acc[iy0 - r0 : iy1 - r0, ix0 - c0 : ix1 - c0] += (
                        o[iy0 - y : iy1 - y, ix0 - x : ix1 - x] * wt[..., None]
                    )
                    wsum[iy0 - r0 : iy1 - r0, ix0 - c0 : ix1 - c0] += wt
            np.divide(acc, wsum[..., None], out=acc, where=wsum[..., None] > 0)
        return acc, np.ascontiguousarray(cvalid), len(todo), skipped
