"""Reading whole Sentinel-2 tiles for inference, one window at a time (no TensorFlow here).

Accepted inputs (``open_tile``):

- a ``.SAFE`` product folder (or any folder holding ``GRANULE/``): Level-2A with
  ``IMG_DATA/R10m|R20m|R60m/T.._<date>_<BAND>_<res>m.jp2`` (each band is read from the
  finest resolution folder that holds it), or Level-1C with flat ``IMG_DATA/T.._<date>_<BAND>.jp2``
  (accepted with a domain-shift warning: reBEN is L2A). ``.tif`` instead of ``.jp2`` works too;
- a multi-band GeoTIFF on a 10 m grid whose band descriptions name the bands
  (``B02``, ``B2``, ``b8a``, ``VV`` …, case-insensitive), DN = reflectance × 10,000;
- optionally a co-registered Sentinel-1 raster (``s1=``), float32 dB with bands described
  ``VV`` / ``VH`` (or undescribed and in that order), on exactly the tile's 10 m grid.

Values come back in the raw units of the reBEN patches before normalisation: S2 as DN =
reflectance × 10,000 (the ``BOA_ADD_OFFSET`` / ``RADIO_ADD_OFFSET`` of processing baseline
≥ 04.00, read from ``MTD_MSIL2A.xml`` / ``MTD_MSIL1C.xml``, is added back, so an N0510 product
reads like a reBEN patch), S1 in dB. 20 m and 60 m bands are resampled to the 10 m grid with
the kernel ``benbeam convert`` uses (``transforms.resample``: GDAL-style bilinear by default,
taps outside the raster dropped and the rest renormalised) over the WHOLE band, so a window
read equals resampling the whole band and cropping; only the window (plus the kernel's reach
on the coarse grid) is read from disk.
"""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass

import numpy as np

from bigearthnet_beam.schemas.bands import ALL_NAMES, BAND_BY_NAME, PIXEL_SIZE_M, S1_NAMES, S2_NAMES, S2_PRODUCT_NAMES
from bigearthnet_beam.schemas.tiles import DN_ADD_OFFSET, MTD_FILES, OFFSET_BASELINE, SIDECAR_SUFFIXES
from bigearthnet_beam.transforms.resample import RESAMPLING_METHODS, resample_window, source_span

TILE_EXTENSIONS = (".tif", ".tiff")
BAND_EXTENSIONS = (".jp2", ".tif", ".tiff")
L1C_ONLY = ("B10",)  # cirrus band: in L1C, not in L2A (nor in reBEN)
_PHYSICAL = S2_PRODUCT_NAMES  # bandId 0..12 of a product's metadata
L1C_WARNING = (
    "{path}: a Level-1C product (top-of-atmosphere reflectance). The model was trained on "
    "reBEN, which is Level-2A (bottom-of-atmosphere, Sen2Cor): expect a domain shift and "
    "lower accuracy; use the L2A product of the same acquisition where you can"
)


# --------------------------------------------------------------------------------------
# Band names, metadata
# --------------------------------------------------------------------------------------


def normalise_band_name(text: str | None) -> str | None:
    """'B2', 'b02', 'B8a', ' vv ' -> 'B02', 'B02', 'B8A', 'VV'; anything else -> None."""
    if not text:
        return None
    t = text.strip().upper()
    if t in ("VV", "VH"):
        return t
    m = re.fullmatch(r"B0?(\d{1,2}|8A)", t, re.ASCII)
    if not m:
        return None
    g = m.group(1)
    return "B8A" if g == "8A" else f"B{int(g):02d}"


def _baseline_from_name(name: str) -> int | None:
    m = re.search(r"_N(\d{4})_", name, re.ASCII)
    return int(m.group(1)) if m else None


