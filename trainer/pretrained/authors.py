"""The reBEN authors' input and output contract, as their library ``configilm`` 0.7.1 defines it
(plain numpy, no torch): the band order for a channel count, the upsampling of coarse bands,
the normalisation statistics, and the class order of the 19 logits.

Read from ``configilm/extra/BENv2_utils.py`` and ``configilm/extra/DataSets/BENv2_DataSet.py``
(``STANDARD_BANDS``, ``stack_and_interpolate``, ``band_combi_to_mean_std``, ``NEW_LABELS``) and
``configilm/extra/_defaults.py`` (the evaluation transform: ``Resize`` to the image size, a no-op
at 120 px, then ``Normalize(mean, std)``); the values below were typed from that reading and are
pinned by ``tests/test_pretrained_authors.py``:

- channel count → band order: 2 ``VV VH``; 3 ``B04 B03 B02``; 4 ``B02 B03 B04 B08``;
  10 the 10 m and 20 m bands in ESA order; 12 ``VV VH`` then those 10;
- every band that is not 120 × 120 is upsampled to 120 with ``F.interpolate(mode="nearest")``
  (20 m: each pixel repeated 2 × 2; 60 m: 6 × 6), values as float32;
- ``(x - mean) / std`` in float32 with the ``"120_nearest"`` train-split statistics;
- the 19 logits come in LEXICOGRAPHIC class order (``NEW_LABELS = sorted(...)``), not the
  paper's order this project uses (``schemas.classes.CLASS_NAMES``).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from bigearthnet_beam.schemas.bands import BAND_BY_NAME, PATCH_SIZE
from bigearthnet_beam.schemas.classes import CLASS_NAMES
from bigearthnet_beam.schemas.errors import InputError

IMAGE_SIZE = PATCH_SIZE  # 120: the authors' models read 120 x 120 inputs
STATS_NAME = "120_nearest"  # configilm's key of the statistics the published models were trained with

_S1 = ("VV", "VH")
_S2_10_20 = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")
BANDS_FOR_CHANNELS: dict[int, tuple[str, ...]] = {
    2: _S1,
    3: ("B04", "B03", "B02"),
    4: ("B02", "B03", "B04", "B08"),
    10: _S2_10_20,
    12: _S1 + _S2_10_20,
}

# configilm's means["120_nearest"] and stds["120_nearest"] (train split; S1 from BigEarthNet v1)
MEAN_120_NEAREST: dict[str, float] = {
    "B01": 361.0767822265625,
    "B02": 438.3720703125,
    "B03": 614.0556640625,
    "B04": 588.4096069335938,
    "B05": 942.8433227539062,
    "B06": 1769.931640625,
    "B07": 2049.551513671875,
    "B08": 2193.2919921875,
    "B09": 2241.455322265625,
    "B11": 1568.226806640625,
    "B12": 997.7324829101562,
    "B8A": 2235.556640625,
    "VH": -19.352558135986328,
    "VV": -12.643863677978516,
}
STD_120_NEAREST: dict[str, float] = {
    "B01": 575.0687255859375,
    "B02": 607.02685546875,
    "B03": 603.2968139648438,
    "B04": 684.56884765625,
    "B05": 738.4326782226562,
    "B06": 1100.4560546875,
    "B07": 1275.805419921875,
    "B08": 1369.3717041015625,
    "B09": 1316.393310546875,
    "B11": 1070.1612548828125,
    "B12": 813.5276489257812,
    "B8A": 1356.5440673828125,
    "VH": 5.590505599975586,
    "VV": 5.133493900299072,
}

# the order of the authors' logits, and for each canonical class the logit that holds it
AUTHORS_CLASS_ORDER: tuple[str, ...] = tuple(sorted(CLASS_NAMES))
TO_CANONICAL: np.ndarray = np.array([AUTHORS_CLASS_ORDER.index(n) for n in CLASS_NAMES], dtype=np.int64)
TO_CANONICAL.setflags(write=False)


class ChannelCountError(InputError):
    """A model whose channel count has no band order in the authors' ``STANDARD_BANDS``."""


