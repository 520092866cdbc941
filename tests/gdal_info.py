"""``gdalinfo``'s text of a raster, from the GDAL library that rasterio ships (ctypes; no GDAL
command-line tools needed): what a GDAL user sees, category names and attribute tables included."""

from __future__ import annotations

import ctypes
import glob
import os


def _lib():
    import rasterio

    here = os.path.dirname(rasterio.__file__)
    found = sorted(glob.glob(os.path.join(here, "..", "rasterio.libs", "libgdal*.so*")))
    found += sorted(glob.glob(os.path.join(here, ".dylibs", "libgdal*.dylib")))
    if not found:  # a rasterio built against a system GDAL: the same library by its usual name
        found = ["libgdal.so"]
    g = ctypes.CDLL(found[0])
    g.GDALAllRegister()
    g.GDALOpen.restype, g.GDALOpen.argtypes = ctypes.c_void_p, [ctypes.c_char_p, ctypes.c_int]
    g.GDALInfoOptionsNew.restype = ctypes.c_void_p
    g.GDALInfoOptionsNew.argtypes = [ctypes.POINTER(ctypes.c_char_p), ctypes.c_void_p]
    g.GDALInfoOptionsFree.argtypes = [ctypes.c_void_p]
    g.GDALInfo.restype, g.GDALInfo.argtypes = ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_void_p]
    g.VSIFree.argtypes = [ctypes.c_void_p]
    g.GDALClose.argtypes = [ctypes.c_void_p]
    return g


def gdalinfo(path: str) -> str:
    """The text ``gdalinfo PATH`` prints."""
    g = _lib()
    ds = g.GDALOpen(str(path).encode(), 0)
    assert ds, f"GDAL cannot open {path}"
    opts = g.GDALInfoOptionsNew(None, None)
    try:
        text = g.GDALInfo(ds, opts)
        try:
            return ctypes.string_at(text).decode()
        finally:
            g.VSIFree(text)
    finally:
        g.GDALInfoOptionsFree(opts)
        g.GDALClose(ds)