def read_offsets(safe_dir: str) -> tuple[dict[str, float], list[str]]:
    """({band: additive offset to DN}, warnings) from MTD_MSIL2A.xml / MTD_MSIL1C.xml.

    Baseline >= 04.00 products list BOA_ADD_OFFSET (L2A) or RADIO_ADD_OFFSET (L1C) = -1000 per
    band: reflectance = (DN + offset) / 10,000. Without a metadata file the baseline in the
    folder name decides (N0400 and later: -1000, with a warning).
    """
    warnings: list[str] = []
    mtd = [f for f in MTD_FILES if os.path.isfile(os.path.join(safe_dir, f))]
    if not mtd:
        base = _baseline_from_name(os.path.basename(os.path.normpath(safe_dir)))
        off = float(DN_ADD_OFFSET) if base is not None and OFFSET_BASELINE <= base < 9999 else 0.0
        warnings.append(
            f"{safe_dir}: no MTD_MSIL2A.xml / MTD_MSIL1C.xml; assuming an additive DN offset of "
            f"{off:g} from the processing baseline in the name"
        )
        return {b: off for b in _PHYSICAL}, warnings
    root = ET.parse(os.path.join(safe_dir, mtd[0])).getroot()
    physical: dict[str, str] = {}
    for el in root.iter():
        if el.tag.split("}")[-1] == "Spectral_Information" and el.get("bandId") is not None:
            name = normalise_band_name(el.get("physicalBand"))
            if name:
                physical[el.get("bandId")] = name
    offsets = {b: 0.0 for b in _PHYSICAL}
    for el in root.iter():
        if el.tag.split("}")[-1] in ("BOA_ADD_OFFSET", "RADIO_ADD_OFFSET") and el.get("band_id") is not None:
            bid = el.get("band_id")
            name = physical.get(bid) or (_PHYSICAL[int(bid)] if bid.isdigit() and int(bid) < len(_PHYSICAL) else None)
            if name:
                offsets[name] = float(el.text)
    return offsets, warnings


# --------------------------------------------------------------------------------------
# TileSource
# --------------------------------------------------------------------------------------


@dataclass
class _Band:
    name: str
    path: str
    index: int  # 1-based band index in the file
    factor: int  # native pixel size / 10 m
    offset: float  # added to the stored value (S2 DN offset)
    modality: str  # "s2" or "s1"


def _is_safe(path: str) -> bool:
    return os.path.isdir(path) and (
        path.rstrip("/").upper().endswith(".SAFE") or os.path.isdir(os.path.join(path, "GRANULE"))
    )


def find_tiles(input_dir: str) -> list[str]:
    """Tiles directly in ``input_dir``, sorted: .SAFE folders (or folders holding GRANULE/) and
    .tif/.tiff files, except sidecars named ``*_s1.tif`` / ``*_truth.tif``. A path that is itself
    a tile gives [path]."""
    if _is_safe(input_dir) or (os.path.isfile(input_dir) and input_dir.lower().endswith(TILE_EXTENSIONS)):
        return [input_dir]
    if not os.path.isdir(input_dir):
        raise ValueError(f"{input_dir}: not a folder, a .SAFE product or a GeoTIFF")
    out = []
    for entry in sorted(os.listdir(input_dir)):
        p = os.path.join(input_dir, entry)
        if _is_safe(p) or (os.path.isfile(p) and is_tile_file(entry)):
            out.append(p)
    return out


def is_tile_file(name: str) -> bool:
    """Whether a file name is a GeoTIFF tile: ``.tif`` / ``.tiff``, not a ``*_s1`` / ``*_truth`` sidecar."""
    return name.lower().endswith(TILE_EXTENSIONS) and not os.path.splitext(name)[0].lower().endswith(SIDECAR_SUFFIXES)


