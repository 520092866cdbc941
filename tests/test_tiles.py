"""Synthetic whole tiles (synth.tiles), the windowed tile reader for predict (trainer.tiles) and the
window resampling both use (transforms.resample.taps / resample_window)."""

import hashlib
import os
import re
import shutil
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from rasterio.windows import Window

from bigearthnet_beam.schemas.bands import ALL_NAMES, BAND_BY_NAME, S1_NAMES, S2_NAMES
from bigearthnet_beam.schemas.classes import IGNORE_INDEX, NUM_CLASSES
from bigearthnet_beam.synth.generator import tile_origin
from bigearthnet_beam.synth.signatures import signatures
from bigearthnet_beam.synth.tile_cli import run
from bigearthnet_beam.synth.tiles import DN_OFFSET, L1C_NAMES, jp2_writable, make_tile, tile_ids
from bigearthnet_beam.trainer.tiles import find_tiles, normalise_band_name, open_tile, read_offsets
from bigearthnet_beam.transforms.resample import resample_window, taps, upsample, weights

SIZE = 240
EXT = ".jp2" if jp2_writable() else ".tif"


@pytest.fixture(scope="module")
def l2a(tmp_path_factory):
    """A synthetic L2A .SAFE tile with S1."""
    out = tmp_path_factory.mktemp("l2a")
    return make_tile(str(out), size=SIZE, seed=3, s1=True)


@pytest.fixture(scope="module")
def geotiff(tmp_path_factory):
    """The same tile as a GeoTIFF."""
    out = tmp_path_factory.mktemp("gtiff")
    return make_tile(str(out), size=SIZE, seed=3, layout="geotiff", s1=True)


