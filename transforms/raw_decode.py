"""Read-time decoding of raw-encoded records (``benbeam convert --encoding raw``): which bands to
upsample with which weight matrices, and which normalisation to apply (numpy only).

A ``RawSpec`` is made once per reader from the dataset's manifest and the read-time options
(resampling method, statistics, band subset). The TensorFlow (``trainer.data``) and PyTorch
(``trainer.torch_data``) readers apply it to whole tensors: per S2 resolution group, a gather
of the chosen bands, ``W_rows @ X @ W_cols.T`` with ``transforms.resample.weights`` (the
conversion-time resampler's own matrices), a concatenation, one permutation into the
requested channel order, then clipping and ``(x - offset) / scale`` as
``transforms.normalize.normalize`` does. ``image_numpy`` is the same in numpy (tests, report).
By default the result equals the normalised encoding of the same run (float32 rounding apart).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from bigearthnet_beam.schemas import bands, tfrecord
from bigearthnet_beam.schemas.bands import PATCH_SIZE
from bigearthnet_beam.transforms.normalize import NormParams
from bigearthnet_beam.transforms.resample import RESAMPLING_METHODS, weights

# The raw features' bands: (feature, native pixels per side, band names), S2 groups then S1.
GROUPS: tuple[tuple[str, int, tuple[str, ...]], ...] = tuple(
    (feat, PATCH_SIZE * 10 // res, names) for feat, res, names in tfrecord.S2_GROUPS
) + ((tfrecord.S1_DB, PATCH_SIZE, bands.S1_NAMES),)

STATISTICS_CHOICES = ("manifest", "published", "none")


@dataclass(frozen=True)
class Group:
    """The bands taken from one raw feature: their indices there and the resampling matrix (None: 10 m)."""

    feature: str
    index: tuple[int, ...]  # band indices within the feature
    weights: np.ndarray | None  # float32[120, n]: W; the image is W @ X @ W.T
    names: tuple[str, ...] = ()  # the bands taken, in ``index`` order


@dataclass(frozen=True)
class RawSpec:
    """How to turn the raw features of a record into a float32 image of ``channels``."""

    channels: tuple[str, ...]
    resampling: str
    groups: tuple[Group, ...]
    order: tuple[int, ...]  # channel positions in the concatenation of the groups' bands -> ``channels``
    norm: NormParams | None  # for ``channels``; None: raw values (S2 DN, S1 dB) as float32

    def group_norm(self, group: Group) -> tuple[np.ndarray, ...] | None:
        """(offset, scale, lo', hi') float32[k, 1, 1] of a group's bands, with the clip bounds moved
        past the affine step: ``clip((x - offset) / scale, lo', hi')`` equals ``normalize``'s
        ``(clip(x, lo, hi) - offset) / scale`` (scale > 0), so the affine step can run on the
        native-resolution bands, before upsampling; None without normalisation."""
        if self.norm is None:
            return None
        p = self.norm.select(group.names)
        col = lambda a: np.asarray(a, dtype=np.float32).reshape(-1, 1, 1)  # noqa: E731
        return col(p.offset), col(p.scale), col((p.lo - p.offset) / p.scale), col((p.hi - p.offset) / p.scale)

    @property
    def identity_order(self) -> bool:
        """Whether the groups' bands are already in ``channels`` order."""
        return self.order == tuple(range(len(self.order)))


def user_statistics(stats: Mapping[str, tuple[float, float]], channels) -> NormParams:
    """Normalisation without clipping from a ``{band: (mean, std)}`` mapping (e.g. published statistics)."""
    missing = [c for c in channels if c not in stats]
    if missing:
        raise ValueError(f"the statistics give no mean/std for band(s) {', '.join(missing)}")
    mean = np.asarray([float(stats[c][0]) for c in channels], dtype=np.float32)
    std = np.asarray([float(stats[c][1]) for c in channels], dtype=np.float32)
    if not (np.isfinite(mean).all() and np.isfinite(std).all() and (std > 0).all()):
        raise ValueError("the statistics' means must be finite and their standard deviations positive")
    inf = np.full(len(channels), np.inf, dtype=np.float32)
    return NormParams(tuple(channels), -inf, inf, mean, std, False)


