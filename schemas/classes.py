"""The 19-class nomenclature of BigEarthNet v2.0 and its mapping from CLC level-3 codes.

The canonical class order is NOT alphabetical. The CLC mapping, the no-class codes and
the colours are read from the vendored official ``clc_metadata.json`` (a copy of the
reBEN release file) and checked against the canonical order at import time.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

import numpy as np

IGNORE_INDEX = 255  # label-map value for pixels without one of the 19 classes

CLASS_NAMES: tuple[str, ...] = (
    "Urban fabric",
    "Industrial or commercial units",
    "Arable land",
    "Permanent crops",
    "Pastures",
    "Complex cultivation patterns",
    "Land principally occupied by agriculture, with significant areas of natural vegetation",
    "Agro-forestry areas",
    "Broad-leaved forest",
    "Coniferous forest",
    "Mixed forest",
    "Natural grassland and sparsely vegetated areas",
    "Moors, heathland and sclerophyllous vegetation",
    "Transitional woodland, shrub",
    "Beaches, dunes, sands",
    "Inland wetlands",
    "Coastal wetlands",
    "Inland waters",
    "Marine waters",
)
NUM_CLASSES = len(CLASS_NAMES)
CLASS_INDEX: dict[str, int] = {n: i for i, n in enumerate(CLASS_NAMES)}
UNLABELED = "UNLABELED"


@lru_cache(maxsize=None)
def clc_table() -> tuple[dict, ...]:
    """The official CLC table: dicts with code (int), name_clc, name_19, color (RGBA)."""
    text = resources.files(__package__).joinpath("data/clc_metadata.json").read_text("utf-8")
    rows = json.loads(text)["clc_data"]
    out = []
    for r in rows:
        name_19 = r["name_19"]
        if name_19 != UNLABELED and name_19 not in CLASS_INDEX:
            raise ValueError(f"clc_metadata.json names an unknown class {name_19!r}")
        out.append(
            {
                "code": int(r["code"]),
                "name_clc": r["name_clc"],
                "name_19": name_19,
                "color": tuple(int(c) for c in r["color"]),
            }
        )
    return tuple(out)


@lru_cache(maxsize=None)
def clc_to_class() -> dict[int, int]:
    """CLC code -> class index, for codes that belong to one of the 19 classes."""
    return {r["code"]: CLASS_INDEX[r["name_19"]] for r in clc_table() if r["name_19"] != UNLABELED}


@lru_cache(maxsize=None)
def no_class_codes() -> frozenset[int]:
    """CLC codes (plus 0, the nodata value) that map to no class: ignored in pixel losses."""
    return frozenset({0} | {r["code"] for r in clc_table() if r["name_19"] == UNLABELED})


@lru_cache(maxsize=None)
def known_codes() -> frozenset[int]:
    """Every value a valid reference map may hold."""
    return frozenset(set(clc_to_class()) | set(no_class_codes()))


@lru_cache(maxsize=None)
def lookup_table() -> np.ndarray:
    """uint8[65536]: CLC code -> class index, IGNORE_INDEX for no-class codes.

    Codes outside the CLC table also map to IGNORE_INDEX here; callers that must reject
    unknown codes check them with ``unknown_codes``.
    """
    lut = np.full(65536, IGNORE_INDEX, dtype=np.uint8)
    for code, idx in clc_to_class().items():
        lut[code] = idx
    lut.setflags(write=False)
    return lut


@lru_cache(maxsize=None)
def _known_mask() -> np.ndarray:
    mask = np.zeros(65536, dtype=bool)
    mask[list(known_codes())] = True
    mask.setflags(write=False)
    return mask


def map_reference(codes: np.ndarray) -> np.ndarray:
    """Map a uint16 CLC code raster to a uint8 class-index raster (255 = ignore)."""
    return lookup_table()[codes]


def unknown_codes(codes: np.ndarray) -> list[int]:
    """Sorted distinct values of a reference map that are not in the CLC table."""
    bad = ~_known_mask()[codes]
    return sorted(int(c) for c in np.unique(codes[bad])) if bad.any() else []


def class_colors() -> list[tuple[int, int, int]]:
    """RGB colour per class: the colour of the class's first CLC code in the table."""
    colors: dict[int, tuple[int, int, int]] = {}
    for r in clc_table():
        if r["name_19"] != UNLABELED:
            colors.setdefault(CLASS_INDEX[r["name_19"]], tuple(r["color"][:3]))
    return [colors[i] for i in range(NUM_CLASSES)]


def multi_hot(labels) -> np.ndarray:
    """int64[19] multi-hot vector in canonical order; raises on an unknown label."""
    vec = np.zeros(NUM_CLASSES, dtype=np.int64)
    for name in labels:
        try:
            vec[CLASS_INDEX[name]] = 1
        except KeyError:
            raise ValueError(
                f"label {name!r} is not one of the 19 BigEarthNet classes; "
                "use the names of the official metadata (schemas.classes.CLASS_NAMES)"
            ) from None
    return vec