def _tree_hash(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _img(info) -> Path:
    (granule,) = (Path(info["path"]) / "GRANULE").iterdir()
    return granule / "IMG_DATA"


# ---------------------------------------------------------------- generator


def test_safe_structure_and_names(l2a):
    p = Path(l2a["path"])
    assert re.fullmatch(r"S2A_MSIL2A_20240715T101031_N0510_R022_T32TQR_20240715T\d{6}\.SAFE", p.name)
    (granule,) = (p / "GRANULE").iterdir()
    assert re.fullmatch(r"L2A_T32TQR_A\d{6}_20240715T\d{6}", granule.name)
    assert (p / "MTD_MSIL2A.xml").is_file() and (granule / "MTD_TL.xml").is_file()
    expected = {
        f"R{BAND_BY_NAME[b].resolution_m}m/T32TQR_20240715T101031_{b}_{BAND_BY_NAME[b].resolution_m}m{EXT}"
        for b in S2_NAMES
    }
    got = {str(f.relative_to(granule / "IMG_DATA")) for f in (granule / "IMG_DATA").rglob("*") if f.is_file()}
    assert got == expected
    assert l2a["format"] == ("JP2" if EXT == ".jp2" else "GTiff")
    assert not [f for f in Path(l2a["truth"]).parent.iterdir() if f.name.startswith(".synth-tile")]  # temp gone
    offsets, warns = read_offsets(str(p))
    assert warns == [] and all(offsets[b] == -DN_OFFSET for b in S2_NAMES)


def test_georeferencing(l2a):
    x0, y0 = tile_origin(32, "TQR")
    for b in S2_NAMES:
        r = BAND_BY_NAME[b].resolution_m
        (f,) = _img(l2a).glob(f"R{r}m/*_{b}_*")
        with rasterio.open(f) as ds:
            assert ds.crs.to_epsg() == 32632
            assert ds.transform == from_origin(x0, y0, r, r)
            assert (ds.width, ds.height) == (SIZE * 10 // r,) * 2
            assert ds.dtypes[0] == "uint16"
    for side in (l2a["truth"], l2a["s1"]):
        with rasterio.open(side) as ds:
            assert ds.crs.to_epsg() == 32632 and ds.transform == from_origin(x0, y0, 10, 10)
            assert (ds.width, ds.height) == (SIZE, SIZE)
    assert l2a["crs"].to_epsg() == 32632 and l2a["transform"] == from_origin(x0, y0, 10, 10)


def test_deterministic_per_seed_and_tile(tmp_path):
    a = make_tile(str(tmp_path / "a"), size=120, seed=5, s1=True)
    make_tile(str(tmp_path / "b"), size=120, seed=5, s1=True)
    c = make_tile(str(tmp_path / "c"), size=120, seed=6)
    assert _tree_hash(tmp_path / "a") == _tree_hash(tmp_path / "b")
    with rasterio.open(a["truth"]) as t1, rasterio.open(c["truth"]) as t2:
        assert not np.array_equal(t1.read(1), t2.read(1))


def test_stored_dn_carry_the_baseline_offset(l2a):
    (f,) = _img(l2a).glob("R10m/*_B02_*")
    with rasterio.open(f) as ds:
        raw = ds.read(1)
    assert raw.min() >= 1 + DN_OFFSET  # as a real N0510 product: DN = reflectance x 10000 + 1000
    with open_tile(l2a["path"], ["B02"]) as ts:
        px, valid = ts.read(Window(0, 0, SIZE, SIZE))
    assert valid.all()
    np.testing.assert_array_equal(px[..., 0], raw.astype(np.float32) - DN_OFFSET)  # reBEN units again


def _erode(mask: np.ndarray, r: int) -> np.ndarray:
    """True where the whole (2r+1)^2 box around a pixel is True."""
    k = 2 * r + 1
    c = np.pad(mask.astype(np.int64), ((1, 0), (1, 0))).cumsum(0).cumsum(1)
    box = c[k:, k:] - c[:-k, k:] - c[k:, :-k] + c[:-k, :-k]
    out = np.zeros_like(mask)
    out[r:-r, r:-r] = box == k * k
    return out


def test_content_uses_the_patch_signatures(tmp_path):
    info = make_tile(str(tmp_path), size=480, seed=1, s1=True)
    with rasterio.open(info["truth"]) as ds:
        truth = ds.read(1)
    assert truth.dtype == np.uint8 and (truth == IGNORE_INDEX).any()
    assert set(np.unique(truth)) <= set(range(NUM_CLASSES)) | {IGNORE_INDEX}
    with open_tile(info["path"], ALL_NAMES, s1=info["s1"]) as ts:
        px, valid = ts.read(Window(0, 0, 480, 480))
    s2sig, s1sig = signatures()
    checked = 0
    for c in range(NUM_CLASSES):
        # interior pixels: the class fills the 25 x 25 px around (coarse bands: block means + bilinear)
        m = _erode(truth == c, 12) & valid
        if m.sum() < 500:
            continue
        checked += 1
        ratio = px[m][:, :12].mean(0) / s2sig[c]
        # the class's spectrum, scaled by its regions' brightness (0.03 sigma, as render's per patch)
        assert abs(ratio.mean() - 1) < 0.1 and ratio.std() < 0.005, (c, ratio)
        np.testing.assert_allclose(px[m][:, 12:].mean(0), s1sig[c], atol=1.0)
    assert checked >= 4
    # regions of tens to hundreds of pixels: several classes, none a speckle
    classes, counts = np.unique(truth[truth != IGNORE_INDEX], return_counts=True)
    assert len(classes) >= 5 and counts.max() < truth.size * 0.6


def test_l1c_layout(tmp_path):
    info = make_tile(str(tmp_path), size=120, level="L1C")
    p = Path(info["path"])
    assert p.name.startswith("S2A_MSIL1C_") and (p / "MTD_MSIL1C.xml").is_file()
    img = _img(info)
    assert img.parent.name.startswith("L1C_T32TQR_")
    assert sorted(f.name for f in img.iterdir()) == sorted(f"T32TQR_20240715T101031_{b}{EXT}" for b in L1C_NAMES)
    with rasterio.open(img / f"T32TQR_20240715T101031_B10{EXT}") as ds:
        assert ds.width == 20 and ds.transform.a == 60
    offsets, _ = read_offsets(str(p))
    assert offsets["B02"] == -DN_OFFSET  # RADIO_ADD_OFFSET
    with open_tile(str(p), S2_NAMES) as ts:
        assert len(ts.warnings) == 1 and "Level-1C" in ts.warnings[0] and "domain shift" in ts.warnings[0]
        px, valid = ts.read(Window(0, 0, 120, 120))
    assert valid.all() and px[..., 0].mean() > 1000  # top of atmosphere: hazier than BOA


def test_geotiff_layout_matches_the_safe_product(l2a, geotiff):
    with rasterio.open(geotiff["path"]) as ds:
        assert ds.count == 12 and ds.descriptions == S2_NAMES and ds.dtypes == ("uint16",) * 12
        assert ds.res == (10.0, 10.0) and ds.crs.to_epsg() == 32632
        stack = ds.read()
    # same content as the SAFE product; coarse bands upsampled with convert's bilinear and rounded
    # (strip boundaries every 60 rows must not show: look-ahead over the neighbouring strips)
    for i, b in enumerate(S2_NAMES):
        r = BAND_BY_NAME[b].resolution_m
        (f,) = _img(l2a).glob(f"R{r}m/*_{b}_*")
        with rasterio.open(f) as src:
            native = src.read(1).astype(np.float32) - DN_OFFSET
        want = native if r == 10 else upsample(native, r // 10)
        assert np.abs(stack[i] - want).max() <= 0.5 + 1e-3, b


def test_s1_raster(geotiff):
    with rasterio.open(geotiff["s1"]) as ds:
        assert ds.count == 2 and ds.descriptions == ("VV", "VH") and ds.dtypes == ("float32", "float32")
        vv, vh = ds.read()
    assert -40 < vv.mean() < 0 and vh.mean() < vv.mean()


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="multiple of 6"):
        make_tile(str(tmp_path), size=100)
    with pytest.raises(ValueError, match="layout"):
        make_tile(str(tmp_path), size=120, layout="zarr")
    assert run(["--out", str(tmp_path), "--size", "100"]) == 2
    for bad in (["--n", "0"], ["--layout", "zarr"], ["--size", "nan"]):
        with pytest.raises(SystemExit) as e:  # refused by the flag's type, before anything is written
            run(["--out", str(tmp_path), *bad])
        assert e.value.code == 2


def test_cli_writes_distinct_tiles(tmp_path, capsys):
    assert run(["--out", str(tmp_path), "--n", "2", "--size", "60", "--layout", "geotiff", "--s1", "--seed", "4"]) == 0
    out = capsys.readouterr().out
    ids = tile_ids(2)
    assert len(set(ids)) == 2 and all(f"T{t}_20240715T101031" in out for t in ids)
    tiles = find_tiles(str(tmp_path))
    assert [Path(t).name for t in tiles] == sorted(f"T{t}_20240715T101031.tif" for t in ids)


def test_generation_memory_is_bound_by_the_strip(tmp_path):
    tracemalloc.start()
    make_tile(str(tmp_path), size=1200, s1=True, layout="geotiff")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    one_band = 1200 * 1200 * 4  # a single float32 band of the tile: 5.8 MB; the 12-band tile: 69 MB
    assert peak < 5 * one_band


# ---------------------------------------------------------------- reader


@pytest.mark.parametrize("method", ["bilinear", "cubic", "nearest"])
def test_taps_are_the_rows_of_the_training_weights(method):
    for n, f in ((20, 6), (60, 2), (7, 3), (1, 2)):
        w = weights(n, f, method)
        for lo, hi in ((0, n * f), (0, 5), (n * f - 7, n * f), (3, 3 + f + 1)):
            lo, hi = max(lo, 0), min(hi, n * f)
            if lo >= hi:
                continue
            idx, ww = taps(n, f, method, lo, hi)
            dense = np.zeros((hi - lo, n), dtype=np.float32)
            for t in range(idx.shape[1]):
                np.add.at(dense, (np.arange(hi - lo), idx[:, t]), ww[:, t])
            np.testing.assert_array_equal(dense, w[lo:hi])  # bit for bit


WINDOWS = [
    (0, 0, 37, 41),
    (0, 0, SIZE, SIZE),
    (SIZE - 29, SIZE - 31, 29, 31),
    (101, 57, 53, 77),
    (1, SIZE - 7, 238, 7),
    (119, 0, 1, SIZE),
    (55, 113, 13, 1),
]


@pytest.mark.parametrize("method", ["bilinear", "cubic"])
def test_window_read_equals_whole_band_resample_and_crop(l2a, method):
    whole = {}
    for b in S2_NAMES:
        r = BAND_BY_NAME[b].resolution_m
        (f,) = _img(l2a).glob(f"R{r}m/*_{b}_*")
        with rasterio.open(f) as ds:
            native = ds.read(1).astype(np.float32)
        whole[b] = (native if r == 10 else upsample(native, r // 10, method)) - DN_OFFSET
    with open_tile(l2a["path"], S2_NAMES, resampling=method) as ts:
        full, _ = ts.read(Window(0, 0, SIZE, SIZE))
        for r0, c0, h, w in WINDOWS:
            px, valid = ts.read(Window(c0, r0, w, h))
            assert px.shape == (h, w, 12) and valid.shape == (h, w)
            # identical to the same code over the whole tile: chunks join without seams
            np.testing.assert_array_equal(px, full[r0 : r0 + h, c0 : c0 + w])
            for i, b in enumerate(S2_NAMES):
                # equal to convert's resampling of the whole band, up to float32 rounding (BLAS sums)
                np.testing.assert_allclose(px[..., i], whole[b][r0 : r0 + h, c0 : c0 + w], rtol=0, atol=2e-3)


def test_read_only_touches_the_window(l2a, monkeypatch):
    windows = []
    real = rasterio.io.DatasetReader.read

    def spy(self, *a, **kw):
        windows.append((Path(self.name).name, kw.get("window")))
        return real(self, *a, **kw)

    monkeypatch.setattr(rasterio.io.DatasetReader, "read", spy)
    with open_tile(l2a["path"], ["B01", "B05", "B02"]) as ts:
        ts.read(Window(100, 70, 20, 30))
    got = {name.split("_")[2]: w for name, w in windows}
    assert got["B02"] == Window(100, 70, 20, 30)
    assert got["B05"].col_off == 49 and got["B05"].width == 12 and got["B05"].row_off == 34  # 10 px + 1 each side
    assert got["B01"].width <= 5 and got["B01"].height <= 7


def test_only_requested_bands_are_opened(tmp_path):
    info = make_tile(str(tmp_path), size=120)
    for b in ("B01", "B09", "B05"):
        next(_img(info).rglob(f"*_{b}_*")).unlink()
    with open_tile(info["path"], ["B04", "B03", "B02", "B08"]) as ts:
        assert ts.channels == ("B04", "B03", "B02", "B08")
        px, valid = ts.read(Window(10, 10, 30, 30))
        assert px.shape == (30, 30, 4) and valid.all()
    with pytest.raises(ValueError, match=r"lacks bands \['B01', 'B05'\].*") as e:
        open_tile(info["path"], ["B01", "B02", "B05"])
    assert info["path"] in str(e.value)


def test_s1_is_required_when_the_model_uses_it(l2a):
    with pytest.raises(ValueError, match=r"trained with Sentinel-1.*--s1 RASTER"):
        open_tile(l2a["path"], ALL_NAMES)
    with open_tile(l2a["path"], ALL_NAMES, s1=l2a["s1"]) as ts:
        px, _ = ts.read(Window(0, 0, 30, 30))
    with rasterio.open(l2a["s1"]) as ds:
        np.testing.assert_array_equal(px[..., 12:], np.moveaxis(ds.read(window=Window(0, 0, 30, 30)), 0, -1))
    assert ts.channels[-2:] == S1_NAMES


def test_s1_grid_must_match(l2a, tmp_path):
    with rasterio.open(l2a["s1"]) as src:
        profile, data = src.profile, src.read()
    t = profile["transform"]
    profile["transform"] = from_origin(t.c + 10, t.f, 10, 10)
    bad = tmp_path / "shifted_s1.tif"
    with rasterio.open(bad, "w", **profile) as dst:
        dst.write(data)
    with pytest.raises(ValueError, match="not on the tile's grid"):
        open_tile(l2a["path"], ["B02", "VV", "VH"], s1=str(bad))


def test_l2a_without_metadata_uses_the_baseline_in_the_name(tmp_path):
    info = make_tile(str(tmp_path), size=60)
    os.remove(Path(info["path"]) / "MTD_MSIL2A.xml")
    with open_tile(info["path"], ["B02"]) as ts:
        assert any("no MTD_MSIL2A.xml" in w for w in ts.warnings)
        px, _ = ts.read(Window(0, 0, 60, 60))
    assert px.min() >= 1  # the -1000 offset still applied


def test_band_descriptions_are_matched_loosely(tmp_path):
    assert [normalise_band_name(s) for s in ("B2", "b02", "B8a", "b8A", " vv ", "B12", "red", "B13x")] == [
        "B02",
        "B02",
        "B8A",
        "B8A",
        "VV",
        "B12",
        None,
        None,
    ]
    rng = np.random.default_rng(0)
    names = ["b4", "B3", "B2", "b8a", "VH", "vv"]
    data = rng.integers(1, 4000, (6, 36, 36)).astype(np.float32)
    path = tmp_path / "scene.tif"
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=36,
        height=36,
        count=6,
        dtype="float32",
        crs="EPSG:32633",
        transform=from_origin(500000, 5000000, 10, 10),
    ) as ds:
        ds.write(data)
        ds.descriptions = names
    with open_tile(str(path), ["B02", "B03", "B04", "B8A", "VV", "VH"]) as ts:  # S1 bands from the same file
        px, valid = ts.read(Window(3, 5, 20, 10))
    assert ts.name == "scene" and valid.all()
    np.testing.assert_array_equal(px, np.moveaxis(data[[2, 1, 0, 3, 5, 4], 5:15, 3:23], 0, -1))
    with pytest.raises(ValueError, match=r"lacks bands \['B11'\].*scene.tif|scene.tif.*lacks bands \['B11'\]"):
        open_tile(str(path), ["B02", "B11"])


def test_geotiff_tile_reads_like_the_safe_product(l2a, geotiff):
    with open_tile(geotiff["path"], S2_NAMES) as g, open_tile(l2a["path"], S2_NAMES) as s:
        assert (g.name, g.width, g.transform, g.crs) == (s.name, s.width, s.transform, s.crs)
        a, _ = g.read(Window(17, 33, 90, 70))
        b, _ = s.read(Window(17, 33, 90, 70))
    assert np.abs(a - b).max() <= 0.5 + 1e-3  # the GeoTIFF holds the same values, rounded


def test_nodata_border_is_invalid(tmp_path):
    info = make_tile(str(tmp_path / "s"), size=120, nodata_border=13)
    with open_tile(info["path"], ["B02", "B05", "B01"]) as ts:
        _, valid = ts.read(Window(0, 0, 120, 120))
        _, v2 = ts.read(Window(5, 40, 30, 20))
    assert not valid[:, :13].any()
    assert valid[:, 30:].all()  # 60 m: the coarse pixel touching the border plus bilinear reach
    np.testing.assert_array_equal(v2, valid[40:60, 5:35])
    with open_tile(info["path"], ["B02"]) as ts:
        _, v10 = ts.read(Window(0, 0, 120, 120))
    assert not v10[:, :13].any() and v10[:, 13:].all()
    g = make_tile(str(tmp_path / "g"), size=120, nodata_border=13, layout="geotiff")
    with open_tile(g["path"], S2_NAMES) as ts:
        _, vg = ts.read(Window(0, 0, 120, 120))
    assert not vg[:, :13].any() and vg[:, 13:].all()
    with rasterio.open(info["truth"]) as ds:
        assert (ds.read(1)[:, :13] == IGNORE_INDEX).all()


def test_find_tiles_skips_sidecars(l2a, tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    shutil.copytree(l2a["path"], d / Path(l2a["path"]).name)
    for side in (l2a["s1"], l2a["truth"]):
        shutil.copy(side, d / Path(side).name)
    (d / "other.tiff").write_bytes(b"")
    (d / "notes.txt").write_text("x")
    got = [Path(p).name for p in find_tiles(str(d))]
    assert got == sorted([Path(l2a["path"]).name, "other.tiff"])
    assert find_tiles(l2a["path"]) == [l2a["path"]]


def test_bad_channels_and_windows(l2a):
    with pytest.raises(ValueError, match="unknown channel"):
        open_tile(l2a["path"], ["B02", "B10"])
    with open_tile(l2a["path"], ["B02"]) as ts:
        with pytest.raises(ValueError, match="inside the tile"):
            ts.read(Window(SIZE - 10, 0, 20, 20))


def test_resample_window_on_a_block():
    x = np.random.default_rng(1).random((40, 40)).astype(np.float32)
    full = resample_window(x, (0, 0), (40, 40), 2, (0, 0, 80, 80))
    part = resample_window(x[9:21, 4:30], (9, 4), (40, 40), 2, (20, 10, 20, 48))
    np.testing.assert_array_equal(part, full[20:40, 10:58])
