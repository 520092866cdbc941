"""``benbeam synth-tile``: synthetic whole Sentinel-2 tiles, for ``benbeam predict``.

A tile's content is a class map of warped-Voronoi regions (jittered seeds every ~1 km, borders
displaced by smooth random fields, neighbouring seeds often sharing a class so regions range
from tens to hundreds of pixels), a few straight no-class roads and some no-class regions,
rendered with the spectral and backscatter signatures of the synthetic patches
(``synth.signatures``: same noise and texture constants, 20 m / 60 m bands as block means of
the 10 m signal, S1 in dB), so a U-Net trained on ``benbeam synth`` patches maps a synthetic
tile meaningfully. Everything is generated and written in strips of ``STRIP`` rows; only the
strip (and small per-tile lattices) are ever in memory, so a full 10,980 px tile works
(measured: 3.4 min, 0.7 GB peak RSS; most of it is GDAL's JPEG 2000 encoder, which holds the
one band it is encoding, about 250 MB for a 10 m band).

Layouts:

- ``safe``: the real product folder, ``S2A_MSIL2A_<date>_N0510_R022_T<tile>_<gen>.SAFE/GRANULE/
  L2A_T<tile>_A047373_<t>/IMG_DATA/R10m|R20m|R60m/T<tile>_<date>_<BAND>_<res>m.jp2`` (L1C:
  flat ``IMG_DATA/T<tile>_<date>_<BAND>.jp2``, B10 included) plus ``MTD_MSIL2A.xml`` /
  ``MTD_MSIL1C.xml`` and ``GRANULE/*/MTD_TL.xml``. As in real products of processing
  baseline >= 04.00, DN = reflectance × 10,000 + 1000 (``BOA_ADD_OFFSET`` / ``RADIO_ADD_OFFSET``
  = -1000 in the metadata); ``trainer.tiles`` removes it again. JPEG 2000 (lossless, through
  GDAL's JP2OpenJPEG CreateCopy from a striped temporary GeoTIFF) where GDAL can write it,
  else GeoTIFF with the same names and a ``.tif`` extension.
- ``geotiff``: ``T<tile>_<date>.tif``, 12 uint16 bands B01…B12 (band descriptions) on the
  10 m grid in reBEN units (no offset); 20 m / 60 m bands are upsampled with the kernel
  ``benbeam convert`` uses (bilinear) and rounded.

Sidecars next to the product: ``T<tile>_<date>_truth.tif`` (uint8 class index, 255 = no
class) and with ``s1=True`` ``T<tile>_<date>_s1.tif`` (float32 VV, VH in dB). Output is
deterministic per (seed, tile).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from functools import lru_cache

import numpy as np

from bigearthnet_beam.schemas.bands import S2_NAMES, S2_PRODUCT_NAMES, S2_PRODUCT_RESOLUTION_M
from bigearthnet_beam.schemas.classes import IGNORE_INDEX, NUM_CLASSES
from bigearthnet_beam.schemas.tiles import DN_ADD_OFFSET, MTD_FILES, S1_SIDECAR, TRUTH_SIDECAR
from bigearthnet_beam.synth.generator import (
    _COL_SETS,
    _ROW_LETTERS,
    SQUARE_M,
    band_latitudes,
    meridian_northing,
    square_origin,
    tile_origin,
)
from bigearthnet_beam.synth.signatures import (
    NO_CLASS_ROW,
    S1_NOISE_DB,
    S1_TEXTURE_DB,
    S2_NOISE,
    S2_TEXTURE,
    block_mean,
    signatures,
)
from bigearthnet_beam.synth.tile_metadata import BASELINE, mtd_product, mtd_tile
from bigearthnet_beam.transforms.resample import resample_window

STRIP = 60  # rows generated and written at a time (a multiple of 6, the 60 m factor)
CELL = 96  # spacing of the Voronoi seeds, px
WARP = 128  # spacing of the border-warping lattice, px
WARP_AMP = 0.35 * CELL
TEX = 15  # spacing of the texture lattice, px (smooth_field's 8 cells over a 120 px patch)
DN_OFFSET = -DN_ADD_OFFSET  # baseline >= 04.00: DN = reflectance × 10,000 + 1000
L1C_NAMES = S2_PRODUCT_NAMES
_RES = S2_PRODUCT_RESOLUTION_M
# Rough prior of the 19 classes over a European tile (arable land and forests dominate).
_PRIOR = np.array([5, 2, 20, 4, 10, 6, 6, 1.5, 9, 9, 7, 3, 2, 5, 1, 2, 1, 3, 3.5], dtype=np.float64)
_PRIOR /= _PRIOR.sum()
# L1C (top of atmosphere): a crude atmosphere, path radiance per band (DN) and 6 % attenuation.
_PATH = np.array([950, 650, 420, 280, 240, 170, 150, 130, 120, 80, 30, 15], dtype=np.float32)
LAYOUTS = ("safe", "geotiff")
LEVELS = ("L2A", "L1C")


# --------------------------------------------------------------------------------------
# Content: a tile-wide layout, evaluated strip by strip
# --------------------------------------------------------------------------------------


def _seed_seq(seed: int, tile: str, part: int) -> np.random.SeedSequence:
    h = int.from_bytes(hashlib.blake2b(tile.encode(), digest_size=8).digest(), "big")
    return np.random.SeedSequence([seed, h, part])


def _lattice(lat: np.ndarray, spacing: float, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Bilinear interpolation of a lattice (node k at pixel k·spacing) at rows y × cols x."""
    fy, fx = y / spacing, x / spacing
    i0, j0 = np.floor(fy).astype(np.int64), np.floor(fx).astype(np.int64)
    ty, tx = (fy - i0).astype(np.float32)[:, None], (fx - j0).astype(np.float32)[None, :]
    a, b = lat[i0], lat[i0 + 1]
    top = a[:, j0] * (1 - tx) + a[:, j0 + 1] * tx
    bot = b[:, j0] * (1 - tx) + b[:, j0 + 1] * tx
    return top * (1 - ty) + bot * ty