class MissingBandError(InputError):
    """The input lacks a band the model reads, or holds it with a wrong shape."""


def bands_for_channels(channels: int) -> tuple[str, ...]:
    """The band names a model with ``channels`` input channels reads, in its channel order."""
    try:
        return BANDS_FOR_CHANNELS[int(channels)]
    except (KeyError, TypeError, ValueError):
        raise ChannelCountError(
            f"a model with {channels!r} input channels has no band order in the reBEN authors' "
            f"STANDARD_BANDS; the published models read {sorted(BANDS_FOR_CHANNELS)} channels"
        ) from None


def mean_std(bands) -> tuple[np.ndarray, np.ndarray]:
    """float32 mean and std per band (the ``120_nearest`` statistics), shaped (C, 1, 1)."""
    mean = np.array([MEAN_120_NEAREST[b] for b in bands], dtype=np.float32).reshape(-1, 1, 1)
    std = np.array([STD_120_NEAREST[b] for b in bands], dtype=np.float32).reshape(-1, 1, 1)
    return mean, std


def native_size(band: str) -> int:
    """Pixels per patch side of ``band`` at its native resolution (120, 60 or 20)."""
    return BAND_BY_NAME[band].native_size


def upsample_nearest(arr: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """(N, s, s) → (N, size, size) float32, each pixel repeated ``size // s`` times along both axes
    (what ``F.interpolate(mode="nearest")`` does for an integer factor)."""
    a = np.asarray(arr, dtype=np.float32)
    s = a.shape[-1]
    if s == size:
        return a
    if size % s:
        raise MissingBandError(f"a {s}-px band cannot be upsampled to {size} px by an integer factor")
    f = size // s
    return np.repeat(np.repeat(a, f, axis=-2), f, axis=-1)


def stack_bands(bands: Mapping[str, np.ndarray], order) -> np.ndarray:
    """Raw bands at native resolution → float32 (N, C, 120, 120), upsampled with nearest.

    Each band is (N, s, s) with s its native size (10 m: 120, 20 m: 60, 60 m: 20) or already
    120 (upsampled before); a 2-D band is one patch.
    """
    missing = [b for b in order if b not in bands]
    if missing:
        raise MissingBandError(f"the model reads bands {list(order)}; missing: {missing}")
    out = None
    n = None
    for c, name in enumerate(order):
        a = np.asarray(bands[name])
        if a.ndim == 2:
            a = a[None]
        native = native_size(name)
        if a.ndim != 3 or a.shape[1] != a.shape[2] or a.shape[-1] not in (native, IMAGE_SIZE):
            raise MissingBandError(
                f"band {name} must be (N, {native}, {native}) at its native resolution or (N, 120, 120); "
                f"got shape {a.shape}"
            )
        if n is None:
            n = a.shape[0]
            out = np.empty((n, len(order), IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
        elif a.shape[0] != n:
            raise MissingBandError(f"band {name} holds {a.shape[0]} patches, band {order[0]} {n}")
        out[:, c] = upsample_nearest(a)
    return out


def normalise(x: np.ndarray, bands, *, inplace: bool = False) -> np.ndarray:
    """(N, C, H, W) raw float32 → ``(x - mean) / std`` in float32 (the authors' ``Normalize``)."""
    mean, std = mean_std(bands)
    y = x if inplace else np.array(x, dtype=np.float32, copy=True)
    y -= mean
    y /= std
    return y


def preprocess(bands: Mapping[str, np.ndarray], order) -> np.ndarray:
    """The authors' model input of raw bands: nearest upsampling to 120, then normalisation."""
    return normalise(stack_bands(bands, order), order, inplace=True)


def to_canonical(values: np.ndarray) -> np.ndarray:
    """(..., 19) in the authors' lexicographic class order → this project's canonical order."""
    return np.asarray(values)[..., TO_CANONICAL]


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Element-wise logistic function in float32 (multi-label: one independent probability per class)."""
    z = np.asarray(logits, dtype=np.float32)
    with np.errstate(over="ignore"):  # exp(-z) = inf for z << 0 gives 0, as it should
        return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)