def published_statistics() -> dict[str, tuple[float, float]]:
    """The band table's published mean/std per band (``schemas.bands``)."""
    return {b.name: (b.published_mean, b.published_std) for b in bands.ALL_BANDS}


def resolve_norm(manifest: dict, channels, statistics=None) -> NormParams | None:
    """The normalisation of ``channels``: ``statistics`` None/"manifest" (the dataset's own, as the
    normalised encoding applies them), "published", "none" (raw values), a ``{band: (mean, std)}``
    mapping or a ``NormParams``."""
    if statistics is None or (isinstance(statistics, str) and statistics == "manifest"):
        return NormParams.from_dict(manifest["statistics"]["normalization"]).select(channels)
    if isinstance(statistics, NormParams):
        return statistics.select(channels)
    if isinstance(statistics, str):
        if statistics == "published":
            return user_statistics(published_statistics(), channels)
        if statistics == "none":
            return None
        raise ValueError(f"statistics must be one of {STATISTICS_CHOICES} or a {{band: (mean, std)}} mapping")
    if isinstance(statistics, Mapping):
        return user_statistics(statistics, channels)
    raise ValueError(f"statistics must be one of {STATISTICS_CHOICES}, a {{band: (mean, std)}} mapping or NormParams")


def band_subset(channels) -> tuple[str, ...]:
    """Check a band subset (names of ``schemas.bands``, no repeats); returns it as a tuple."""
    channels = tuple(channels)
    unknown = [c for c in channels if c not in bands.BAND_BY_NAME]
    if unknown or not channels:
        raise ValueError(f"unknown band(s) {unknown or channels!r}; bands: {', '.join(bands.ALL_NAMES)}")
    if len(set(channels)) != len(channels):
        raise ValueError(f"bands {channels!r} name a band twice")
    return channels


def make_spec(manifest: dict, channels, resampling: str | None = None, statistics=None) -> RawSpec:
    """The ``RawSpec`` of a raw dataset's reader: ``resampling`` None = the conversion's (``options.resampling``)."""
    channels = band_subset(channels)
    if resampling is None:
        resampling = manifest.get("options", {}).get("resampling", "bilinear")
    if resampling not in RESAMPLING_METHODS:
        raise ValueError(f"resampling must be one of {RESAMPLING_METHODS}, got {resampling!r}")
    groups, taken = [], []
    for feat, n, names in GROUPS:
        idx = tuple(i for i, name in enumerate(names) if name in channels)
        if not idx:
            continue
        w = None if n == PATCH_SIZE else weights(n, PATCH_SIZE // n, resampling)
        groups.append(Group(feat, idx, w, tuple(names[i] for i in idx)))
        taken += [names[i] for i in idx]
    order = tuple(taken.index(c) for c in channels)
    return RawSpec(channels, resampling, tuple(groups), order, resolve_norm(manifest, channels, statistics))


def image_numpy(ex: dict, spec: RawSpec) -> np.ndarray:
    """float32 (H, W, C) image of one decoded raw example (``transforms.encode.decode_example``)."""
    parts = []
    for g in spec.groups:
        x = np.asarray(ex[g.feature], dtype=np.float32)[list(g.index)]
        if g.weights is not None:
            x = np.matmul(np.matmul(g.weights, x), g.weights.T)
        parts.append(x)
    img = np.concatenate(parts, axis=0)[list(spec.order)].transpose(1, 2, 0)
    img = np.ascontiguousarray(img)
    if spec.norm is not None:
        if spec.norm.clip:
            np.maximum(img, spec.norm.lo, out=img)
            np.minimum(img, spec.norm.hi, out=img)
        img -= spec.norm.offset
        img /= spec.norm.scale
    return img


def as_normalized(ex: dict, manifest: dict) -> dict:
    """A decoded raw example with the normalised encoding's ``s2_data`` and ``s1_data`` added
    (HWC float32, the manifest's resampling and statistics), e.g. for the report's samples."""
    spec = make_spec(manifest, bands.ALL_NAMES)
    img = image_numpy(ex, spec)
    n = len(bands.S2_NAMES)
    return {**ex, tfrecord.S2: img[..., :n], tfrecord.S1: img[..., n:]}