class _Layout:
    """The tile-wide random structure: small arrays (a few hundred nodes a side at 10,980 px)."""

    def __init__(self, size: int, seed: int, tile: str):
        rng = np.random.default_rng(_seed_seq(seed, tile, 0))
        self.size = size
        n = size // CELL + 4
        ii, jj = np.mgrid[0:n, 0:n]
        jit = rng.uniform(0.15, 0.85, (2, n, n))
        self.sy = ((ii - 1 + jit[0]) * CELL).astype(np.float32)
        self.sx = ((jj - 1 + jit[1]) * CELL).astype(np.float32)
        sup = rng.choice(NUM_CLASSES, (n // 3 + 1, n // 3 + 1), p=_PRIOR)
        own = rng.choice(NUM_CLASSES, (n, n), p=_PRIOR)
        cls = np.where(rng.random((n, n)) < 0.6, sup[ii // 3, jj // 3], own)
        cls[rng.random((n, n)) < 0.03] = NO_CLASS_ROW
        self.cls = cls.astype(np.uint8)
        self.gain = (0.03 * rng.standard_normal((n, n))).astype(np.float32)  # per region, as render per patch
        self.warp = rng.standard_normal((2, size // WARP + 3, size // WARP + 3)).astype(np.float32)
        self.tex = rng.standard_normal((2, size // TEX + 3, size // TEX + 3)).astype(np.float32)
        k = 1 + size // 700
        self.hroads = rng.uniform(0, size, k)
        self.vroads = rng.uniform(0, size, k)

    def rows(self, r0: int, h: int) -> tuple[np.ndarray, np.ndarray]:
        """(signature rows uint8 (h, size): 0..18 classes, 19 no class; region gain float32)."""
        y = np.arange(r0, r0 + h, dtype=np.float64) + 0.5
        x = np.arange(self.size, dtype=np.float64) + 0.5
        wy = y[:, None] + WARP_AMP * _lattice(self.warp[0], WARP, y, x)
        wx = x[None, :] + WARP_AMP * _lattice(self.warp[1], WARP, y, x)
        n = self.cls.shape[0]
        ci = np.clip(np.floor(wy / CELL).astype(np.int64) + 1, 1, n - 2)
        cj = np.clip(np.floor(wx / CELL).astype(np.int64) + 1, 1, n - 2)
        best = np.full(wy.shape, np.inf, dtype=np.float32)
        bi, bj = ci.copy(), cj.copy()
        for di in (-1, 0, 1):
            for dj in (-1, 0, 1):
                i, j = ci + di, cj + dj
                d = (wy - self.sy[i, j]) ** 2 + (wx - self.sx[i, j]) ** 2
                closer = d < best
                best = np.where(closer, d, best)
                bi = np.where(closer, i, bi)
                bj = np.where(closer, j, bj)
        rows = self.cls[bi, bj]
        gain = self.gain[bi, bj]
        for r in self.hroads:
            rows[np.abs(y - r) < 1.0, :] = NO_CLASS_ROW
        for c in self.vroads:
            rows[:, np.abs(x - c) < 1.0] = NO_CLASS_ROW
        return rows, gain

    def texture(self, which: int, r0: int, h: int) -> np.ndarray:
        y = np.arange(r0, r0 + h, dtype=np.float64) + 0.5
        x = np.arange(self.size, dtype=np.float64) + 0.5
        return np.clip(_lattice(self.tex[which], TEX, y, x) / 2.5, -1.0, 1.0)


def _strips(size: int, seed: int, tile: str, level: str, nodata_border: int):
    """Yield (r0, truth uint8 (h, W), {band: float64 signal at native res}, s1 float32 (h, W, 2))."""
    lay = _Layout(size, seed, tile)
    s2sig, s1sig = signatures()
    names = L1C_NAMES if level == "L1C" else S2_NAMES
    for k, r0 in enumerate(range(0, size, STRIP)):
        h = min(STRIP, size - r0)
        rng = np.random.default_rng(_seed_seq(seed, tile, 1 + k))
        rows, gain = lay.rows(r0, h)
        g = 1.0 + S2_TEXTURE * lay.texture(0, r0, h) + gain
        sig10 = s2sig[rows] * g[..., None]
        sig10 *= 1.0 + S2_NOISE * rng.standard_normal(sig10.shape, dtype=np.float32)
        if level == "L1C":
            sig10 = sig10 * np.float32(0.94) + _PATH
        bands = {}
        for name in names:
            if name == "B10":  # cirrus: near-dark with noise
                v = 18.0 + 4.0 * rng.standard_normal((h, size), dtype=np.float32)
            else:
                v = sig10[..., S2_NAMES.index(name)]
            f = _RES[name] // 10
            bands[name] = v if f == 1 else block_mean(v, f)
        tex1 = S1_TEXTURE_DB * lay.texture(1, r0, h)
        s1 = s1sig[rows] + tex1[..., None] + S1_NOISE_DB * rng.standard_normal((h, size, 2), dtype=np.float32)
        truth = np.where(rows < NUM_CLASSES, rows, IGNORE_INDEX).astype(np.uint8)
        if nodata_border:
            truth[:, :nodata_border] = IGNORE_INDEX
        yield r0, truth, bands, s1.astype(np.float32)


def _dn(v: np.ndarray, offset: int, f: int, nodata_border: int) -> np.ndarray:
    """Signal -> stored uint16 DN (as render: rounded, >= 1) plus the baseline offset; 0 left of
    the swath (a coarse pixel is nodata when its footprint touches the border)."""
    out = np.clip(np.rint(v), 1, 65535 - offset).astype(np.uint16) + np.uint16(offset)
    if nodata_border:
        out[:, : -(-nodata_border // f)] = 0
    return out


# --------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------


@lru_cache(maxsize=None)
def jp2_writable() -> bool:
    """Whether this GDAL can write lossless JPEG 2000 (JP2OpenJPEG, CreateCopy)."""
    import rasterio
    from rasterio.drivers import raster_driver_extensions
    from rasterio.io import MemoryFile
    from rasterio.shutil import copy
    from rasterio.transform import from_origin

    if raster_driver_extensions().get("jp2") != "JP2OpenJPEG":
        return False
    a = (np.arange(36, dtype=np.uint16) * 997).reshape(6, 6)
    try:
        with rasterio.Env(GDAL_PAM_ENABLED="NO"), MemoryFile() as mem:
            with mem.open(
                driver="GTiff",
                width=6,
                height=6,
                count=1,
                dtype="uint16",
                crs="EPSG:32632",
                transform=from_origin(0, 60, 10, 10),
            ) as ds:
                ds.write(a, 1)
            copy(mem.name, "/vsimem/_jp2_probe.jp2", driver="JP2OpenJPEG", REVERSIBLE="YES", QUALITY="100")
            with rasterio.open("/vsimem/_jp2_probe.jp2") as ds:
                ok = bool((ds.read(1) == a).all())
            rasterio.shutil.delete("/vsimem/_jp2_probe.jp2")
            return ok
    except Exception:  # noqa: BLE001 - any failure means: write GeoTIFF instead
        return False


def _open_tif(path, width, height, count, dtype, crs, transform, **kw):
    import rasterio

    raw = width * height * count * np.dtype(dtype).itemsize
    profile = dict(
        driver="GTiff",
        width=width,
        height=height,
        count=count,
        dtype=dtype,
        crs=crs,
        transform=transform,
        BIGTIFF="YES" if raw > 2 * 2**30 else "IF_SAFER",
        **kw,
    )
    return rasterio.open(path, "w", **profile)


def _names(tile: str, date: str, level: str) -> dict:
    gen = date[:9] + "145433"
    lv = "MSIL2A" if level == "L2A" else "MSIL1C"
    safe = f"S2A_{lv}_{date}_N{BASELINE.replace('.', '')}_R022_T{tile}_{gen}.SAFE"
    granule = f"{level}_T{tile}_A047373_{date[:9]}101337"
    return {"safe": safe, "granule": granule, "stem": f"T{tile}_{date}", "gen": gen}


def check_args(size, layout, level, tile, date, nodata_border):
    """ValueError naming the first invalid argument of a tile to write."""
    if not isinstance(size, int) or size < 6 or size % 6:
        raise ValueError(f"size must be a positive multiple of 6 (the 60 m factor), got {size!r}")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
    if layout == "geotiff" and level != "L2A":
        raise ValueError("the geotiff layout holds L2A values (reBEN units); use --layout safe for L1C")
    import re

    if not re.fullmatch(r"\d{2}[C-X][A-Z]{2}", tile or "", re.ASCII) or not 1 <= int(tile[:2]) <= 60:
        raise ValueError(f"tile must be an MGRS tile id like 32TQR, got {tile!r}")
    if not re.fullmatch(r"\d{8}T\d{6}", date or "", re.ASCII):
        raise ValueError(f"date must look like 20240715T101031, got {date!r}")
    if not 0 <= nodata_border < size:
        raise ValueError(f"nodata_border must be in [0, size), got {nodata_border}")


def make_tile(
    out_dir: str,
    *,
    size: int = 1098,
    seed: int = 0,
    layout: str = "safe",
    level: str = "L2A",
    s1: bool = False,
    tile: str = "32TQR",
    date: str = "20240715T101031",
    nodata_border: int = 0,
) -> dict:
    """Write one synthetic tile into ``out_dir``; returns {path, s1, truth, crs, transform, name,
    level, layout, format}. ``size`` px of 10 m a side (a multiple of 6; 1098 = a tenth of a real
    tile); ``nodata_border`` columns on the left hold 0 in every S2 band."""
    import rasterio
    from rasterio.crs import CRS
    from rasterio.shutil import copy as gdal_copy
    from rasterio.transform import from_origin

    check_args(size, layout, level, tile, date, nodata_border)
    zone = int(tile[:2])
    epsg = 32600 + zone
    x0, y0 = tile_origin(zone, tile[2:])
    crs = CRS.from_epsg(epsg)
    transform = from_origin(x0, y0, 10.0, 10.0)
    os.makedirs(out_dir, exist_ok=True)
    nm = _names(tile, date, level)
    stem = nm["stem"]
    truth_path = os.path.join(out_dir, f"{stem}{TRUTH_SIDECAR}.tif")
    s1_path = os.path.join(out_dir, f"{stem}{S1_SIDECAR}.tif") if s1 else None
    use_jp2 = layout == "safe" and jp2_writable()
    ext = ".jp2" if use_jp2 else ".tif"

    tmp = tempfile.mkdtemp(prefix=".synth-tile-", dir=out_dir)
    outs: dict = {}
    try:
        # a bounded block cache: written strips go to disk, not into GDAL's default 5 % of RAM
        with rasterio.Env(GDAL_PAM_ENABLED="NO", GDAL_CACHEMAX=128):
            truth_ds = _open_tif(
                truth_path, size, size, 1, "uint8", crs, transform, nodata=IGNORE_INDEX, compress="deflate", predictor=2
            )
            outs["truth"] = truth_ds
            if s1:
                s1_ds = _open_tif(
                    s1_path, size, size, 2, "float32", crs, transform, compress="deflate", interleave="band"
                )
                s1_ds.descriptions = ("VV", "VH")
                s1_ds.units = ("dB", "dB")
                s1_ds.update_tags(SOURCE="benbeam synth-tile", UNIT="dB")
                outs["s1"] = s1_ds
            if layout == "safe":
                path = os.path.join(out_dir, nm["safe"])
                if os.path.exists(path):
                    shutil.rmtree(path)
                img = os.path.join(path, "GRANULE", nm["granule"], "IMG_DATA")
                names = L1C_NAMES if level == "L1C" else S2_NAMES
                rel: dict[str, str] = {}
                for b in names:
                    r = _RES[b]
                    rel[b] = os.path.join(f"R{r}m", f"{stem}_{b}_{r}m{ext}") if level == "L2A" else f"{stem}_{b}{ext}"
                    os.makedirs(os.path.dirname(os.path.join(img, rel[b])), exist_ok=True)
                    n = size * 10 // r
                    target = os.path.join(tmp, f"{b}.tif") if use_jp2 else os.path.join(img, rel[b])
                    outs[b] = _open_tif(
                        target,
                        n,
                        n,
                        1,
                        "uint16",
                        crs,
                        from_origin(x0, y0, r, r),
                        **({} if use_jp2 else dict(compress="deflate", predictor=2)),
                    )
                for r0, truth, bands, s1v in _strips(size, seed, tile, level, nodata_border):
                    _write_common(outs, r0, truth, s1v)
                    for b, v in bands.items():
                        f = _RES[b] // 10
                        outs[b].write(
                            _dn(v, DN_OFFSET, f, nodata_border),
                            1,
                            window=((r0 // f, r0 // f + v.shape[0]), (0, v.shape[1])),
                        )
            else:
                path = os.path.join(out_dir, f"{stem}.tif")
                ds = _open_tif(
                    path,
                    size,
                    size,
                    len(S2_NAMES),
                    "uint16",
                    crs,
                    transform,
                    nodata=0,
                    compress="deflate",
                    predictor=2,
                    interleave="band",
                    tiled=False,
                    blockysize=STRIP,
                )  # one strip per written strip: no block is written twice
                ds.descriptions = S2_NAMES
                ds.update_tags(
                    SOURCE="benbeam synth-tile",
                    BOA_ADD_OFFSET="0",
                    VALUES="DN = surface reflectance x 10000 (reBEN units); 20 m and 60 m bands "
                    "upsampled bilinearly (as benbeam convert) to 10 m",
                )
                outs["tile"] = ds
                _write_geotiff(ds, outs, size, seed, tile, nodata_border)
            for d in list(outs.values()):
                d.close()
            outs.clear()
            if layout == "safe":
                if use_jp2:
                    for b in names:
                        gdal_copy(
                            os.path.join(tmp, f"{b}.tif"),
                            os.path.join(img, rel[b]),
                            driver="JP2OpenJPEG",
                            REVERSIBLE="YES",
                            QUALITY="100",
                            YCBCR420="NO",
                        )
                        os.remove(os.path.join(tmp, f"{b}.tif"))
                files = [os.path.join("GRANULE", nm["granule"], "IMG_DATA", rel[b]) for b in names]
                with open(os.path.join(path, MTD_FILES[0 if level == "L2A" else 1]), "w") as fh:
                    fh.write(mtd_product(level, nm, date, files, ext))
                with open(os.path.join(path, "GRANULE", nm["granule"], "MTD_TL.xml"), "w") as fh:
                    fh.write(mtd_tile(level, nm, date, epsg, x0, y0, size))
    finally:
        for d in outs.values():
            d.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "path": path,
        "s1": s1_path,
        "truth": truth_path,
        "crs": crs,
        "transform": transform,
        "name": stem,
        "level": level,
        "layout": layout,
        "format": "JP2" if use_jp2 else "GTiff",
    }


def _write_common(outs: dict, r0: int, truth: np.ndarray, s1v: np.ndarray) -> None:
    h, w = truth.shape
    win = ((r0, r0 + h), (0, w))
    outs["truth"].write(truth, 1, window=win)
    if "s1" in outs:
        outs["s1"].write(np.moveaxis(s1v, -1, 0), window=win)


def _write_geotiff(ds, outs: dict, size: int, seed: int, tile: str, nodata_border: int) -> None:
    """Strips with one strip of look-ahead: a 20 m / 60 m band's bilinear upsampling of a strip
    needs the coarse rows just above and below it (generated with the neighbouring strips)."""
    it = _strips(size, seed, tile, "L2A", nodata_border)
    prev, cur = None, next(it)
    for nxt in _lookahead(it):
        r0, truth, bands, s1v = cur
        h = truth.shape[0]
        _write_common(outs, r0, truth, s1v)
        for i, b in enumerate(S2_NAMES):
            f = _RES[b] // 10
            v = _dn(bands[b], 0, f, 0)
            if f > 1:  # upsample the coarse DN (as convert does), then mask the swath border at 10 m
                parts, start = [v], r0 // f
                if prev is not None:
                    above = _dn(prev[2][b], 0, f, 0)[-2:]
                    parts.insert(0, above)
                    start -= above.shape[0]
                if nxt is not None:
                    parts.append(_dn(nxt[2][b], 0, f, 0)[:2])
                up = resample_window(np.concatenate(parts), (start, 0), (size // f, size // f), f, (r0, 0, h, size))
                v = np.clip(np.rint(up), 1, 65535).astype(np.uint16)
            if nodata_border:
                v[:, :nodata_border] = 0
            ds.write(v, i + 1, window=((r0, r0 + h), (0, size)))
        prev, cur = cur, nxt


def _lookahead(it):
    yield from it
    yield None


# --------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------


def band_rows(zone: int, band: str) -> list[str]:
    """The row letters of the zone's 100 km squares that meet latitude ``band``, north to south
    (the band's northings on the central meridian)."""
    south, north = band_latitudes(band)
    lo, hi = meridian_northing(south), meridian_northing(north)
    ys = {r: square_origin(zone, f"{band}{_COL_SETS[(zone - 1) % 3][0]}{r}")[1] for r in _ROW_LETTERS}
    return sorted((r for r, y in ys.items() if y < hi and y + SQUARE_M > lo), key=lambda r: -ys[r])


def tile_ids(n: int, first: str = "32TQR") -> list[str]:
    """n distinct MGRS tile ids starting at ``first``, walking the zone's 100 km columns, then its
    rows southwards within ``first``'s latitude band (wrapping to the band's northern row), so every
    id names a square of its band."""
    zone, band, col, row = int(first[:2]), first[2], first[3], first[4]
    cols = _COL_SETS[(zone - 1) % 3]
    rows = band_rows(zone, band)
    if col not in cols or row not in rows:
        raise ValueError(f"{first} is not a 100 km square of zone {zone} in latitude band {band}")
    c0, r0 = cols.index(col), rows.index(row)
    if n > len(cols) * len(rows):
        raise ValueError(f"at most {len(cols) * len(rows)} distinct tiles in zone {zone}, band {band}")
    return [f"{zone}{band}{cols[(c0 + i) % len(cols)]}{rows[(r0 + i // len(cols)) % len(rows)]}" for i in range(n)]