class TileSource:
    """One tile opened for windowed reads on its 10 m grid (see ``open_tile``)."""

    def __init__(
        self,
        name: str,
        bands: list[_Band],
        channels: tuple[str, ...],
        warnings: list[str],
        resampling: str = "bilinear",
    ):
        import rasterio

        self.name = name
        self.channels = channels
        self.warnings = warnings
        self.resampling = resampling
        self._bands = bands
        self._ds: dict[str, object] = {}
        try:
            with rasterio.Env(GDAL_PAM_ENABLED="NO"):  # no .aux.xml written next to a product
                for b in bands:
                    if b.path not in self._ds:
                        self._ds[b.path] = rasterio.open(b.path)
            self._check_grid()
        except Exception:
            self.close()
            raise

    def _check_grid(self) -> None:
        ref_band = next((b for b in self._bands if b.modality == "s2"), self._bands[0])
        ref = self._ds[ref_band.path]
        f = ref_band.factor
        t = ref.transform
        from affine import Affine

        self.crs = ref.crs
        self.transform = Affine(t.a / f, t.b, t.c, t.d, t.e / f, t.f)
        self.width, self.height = ref.width * f, ref.height * f
        for b in self._bands:
            ds = self._ds[b.path]
            bt = ds.transform
            same = (
                ds.crs == self.crs
                and ds.width * b.factor == self.width
                and ds.height * b.factor == self.height
                and abs(bt.c - t.c) < 1e-6
                and abs(bt.f - t.f) < 1e-6
                and bt.b == 0
                and bt.d == 0
            )
            if not same:
                what = "the Sentinel-1 raster" if b.modality == "s1" else b.name
                raise ValueError(
                    f"{b.path}: {what} is not on the tile's grid ({self.crs}, {self.width}x{self.height} px of "
                    f"10 m from ({t.c}, {t.f})); it has {ds.crs}, {ds.width}x{ds.height} px of {bt.a:g} m from "
                    f"({bt.c}, {bt.f}). Reproject/crop it onto the tile's 10 m grid first"
                )

    def read(self, window) -> tuple[np.ndarray, np.ndarray]:
        """(pixels float32 (h, w, C) in reBEN raw units — S2 DN, S1 dB — on the 10 m grid;
        valid bool (h, w): False where a requested S2 band is nodata (0) or S1 is not finite).
        Not thread-safe (GDAL datasets): one TileSource per thread."""
        import rasterio

        r0, c0 = int(window.row_off), int(window.col_off)
        h, w = int(window.height), int(window.width)
        if (
            r0 != window.row_off
            or c0 != window.col_off
            or h != window.height
            or w != window.width
            or r0 < 0
            or c0 < 0
            or h <= 0
            or w <= 0
            or r0 + h > self.height
            or c0 + w > self.width
        ):
            raise ValueError(
                f"window {window} is not an integer window inside the tile ({self.width}x{self.height} px)"
            )
        with rasterio.Env(GDAL_PAM_ENABLED="NO"):
            return self._read(r0, c0, h, w)

    def _read(self, r0: int, c0: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
        from rasterio.windows import Window

        pixels = np.empty((h, w, len(self._bands)), dtype=np.float32)
        valid = np.ones((h, w), dtype=bool)
        for ci, b in enumerate(self._bands):
            ds = self._ds[b.path]
            f = b.factor
            if f == 1:
                raw = ds.read(b.index, window=Window(c0, r0, w, h))
                vals = raw.astype(np.float32)
                bad = (raw == 0) if b.modality == "s2" else ~np.isfinite(vals)
            else:
                n_rows, n_cols = ds.height, ds.width
                rlo, rhi = source_span(n_rows, f, self.resampling, r0, r0 + h)
                clo, chi = source_span(n_cols, f, self.resampling, c0, c0 + w)
                raw = ds.read(b.index, window=Window(clo, rlo, chi - clo, rhi - rlo))
                args = ((rlo, clo), (n_rows, n_cols), f, (r0, c0, h, w), self.resampling)
                vals = resample_window(raw, *args)
                nodata = (raw == 0) if b.modality == "s2" else ~np.isfinite(raw)
                bad = resample_window(nodata.astype(np.float32), *args) > 0 if nodata.any() else np.zeros((h, w), bool)
                if b.modality == "s1":
                    vals = np.where(np.isfinite(vals), vals, 0)
            if b.modality == "s1":
                vals = np.where(bad, np.float32(0), vals)  # a NaN would spread through the convolutions
            elif b.offset:
                vals = vals + np.float32(b.offset)
            pixels[..., ci] = vals
            valid &= ~bad
        return pixels, valid

    def close(self) -> None:
        """Close the tile's raster files."""
        import rasterio

        with rasterio.Env(GDAL_PAM_ENABLED="NO"):
            for ds in self._ds.values():
                ds.close()
        self._ds = {}

    def __enter__(self) -> "TileSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TileSource({self.name!r}, {self.width}x{self.height}, channels={self.channels})"


def _check_channels(channels) -> tuple[str, ...]:
    ch = tuple(channels)
    unknown = [c for c in ch if c not in ALL_NAMES]
    if unknown:
        raise ValueError(f"unknown channel names {unknown}; channels come from schemas.bands: {ALL_NAMES}")
    if len(set(ch)) != len(ch):
        raise ValueError(f"duplicate channel names in {ch}")
    if not ch:
        raise ValueError("no channels requested")
    return ch


def _factor(path: str, res: float) -> int:
    f = int(round(res / PIXEL_SIZE_M))
    if f < 1 or abs(f * PIXEL_SIZE_M - res) > 1e-6:
        raise ValueError(f"{path}: pixel size {res:g} m is not a multiple of 10 m")
    return f


def _safe_bands(path: str, wanted: list[str]) -> tuple[str, dict[str, tuple[str, int]], list[str], bool]:
    """(name, {band: (file, native-res factor)}, warnings, is_l1c) of a SAFE folder; only files of
    ``wanted`` bands are looked up."""
    granules = (
        sorted(d for d in os.listdir(os.path.join(path, "GRANULE")) if os.path.isdir(os.path.join(path, "GRANULE", d)))
        if os.path.isdir(os.path.join(path, "GRANULE"))
        else []
    )
    if len(granules) != 1:
        raise ValueError(f"{path}: expected one granule folder in GRANULE/, found {len(granules)}")
    img = os.path.join(path, "GRANULE", granules[0], "IMG_DATA")
    if not os.path.isdir(img):
        raise ValueError(f"{path}: no GRANULE/{granules[0]}/IMG_DATA folder")
    base = os.path.basename(os.path.normpath(path))
    l2a = os.path.isdir(os.path.join(img, "R10m")) or os.path.isdir(os.path.join(img, "R20m"))
    is_l1c = not l2a
    warnings: list[str] = []
    found: dict[str, tuple[str, int]] = {}
    name = None
    if l2a:
        listing = {
            r: sorted(os.listdir(os.path.join(img, f"R{r}m"))) if os.path.isdir(os.path.join(img, f"R{r}m")) else []
            for r in (10, 20, 60)
        }
        for band in wanted:
            for r in (10, 20, 60):  # finest resolution that holds the band
                hit = [
                    f for f in listing[r] if re.search(rf"_{band}_{r}m\.", f) and f.lower().endswith(BAND_EXTENSIONS)
                ]
                if hit:
                    found[band] = (os.path.join(img, f"R{r}m", hit[0]), r // 10)
                    if r > BAND_BY_NAME[band].resolution_m:
                        warnings.append(
                            f"{path}: {band} only at {r} m (native {BAND_BY_NAME[band].resolution_m} m); "
                            "upsampled from there"
                        )
                    break
    else:
        listing = {0: sorted(os.listdir(img))}
        for band in wanted:
            hit = [f for f in listing[0] if re.search(rf"_{band}\.", f) and f.lower().endswith(BAND_EXTENSIONS)]
            if hit:
                found[band] = (os.path.join(img, hit[0]), 0)  # factor from the file's pixel size
        warnings.append(L1C_WARNING.format(path=path))
    for f in (p for p, _ in found.values()):
        m = re.match(r"(T\d{2}[A-Z]{3}_\d{8}T\d{6})_", os.path.basename(f), re.ASCII)
        if m:
            name = m.group(1)
            break
    if name is None:
        parts = base.split("_")
        name = f"{parts[5]}_{parts[2]}" if len(parts) >= 7 else os.path.splitext(base)[0]
    missing = [b for b in wanted if b not in found]
    if missing:
        where = "IMG_DATA/R10m|R20m|R60m" if l2a else "IMG_DATA"
        raise ValueError(
            f"{path}: the tile lacks bands {missing} that the model needs (looked in {where} for "
            f"*_<BAND>{'_<res>m' if l2a else ''}.jp2/.tif)"
        )
    return name, found, warnings, is_l1c


def _describe(ds) -> dict[str, int]:
    out: dict[str, int] = {}
    for i, d in enumerate(ds.descriptions, start=1):
        n = normalise_band_name(d)
        if n is None:
            continue
        if n in out:
            raise ValueError(f"{ds.name}: bands {out[n]} and {i} are both described as {n}")
        out[n] = i
    return out


def open_tile(path: str, channels, *, s1: str | None = None, resampling: str = "bilinear") -> TileSource:
    """Open a tile (.SAFE folder or multi-band GeoTIFF) for reading ``channels`` (model order,
    names of schemas.bands) on its 10 m grid; ``s1``: a co-registered S1 raster (VV, VH dB).
    ``resampling``: that of ``benbeam convert`` (default bilinear). Raises ValueError with the
    file and the fix for missing bands, S1 needed but not given, or grids that differ."""
    import rasterio

    ch = _check_channels(channels)
    if resampling not in RESAMPLING_METHODS:
        raise ValueError(f"resampling must be one of {RESAMPLING_METHODS}, got {resampling!r}")
    s2_wanted = [c for c in ch if c in S2_NAMES]
    s1_wanted = [c for c in ch if c in S1_NAMES]
    bands: dict[str, _Band] = {}
    warnings: list[str] = []
    if _is_safe(path):
        name, found, warns, _ = _safe_bands(path, s2_wanted)
        warnings += warns
        offsets, warns = read_offsets(path) if s2_wanted else ({}, [])
        warnings += warns
        with rasterio.Env(GDAL_PAM_ENABLED="NO"):
            for band, (f, factor) in found.items():
                if factor == 0:
                    with rasterio.open(f) as ds:
                        factor = _factor(f, ds.transform.a)
                bands[band] = _Band(band, f, 1, factor, offsets.get(band, 0.0), "s2")
        tif_bands: dict[str, int] = {}
    elif os.path.isfile(path):
        name = os.path.splitext(os.path.basename(path))[0]
        with rasterio.Env(GDAL_PAM_ENABLED="NO"):
            try:
                ds = rasterio.open(path)
            except rasterio.errors.RasterioIOError as e:
                raise ValueError(f"{path}: not a readable raster ({e})") from None
            with ds:
                tif_bands = _describe(ds)
                factor = _factor(path, ds.transform.a)
                offset = float(ds.tags().get("BOA_ADD_OFFSET", 0) or 0)
        if factor != 1:
            raise ValueError(
                f"{path}: a multi-band GeoTIFF tile must be on a 10 m grid (found {factor * 10} m); "
                "resample it to 10 m first"
            )
        missing = [b for b in s2_wanted if b not in tif_bands]
        if missing:
            have = sorted(tif_bands) or "none"
            raise ValueError(
                f"{path}: the tile lacks bands {missing} that the model needs (band descriptions "
                f"found: {have}; name the bands B01…B12 in the GeoTIFF's band descriptions)"
            )
        for b in s2_wanted:
            bands[b] = _Band(b, path, tif_bands[b], 1, offset, "s2")
    else:
        raise ValueError(f"{path}: not a .SAFE folder, a folder holding GRANULE/, or a GeoTIFF")

    if s1_wanted:
        if s1 is not None:
            with rasterio.Env(GDAL_PAM_ENABLED="NO"), rasterio.open(s1) as ds:
                s1_bands = _describe(ds)
                if not any(k in s1_bands for k in S1_NAMES) and ds.count == 2:
                    s1_bands = {"VV": 1, "VH": 2}  # undescribed: VV then VH
            missing = [b for b in s1_wanted if b not in s1_bands]
            if missing:
                raise ValueError(
                    f"{s1}: the Sentinel-1 raster lacks {missing} (describe its bands VV and VH, "
                    "or give exactly two bands in the order VV, VH)"
                )
            for b in s1_wanted:
                bands[b] = _Band(b, s1, s1_bands[b], 1, 0.0, "s1")
        elif all(b in tif_bands for b in s1_wanted):
            for b in s1_wanted:
                bands[b] = _Band(b, path, tif_bands[b], 1, 0.0, "s1")
        else:
            raise ValueError(
                f"{path}: the model was trained with Sentinel-1 (channels {list(s1_wanted)}); pass "
                "the co-registered S1 raster (float32 dB, bands VV, VH on the tile's 10 m grid) "
                "with --s1 RASTER"
            )
    return TileSource(name, [bands[c] for c in ch], ch, warnings, resampling)
