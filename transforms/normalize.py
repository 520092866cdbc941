"""Band normalisation with dataset-wide statistics (numpy, no Beam).

``x' = (clip(x, lo, hi) - clipped_mean) / clipped_std`` with percentile clipping (the
default), or ``x' = (x - mean) / std`` without. The parameters travel as a small
JSON-able dict (a Beam side input, the manifest, the saved model).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bigearthnet_beam.schemas.bands import ALL_NAMES


@dataclass(frozen=True)
class NormParams:
    """Per-channel normalisation: optional clip to [lo, hi], then (x - offset) / scale."""

    channels: tuple[str, ...]
    lo: np.ndarray  # float32[C]; -inf when not clipping
    hi: np.ndarray  # float32[C]; +inf when not clipping
    offset: np.ndarray  # float32[C]
    scale: np.ndarray  # float32[C]
    clip: bool

    @classmethod
    def from_stats(cls, stats: dict, clip: bool = True, channels=ALL_NAMES) -> "NormParams":
        """From ``BandStats.extract`` output (per band dicts)."""
        lo, hi, off, sc = [], [], [], []
        for name in channels:
            s = stats[name]
            if not s.get("count"):
                raise ValueError(f"no statistics for band {name}: no training pixels were seen")
            if clip:
                lo.append(s["p_low"])
                hi.append(s["p_high"])
                off.append(s["clipped_mean"])
                std = s["clipped_std"]
            else:
                lo.append(-np.inf)
                hi.append(np.inf)
                off.append(s["mean"])
                std = s["std"]
            sc.append(std if std > 0 else 1.0)
        f = lambda v: np.asarray(v, dtype=np.float32)  # noqa: E731
        return cls(tuple(channels), f(lo), f(hi), f(off), f(sc), bool(clip))

    def to_dict(self) -> dict:
        """JSON-ready dict (infinite bounds as None)."""

        def lst(a):
            return [float(v) if np.isfinite(v) else None for v in a]

        return {
            "channels": list(self.channels),
            "clip": self.clip,
            "lo": lst(self.lo),
            "hi": lst(self.hi),
            "offset": lst(self.offset),
            "scale": lst(self.scale),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "NormParams":
        """The ``NormParams`` of a ``to_dict`` dict."""

        def arr(v, fill):
            return np.asarray([fill if x is None else x for x in v], dtype=np.float32)

        return cls(
            tuple(d["channels"]),
            arr(d["lo"], -np.inf),
            arr(d["hi"], np.inf),
            arr(d["offset"], 0.0),
            arr(d["scale"], 1.0),
            bool(d["clip"]),
        )

    def select(self, channels) -> "NormParams":
        """The parameters of a channel subset, in the given order."""
        idx = [self.channels.index(c) for c in channels]
        return NormParams(tuple(channels), self.lo[idx], self.hi[idx], self.offset[idx], self.scale[idx], self.clip)


def normalize(pixels: np.ndarray, params: NormParams, inplace: bool = False) -> np.ndarray:
    """Normalise a channels-last float array (..., C); a new float32 array, or ``pixels``
    itself (float32) when ``inplace``."""
    if inplace:
        if pixels.dtype != np.float32:
            raise ValueError("in-place normalisation needs a float32 array")
        x = pixels
    else:
        x = np.array(pixels, dtype=np.float32, copy=True)
    if x.shape[-1] != len(params.channels):
        raise ValueError(f"expected {len(params.channels)} channels last, got shape {x.shape}")
    if params.clip:
        np.maximum(x, params.lo, out=x)
        np.minimum(x, params.hi, out=x)
    x -= params.offset
    x /= params.scale
    return x
