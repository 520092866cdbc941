"""Decoding (fast strip reader vs tifffile vs rasterio), resampling vs GDAL, and patch checks."""

import pickle

import numpy as np
import pytest
from rasterio.enums import Resampling
from rasterio.io import MemoryFile
from rasterio.transform import from_origin

from bigearthnet_beam.schemas import failures
from bigearthnet_beam.schemas.bands import S1_NAMES, S2_NAMES
from bigearthnet_beam.schemas.naming import OBJECT_KEYS
from bigearthnet_beam.synth.generator import patch_files
from bigearthnet_beam.transforms import decode
from bigearthnet_beam.transforms.patch import DecodedPatch, decode_patch
from bigearthnet_beam.transforms.resample import RESAMPLING_METHODS, upsample

PID = "S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_26_57"
S1 = "S1B_IW_GRDH_1SDV_20170612T165809_33UUP_26_57"
ROW = {"patch_id": PID, "s1_name": S1, "labels": ["Arable land", "Broad-leaved forest", "Mixed forest", "Pastures"]}


def tiff(arr, epsg=32633, x0=500000.0, y0=5300000.0, res=10.0, nodata=None, **opts):
    profile = dict(
        driver="GTiff",
        width=arr.shape[1],
        height=arr.shape[0],
        count=1,
        dtype=arr.dtype.name,
        crs=f"EPSG:{epsg}",
        transform=from_origin(x0, y0, res, res),
        **opts,
    )
    if nodata is not None:
        profile["nodata"] = nodata
    with MemoryFile() as mem:
        with mem.open(**profile) as ds:
            ds.write(arr, 1)
        return bytes(mem.read())


