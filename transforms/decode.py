"""GeoTIFF decoding from in-memory bytes (no Beam).

Fast path: ``tifffile`` on the bytes (~0.2 ms for a 120×120 uncompressed band vs ~1 ms
through GDAL), reading the GeoTIFF tags for the grid (ModelPixelScale + ModelTiepoint),
the CRS (ProjectedCSTypeGeoKey) and the nodata value (GDAL_NODATA). Anything the fast
path does not cover (ModelTransformation, several bands, unusual layouts) falls back to
rasterio. Tests prove both give identical arrays, transforms and CRS. Truncated or corrupt
bytes raise ``PatchError(decode, decode_error)``; they never return silent zeros.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from schemas import failures as F

_TAG_PIXEL_SCALE = 33550
_TAG_TIEPOINT = 33922
_TAG_TRANSFORMATION = 34264
_TAG_GEOKEYS = 34735
_TAG_NODATA = 42113
_KEY_RASTER_TYPE = 1025
_KEY_PROJECTED_CRS = 3072
_KEY_GEOGRAPHIC_CRS = 2048


@dataclass(frozen=True)
class Raster:
    array: np.ndarray  # 2-D, native dtype
    transform: tuple  # GDAL geotransform (x0, px_w, 0, y0, 0, -px_h)
    epsg: int | None
    nodata: float | None


class _Fallback(Exception):
    pass


def _geokeys(values) -> dict[int, int]:
    v = list(values)
    keys = {}
    n = v[3] if len(v) >= 4 else 0
    for i in range(n):
        k, loc, _cnt, val = v[4 + 4 * i: 8 + 4 * i]
        if loc == 0:
            keys[k] = val
    return keys


def _fast(data: bytes) -> Raster:
    import tifffile

    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        if len(tif.pages) != 1:
            raise _Fallback("several pages")
        page = tif.pages.first
        if page.samplesperpixel != 1 or len(page.shape) != 2:
            raise _Fallback("not a single band")
        tags = page.tags
        if _TAG_TRANSFORMATION in tags or _TAG_PIXEL_SCALE not in tags or _TAG_TIEPOINT not in tags:
            raise _Fallback("no scale/tiepoint georeferencing")
        size = len(data)
        for off, cnt in zip(page.dataoffsets, page.databytecounts):
            if off + cnt > size:
                raise F.PatchError(F.DECODE, "decode_error",
                                   f"TIFF data runs past the end of the file ({off + cnt} > {size} bytes): truncated")
        arr = page.asarray()
        sx, sy = tags[_TAG_PIXEL_SCALE].value[:2]
        tp = tags[_TAG_TIEPOINT].value
        i, j, x, y = tp[0], tp[1], tp[3], tp[4]
        keys = _geokeys(tags[_TAG_GEOKEYS].value) if _TAG_GEOKEYS in tags else {}
        if keys.get(_KEY_RASTER_TYPE, 1) != 1:  # PixelIsPoint: let GDAL apply its convention
            raise _Fallback("pixel is point")
        epsg = keys.get(_KEY_PROJECTED_CRS) or keys.get(_KEY_GEOGRAPHIC_CRS)
        if epsg == 32767:  # user-defined
            raise _Fallback("user-defined CRS")
        nodata = None
        if _TAG_NODATA in tags:
            text = str(tags[_TAG_NODATA].value).strip().rstrip("\x00")
            nodata = float(text) if text else None
        x0 = float(x) - float(i) * float(sx)
        y0 = float(y) + float(j) * float(sy)
        return Raster(arr, (x0, float(sx), 0.0, y0, 0.0, -float(sy)), int(epsg) if epsg else None, nodata)


def _rasterio(data: bytes) -> Raster:
    import rasterio
    from rasterio.io import MemoryFile

    with rasterio.Env(GDAL_PAM_ENABLED="NO"), MemoryFile(data) as mem, mem.open() as ds:
        if ds.count != 1:
            raise F.PatchError(F.CHECK, "wrong_size", f"expected a single-band GeoTIFF, found {ds.count} bands")
        arr = ds.read(1)
        epsg = ds.crs.to_epsg() if ds.crs else None
        return Raster(arr, tuple(ds.transform.to_gdal()), epsg, ds.nodata)


def decode_geotiff(data: bytes, name: str = "") -> Raster:
    """Decode a single-band GeoTIFF held in memory; raises PatchError(decode_error)."""
    what = f"{name}: " if name else ""
    if len(data) < 8:
        raise F.PatchError(F.DECODE, "decode_error", f"{what}{len(data)} bytes is too short to be a TIFF")
    try:
        return _fast(data)
    except F.PatchError as e:
        raise F.PatchError(e.stage, e.reason, what + e.detail) from None
    except _Fallback:
        pass
    except Exception:  # noqa: BLE001 - let GDAL try before declaring the file corrupt
        pass
    try:
        return _rasterio(data)
    except F.PatchError as e:
        raise F.PatchError(e.stage, e.reason, what + e.detail) from None
    except Exception as e:  # noqa: BLE001
        raise F.PatchError(F.DECODE, "decode_error", f"{what}not a readable GeoTIFF ({type(e).__name__}: {e})") from None
