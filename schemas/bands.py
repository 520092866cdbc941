"""The band table: every raster layer of a reBEN patch, in canonical channel order.

This module is the single source of truth for band names, native resolutions, dtypes,
published statistics and the histogram ranges used for dataset statistics. Nothing
else in the project spells out a band list.
"""

from __future__ import annotations

from dataclasses import dataclass

PATCH_SIZE = 120  # pixels of the 10 m grid
PIXEL_SIZE_M = 10.0
PATCH_EXTENT_M = 1200.0


@dataclass(frozen=True)
class Band:
    """One band: its modality, native resolution, on-disk dtype and nodata, published and histogram ranges."""

    name: str
    modality: str  # "s2" or "s1"
    resolution_m: int  # native pixel size
    dtype: str  # dtype on disk
    nodata: float | None  # nodata tag on disk
    published_mean: float
    published_std: float
    hist_min: float  # fixed histogram range for dataset statistics
    hist_max: float

    @property
    def native_size(self) -> int:
        """Pixels per patch side at the native resolution."""
        return int(PATCH_EXTENT_M // self.resolution_m)


def _s2(name, res, mean, std):
    return Band(name, "s2", res, "uint16", 0, mean, std, 0.0, 20000.0)


def _s1(name, mean, std):
    return Band(name, "s1", 10, "float32", None, mean, std, -60.0, 40.0)


# Canonical order: the order of the official band list (B8A after B08; no B10 in L2A).
S2_BANDS: tuple[Band, ...] = (
    _s2("B01", 60, 361.08, 575.07),
    _s2("B02", 10, 438.37, 607.03),
    _s2("B03", 10, 614.06, 603.30),
    _s2("B04", 10, 588.41, 684.57),
    _s2("B05", 20, 942.84, 738.43),
    _s2("B06", 20, 1769.93, 1100.46),
    _s2("B07", 20, 2049.55, 1275.81),
    _s2("B08", 10, 2193.29, 1369.37),
    _s2("B8A", 20, 2235.56, 1356.54),
    _s2("B09", 60, 2241.46, 1316.39),
    _s2("B11", 20, 1568.23, 1070.16),
    _s2("B12", 20, 997.73, 813.53),
)

# VV before VH: never sort channel names (alphabetical order puts VH first).
S1_BANDS: tuple[Band, ...] = (
    _s1("VV", -12.644, 5.133),
    _s1("VH", -19.353, 5.591),
)

ALL_BANDS: tuple[Band, ...] = S2_BANDS + S1_BANDS
S2_NAMES: tuple[str, ...] = tuple(b.name for b in S2_BANDS)
S1_NAMES: tuple[str, ...] = tuple(b.name for b in S1_BANDS)
ALL_NAMES: tuple[str, ...] = S2_NAMES + S1_NAMES
BAND_BY_NAME: dict[str, Band] = {b.name: b for b in ALL_BANDS}
# All 13 bands of a Sentinel-2 product, in the product's own order (the bandId 0..12 of its
# metadata): reBEN's 12 plus B10 (cirrus, 60 m), which L1C products carry and L2A drop.
S2_PRODUCT_NAMES: tuple[str, ...] = S2_NAMES[:10] + ("B10",) + S2_NAMES[10:]
S2_PRODUCT_RESOLUTION_M: dict[str, int] = {**{n: BAND_BY_NAME[n].resolution_m for n in S2_NAMES}, "B10": 60}

# Reference map layer.
REFERENCE_MAP_DTYPE = "uint16"
REFERENCE_MAP_NODATA = 0

# Number of histogram bins per band (fixed-size accumulators).
HIST_BINS = 4000

MODALITIES: dict[str, tuple[str, ...]] = {"s2": S2_NAMES, "s1": S1_NAMES}


def channels_for(modalities: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Channel names, in model input order, for a modality selection like "s2,s1"."""
    if isinstance(modalities, str):
        modalities = [m.strip() for m in modalities.split(",") if m.strip()]
    unknown = [m for m in modalities if m not in MODALITIES]
    if unknown or not modalities:
        raise ValueError(f"unknown modalities {unknown or modalities!r}; choose from 's2,s1', 's2' or 's1'")
    out: list[str] = []
    for m in ("s2", "s1"):  # fixed order whatever order the user gave
        if m in modalities:
            out.extend(MODALITIES[m])
    return tuple(out)