CASES = {
    "uint16": (np.arange(14400, dtype=np.uint16).reshape(120, 120) % 9000 + 1, {"nodata": 0}),
    "float32": (np.linspace(-40, 10, 14400, dtype=np.float32).reshape(120, 120), {}),
    "deflate_pred2": (
        (np.arange(14400).reshape(120, 120) % 523 + 1).astype(np.uint16),
        {"nodata": 0, "compress": "deflate", "predictor": 2},
    ),
    "tiled": (
        np.arange(4096, dtype=np.uint16).reshape(64, 64) + 1,
        {"tiled": True, "blockxsize": 16, "blockysize": 16},
    ),
    "lzw": (np.arange(3600, dtype=np.uint16).reshape(60, 60) + 3, {"compress": "lzw"}),
    "bigendian_free_int16": ((np.arange(400, dtype=np.int16) - 200).reshape(20, 20), {}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_decode_path_equals_rasterio(case):
    arr, opts = CASES[case]
    data = tiff(arr, **opts)
    ref = decode._rasterio(data)
    for path in (decode._strip_tiff, decode._tifffile):
        try:
            got = path(data)
        except decode._Fallback:
            continue  # this path hands the file on; the next one must cover it
        except ValueError as e:  # tifffile without imagecodecs cannot do LZW: decode_geotiff moves on
            assert path is decode._tifffile and "imagecodecs" in str(e)
            continue
        np.testing.assert_array_equal(got.array, ref.array)
        assert got.array.dtype == ref.array.dtype
        assert got.transform == pytest.approx(ref.transform)
        assert got.epsg == ref.epsg == 32633
        assert got.nodata == ref.nodata
    got = decode.decode_geotiff(data)
    np.testing.assert_array_equal(got.array, arr)


def test_fast_path_covers_the_reben_layout():
    files, _ = patch_files(ROW, seed=3)
    for rel, data in files.items():
        r = decode._strip_tiff(data)  # no fallback needed for any of the 15 files
        ref = decode._rasterio(data)
        np.testing.assert_array_equal(r.array, ref.array)
        assert r.transform == pytest.approx(ref.transform) and r.epsg == ref.epsg and r.nodata == ref.nodata, rel


@pytest.mark.parametrize("cut", [8, 100, 300, 0.5, 0.9, -1])
def test_truncated_or_garbage_bytes_raise_decode_error(cut):
    data = tiff(CASES["deflate_pred2"][0], nodata=0, compress="deflate", predictor=2)
    n = int(len(data) * cut) if isinstance(cut, float) else (len(data) - 1 if cut == -1 else cut)
    with pytest.raises(failures.PatchError) as e:
        decode.decode_geotiff(data[:n], "reference_map")
    assert e.value.reason == "decode_error" and "reference_map" in e.value.detail
    with pytest.raises(failures.PatchError):
        decode.decode_geotiff(b"\x00" * 500)
    with pytest.raises(failures.PatchError):
        decode.decode_geotiff(b"II*\x00" + b"\xff" * 200)


@pytest.mark.parametrize("method", RESAMPLING_METHODS)
@pytest.mark.parametrize("n,factor", [(60, 2), (20, 6)])
def test_resampling_equals_gdal(method, n, factor):
    rng = np.random.default_rng(n)
    for arr in (
        rng.uniform(1, 9000, (n, n)).astype(np.float32),
        np.add.outer(np.arange(n), np.arange(n)).astype(np.float32) * 37 + 5,
    ):
        with MemoryFile() as mem:
            with mem.open(
                driver="GTiff",
                width=n,
                height=n,
                count=1,
                dtype="float32",
                crs="EPSG:32633",
                transform=from_origin(0, 1200, 1200 / n, 1200 / n),
            ) as ds:
                ds.write(arr, 1)
            with mem.open() as ds:
                ref = ds.read(1, out_shape=(n * factor, n * factor), resampling=getattr(Resampling, method))
        got = upsample(arr, factor, method)
        assert got.dtype == np.float32 and got.shape == ref.shape
        np.testing.assert_allclose(got, ref, atol=5e-3, rtol=0)  # float32 precision at ~1e4


def test_clean_patch_decodes_with_band_order_and_labels():
    files, _ = patch_files(ROW, seed=3)
    objs = {k: files[[r for r in files if r.endswith(f"_{k}.tif")][0]] for k in OBJECT_KEYS}
    p = decode_patch(PID, objs)
    assert p.s2.shape == (120, 120, 12) and p.s2.dtype == np.float32
    assert p.s1.shape == (120, 120, 2) and p.s1.dtype == np.float32
    assert p.label.dtype == np.uint8 and p.codes.dtype == np.uint16
    # band order: B02 is a 10 m band kept as is; VV before VH
    with MemoryFile(objs["B02"]) as mem, mem.open() as ds:
        np.testing.assert_array_equal(p.s2[..., S2_NAMES.index("B02")], ds.read(1).astype(np.float32))
    with MemoryFile(objs["VH"]) as mem, mem.open() as ds:
        np.testing.assert_array_equal(p.s1[..., S1_NAMES.index("VH")], ds.read(1))
    q = pickle.loads(pickle.dumps(p))
    assert isinstance(q, DecodedPatch) and (q.label == p.label).all()


@pytest.mark.parametrize(
    "fault,reason",
    [
        ("wrong_raster_size", "wrong_size"),
        ("s2_nodata_zeros", "s2_nodata"),
        ("s1_nan", "s1_nan"),
        ("misaligned_origin", "grid_mismatch"),
        ("wrong_crs", "crs_mismatch"),
        ("unknown_clc_code", "unknown_clc_code"),
        ("truncated_tiff", "decode_error"),
    ],
)
def test_each_check_fires_on_its_fault(fault, reason):
    files, detail = patch_files(ROW, seed=3, fault=fault)
    objs = {k: files[[r for r in files if r.endswith(f"_{k}.tif")][0]] for k in OBJECT_KEYS}
    with pytest.raises(failures.PatchError) as e:
        decode_patch(PID, objs)
    assert e.value.reason == reason, (detail, str(e.value))
    assert failures.FAULT_EXPECTATIONS[fault] == (e.value.stage, e.value.reason)
    err = pickle.loads(pickle.dumps(e.value))
    assert (err.stage, err.reason, err.detail) == (e.value.stage, e.value.reason, e.value.detail)


def test_wrong_dtype_is_reported():
    files, _ = patch_files(ROW, seed=3)
    objs = {k: files[[r for r in files if r.endswith(f"_{k}.tif")][0]] for k in OBJECT_KEYS}
    with MemoryFile(objs["VV"]) as mem, mem.open() as ds:
        arr = ds.read(1)
        x0, y0 = ds.transform.c, ds.transform.f
    objs["VV"] = tiff(arr.astype(np.float64), x0=x0, y0=y0)
    with pytest.raises(failures.PatchError) as e:
        decode_patch(PID, objs)
    assert e.value.reason == "wrong_dtype" and "VV" in e.value.detail
