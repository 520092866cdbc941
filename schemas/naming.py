"""reBEN object naming: patch ids, S1 names, and the 15 object paths of a patch.

Malformed names raise ``ValueError`` with a message saying what is wrong; nothing is
guessed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from bigearthnet_beam.schemas.bands import S1_NAMES, S2_NAMES

S2_DIR = "BigEarthNet-S2"
S1_DIR = "BigEarthNet-S1"
MAP_DIR = "Reference_Maps"
REFERENCE_MAP_KEY = "reference_map"

PATCH_ID_RE = re.compile(r"^S2[AB]_MSIL2A_\d{8}T\d{6}_N9999_R\d{3}_T(\d{2})([A-Z]{3})_(\d{2})_(\d{2})\Z", re.ASCII)
S1_NAME_RE = re.compile(r"^S1[AB]_IW_GRDH_1SDV_\d{8}T\d{6}_(\d{2})([A-Z]{3})_(\d{1,2})_(\d{1,2})\Z", re.ASCII)

# Object keys of a patch, in canonical order: 12 S2 bands, VV, VH, reference map.
OBJECT_KEYS: tuple[str, ...] = S2_NAMES + S1_NAMES + (REFERENCE_MAP_KEY,)


@dataclass(frozen=True)
class PatchName:
    """The parts of a reBEN S2 patch id."""

    patch_id: str
    utm_zone: int
    latitude_band: str  # first letter of the MGRS square, e.g. "U" of "UUP"
    tile: str  # e.g. "T33UUP"
    x: int  # column of the 1,200 m cell
    y: int  # row from the top

    @property
    def s2_tile_dir(self) -> str:
        """<S2 tile>: the patch id minus its last two ``_`` fields."""
        return self.patch_id.rsplit("_", 2)[0]

    @property
    def epsg(self) -> int:
        """EPSG code of the patch's UTM zone (northern hemisphere)."""
        return 32600 + self.utm_zone


def parse_patch_id(patch_id) -> PatchName:
    """Parse a patch id into a ``PatchName``; ValueError when malformed."""
    if not isinstance(patch_id, str):
        raise ValueError(f"patch_id must be a string, got {type(patch_id).__name__}")
    m = PATCH_ID_RE.match(patch_id)
    if not m:
        raise ValueError(
            f"malformed patch_id {patch_id[:80]!r}: expected "
            "S2[AB]_MSIL2A_<YYYYMMDD>T<hhmmss>_N9999_R<nnn>_T<zz><LLL>_<xx>_<yy>, "
            "e.g. S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_75_43"
        )
    zone, square, x, y = m.groups()
    return PatchName(patch_id, int(zone), square[0], f"T{zone}{square}", int(x), int(y))


@dataclass(frozen=True)
class S1Name:
    """The parts of a reBEN S1 patch name."""

    s1_name: str
    utm_zone: int
    tile: str  # without the leading T, e.g. "33UUP"
    x: int
    y: int

    @property
    def scene_dir(self) -> str:
        """<S1 scene>: the name minus its last three fields."""
        return self.s1_name.rsplit("_", 3)[0]


def parse_s1_name(s1_name) -> S1Name:
    """Parse an S1 patch name into an ``S1Name``; ValueError when malformed."""
    if not isinstance(s1_name, str):
        raise ValueError(f"s1_name must be a string, got {type(s1_name).__name__}")
    m = S1_NAME_RE.match(s1_name)
    if not m:
        raise ValueError(
            f"malformed s1_name {s1_name[:80]!r}: expected "
            "S1[AB]_IW_GRDH_1SDV_<YYYYMMDD>T<hhmmss>_<zz><LLL>_<x>_<y>, "
            "e.g. S1A_IW_GRDH_1SDV_20170613T165043_33UUP_70_48"
        )
    zone, square, x, y = m.groups()
    return S1Name(s1_name, int(zone), f"{zone}{square}", int(x), int(y))


def join(root: str, *parts: str) -> str:
    """Join a local path or URL root with relative parts using '/'."""
    root = str(root)
    return "/".join([root.rstrip("/")] + [p.strip("/") for p in parts])


def relative_paths(patch_id: str, s1_name: str) -> dict[str, str]:
    """The 15 object paths of a patch relative to the dataset root, keyed by OBJECT_KEYS."""
    p = parse_patch_id(patch_id)
    s = parse_s1_name(s1_name)
    s2_dir = f"{S2_DIR}/{p.s2_tile_dir}/{patch_id}"
    s1_dir = f"{S1_DIR}/{s.scene_dir}/{s1_name}"
    out = {band: f"{s2_dir}/{patch_id}_{band}.tif" for band in S2_NAMES}
    out.update({band: f"{s1_dir}/{s1_name}_{band}.tif" for band in S1_NAMES})
    out[REFERENCE_MAP_KEY] = f"{MAP_DIR}/{p.s2_tile_dir}/{patch_id}/{patch_id}_reference_map.tif"
    return out


def object_urls(root: str, patch_id: str, s1_name: str) -> dict[str, str]:
    """The 15 object URLs (or local paths) of a patch under ``root``."""
    return {k: join(root, v) for k, v in relative_paths(patch_id, s1_name).items()}


def patch_dirs(patch_id: str, s1_name: str) -> tuple[str, str, str]:
    """Relative folders holding the S2 bands, the S1 bands and the reference map."""
    rel = relative_paths(patch_id, s1_name)
    return tuple(rel[k].rsplit("/", 1)[0] for k in (S2_NAMES[0], S1_NAMES[0], REFERENCE_MAP_KEY))
