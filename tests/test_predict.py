"""``benbeam predict`` on in-memory tiles: the window grid and blending, the layers' definitions,
COG outputs, chunked = unchunked, georeferencing, nodata, --extra and temporary names.

Models are narrow (width 4) and tiles a few hundred pixels."""

import json
import os

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
rasterio = pytest.importorskip("rasterio")

from bigearthnet_beam.schemas import classes  # noqa: E402
from bigearthnet_beam.trainer.inference.grid import BLEND_FLOOR, blend_weights, check_chunk_size, window_starts  # noqa: E402
from bigearthnet_beam.trainer.inference.layers import entropy, layers_from_probs, probs_for_file  # noqa: E402
from bigearthnet_beam.trainer.inference.plugins import Extra, load_extra  # noqa: E402
from bigearthnet_beam.trainer.inference.predictor import Predictor  # noqa: E402
from bigearthnet_beam.trainer.inference.settings import PREVIEW, PredictError  # noqa: E402
from tests.predict_fixtures import (  # noqa: E402
    ArrayTile,
    K,
    read_band,
    run_tile,
    save_tiny_model,
    tiny_model,
)


@pytest.fixture(scope="module")
def predictor():
    """A Predictor over an untrained narrow U-Net."""
    model, info = tiny_model()
    return Predictor(model, info, batch_size=8, overlap=32)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """That U-Net saved as .keras."""
    return save_tiny_model(str(tmp_path_factory.mktemp("model") / "tiny.keras"))


# --------------------------------------------------------------------------- grid and weights


@pytest.mark.parametrize("size,overlap", [(120, 32), (121, 32), (300, 32), (1000, 0), (487, 100)])
def test_window_grid_covers_the_axis_with_a_fixed_stride_and_the_last_window_on_the_edge(size, overlap):
    s = window_starts(size, 120, overlap)
    assert s[0] == 0 and s[-1] == size - 120
    assert (np.diff(s)[:-1] == 120 - overlap).all() and (np.diff(s) <= 120 - overlap).all()
    covered = np.zeros(size, bool)
    for v in s:
        covered[v : v + 120] = True
    assert covered.all()


def test_grid_refuses_a_tile_smaller_than_a_window_and_a_bad_overlap():
    with pytest.raises(PredictError, match="at least 120"):
        window_starts(100, 120, 32)
    with pytest.raises(PredictError, match="overlap"):
        window_starts(300, 120, 120)
    with pytest.raises(PredictError, match="multiple of 128"):
        check_chunk_size(200)


def test_blend_weights_are_smooth_symmetric_and_keep_a_floor():
    w = blend_weights(120)
    assert w.shape == (120, 120) and w.dtype == np.float32
    np.testing.assert_allclose(w, w.T)
    np.testing.assert_allclose(w, w[::-1, ::-1])
    assert w.min() >= BLEND_FLOOR**2 * 0.99 and w.max() <= 1.0
    assert np.abs(np.diff(w, axis=0)).max() < 0.05  # no step anywhere


# --------------------------------------------------------------------------- layers


def _dirichlet(shape, seed=0):
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.full(K, 0.3), size=shape).astype(np.float32)
    p[0, 0] = 0.0  # exact zeros: 0·ln 0 = 0
    p[0, 0, 3] = 1.0
    return p


def test_layers_satisfy_their_definitions():
    p = _dirichlet((20, 30))
    valid = np.ones((20, 30), bool)
    valid[5, 7] = False
    lay = layers_from_probs(p, valid)
    p64 = p.astype(np.float64)
    srt = np.sort(p64, axis=-1)
    ent = -np.sum(np.where(p64 > 0, p64 * np.log(np.where(p64 > 0, p64, 1)), 0), axis=-1)
    m = valid
    np.testing.assert_array_equal(lay["class"][m], np.argmax(p, -1)[m])
    np.testing.assert_allclose(lay["maxprob"][m], srt[..., -1][m], rtol=0, atol=1e-7)
    np.testing.assert_allclose(lay["gap"][m], (srt[..., -1] - srt[..., -2])[m], rtol=0, atol=1e-6)
    np.testing.assert_allclose(lay["entropy"][m], ent[m], rtol=1e-5, atol=1e-6)
    assert lay["entropy"][0, 0] == 0 and lay["maxprob"][0, 0] == 1 and lay["gap"][0, 0] == 1
    assert lay["class"][5, 7] == 255 and all(np.isnan(lay[k][5, 7]) for k in ("maxprob", "entropy", "gap"))
    uni = np.full((1, 1, K), 1.0 / K, np.float32)
    np.testing.assert_allclose(entropy(uni), np.log(K), rtol=1e-6)
    q = probs_for_file(p, valid, "uint8")
    assert q.dtype == np.uint8 and (q[5, 7] == 255).all() and q[valid].max() <= 254
    np.testing.assert_allclose(q[valid] / 254.0, p[valid], atol=0.5 / 254 + 1e-7)


# --------------------------------------------------------------------------- one tile, stand-in source


@pytest.mark.slow
def test_outputs_keep_the_georeferencing_and_satisfy_the_definitions_against_the_saved_cube(predictor, tmp_path):
    src = ArrayTile.random(250, 310, predictor.channels, np.random.default_rng(1))
    src.valid[:, :17] = False  # a nodata border
    src.valid[100:110, 200:230] = False
    s = run_tile(predictor, src, tmp_path, chunk_size=128, save_probs=True, probs_dtype="float32")
    stem = tmp_path / src.name
    for layer in ("class", "maxprob", "entropy", "gap", "probs"):
        with rasterio.open(f"{stem}_{layer}.tif") as ds:
            assert ds.crs == src.crs and ds.transform == src.transform
            assert (ds.width, ds.height) == (src.width, src.height)
            assert ds.profile["tiled"] and ds.profile["compress"] == "deflate"
            # class ids: 255; the float layers (probs saved as float32 here): NaN
            assert ds.nodata == 255 if layer == "class" else np.isnan(ds.nodata), (layer, ds.nodata)
    probs = np.moveaxis(read_band(f"{stem}_probs.tif"), 0, -1)
    cls = read_band(f"{stem}_class.tif", 1)
    valid = src.valid
    np.testing.assert_allclose(probs[valid].sum(-1), 1.0, atol=1e-5)
    ref = layers_from_probs(np.nan_to_num(probs), valid)
    np.testing.assert_array_equal(cls, ref["class"])
    for layer in ("maxprob", "entropy", "gap"):
        np.testing.assert_allclose(read_band(f"{stem}_{layer}.tif", 1), ref[layer], rtol=0, atol=2e-6)
    p64 = probs[valid].astype(np.float64)
    srt = np.sort(p64, -1)
    np.testing.assert_allclose(read_band(f"{stem}_maxprob.tif", 1)[valid], srt[:, -1], atol=1e-7)
    np.testing.assert_allclose(read_band(f"{stem}_gap.tif", 1)[valid], srt[:, -1] - srt[:, -2], atol=1e-6)
    np.testing.assert_allclose(
        read_band(f"{stem}_entropy.tif", 1)[valid],
        -(p64 * np.log(np.maximum(p64, 1e-300))).sum(-1),
        rtol=1e-5,
        atol=1e-6,
    )
    assert (cls[~valid] == 255).all() and np.isnan(probs[~valid]).all()
    assert np.isnan(read_band(f"{stem}_entropy.tif", 1)[~valid]).all()
    cm = json.loads((tmp_path / f"{src.name}_classmap.json").read_text())
    assert cm["classes"]["255"]["name"] == "no data" and cm["nodata"] == 255
    assert cm["classes"]["0"] == {"name": classes.CLASS_NAMES[0], "color": list(classes.class_colors()[0])}
    assert "natural" in cm["layers"]["entropy"]
    assert s["valid_pixels"] == int(valid.sum()) and sum(s["class_pixels"].values()) == s["valid_pixels"]
    with open(tmp_path / PREVIEW, "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    assert sorted(os.listdir(tmp_path)) == sorted(s["outputs"] + [PREVIEW]) or sorted(os.listdir(tmp_path)) == sorted(
        s["outputs"]
    )


def _cog_problems(path) -> list[str]:
    """The rules of GDAL's COG validation, checked on the file's own TIFF structure (tifffile):
    tiled levels; every IFD ahead of all image data (a reader gets the whole index from the
    file's start); overviews present, each half the previous, their data before the full
    resolution's and the smallest first; and GDAL's own COG layout marker."""
    import tifffile

    problems = []
    with tifffile.TiffFile(path) as tif:
        levels = [p for p in tif.pages if not (p.tags.get("NewSubfileType") and p.tags["NewSubfileType"].value & 4)]
        ifds = [p.offset for p in tif.pages]
        data = [min(o for o in p.dataoffsets if o) for p in levels]
        if not all(p.is_tiled for p in levels):
            problems.append("a level is not tiled")
        if max(ifds) > min(min(o for o in p.dataoffsets if o) for p in tif.pages):
            problems.append("an IFD comes after image data")
        if len(levels) < 2:
            problems.append("no overviews")
        for a, b in zip(levels, levels[1:], strict=False):
            if b.shape[0] != -(-a.shape[0] // 2):
                problems.append(f"overview of {b.shape[0]} rows under {a.shape[0]}")
        if any(data[i + 1] > data[i] for i in range(len(data) - 1)):
            problems.append("image data not ordered smallest overview first, full resolution last")
    with rasterio.open(path) as ds:
        if ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") != "COG":
            problems.append("GDAL does not report LAYOUT=COG")
    return problems


def test_maps_are_cloud_optimised_geotiffs_with_overviews(predictor, tmp_path):
    src = ArrayTile.random(300, 270, predictor.channels, np.random.default_rng(6))
    src.valid[:20] = False
    s = run_tile(
        predictor, src, tmp_path, chunk_size=128, save_probs=True, extras=["tests.predict_fixtures:extra_layers"]
    )
    tifs = [f for f in s["outputs"] if f.endswith(".tif")]
    assert len(tifs) == 7  # class, maxprob, entropy, gap, probs and the two --extra layers
    for f in tifs:
        assert _cog_problems(str(tmp_path / f)) == [], f
        with rasterio.open(str(tmp_path / f)) as ds:
            assert ds.overviews(1) == [2, 4] and ds.block_shapes[0] == (128, 128)  # 300 -> 150 -> 75 rows
    with rasterio.open(str(tmp_path / f"{src.name}_class.tif")) as ds:
        full, small = ds.read(1), ds.read(1, out_shape=(75, 68))  # the coarsest overview
        assert ds.colormap(1)[0] == tuple(classes.class_colors()[0]) + (255,)
    assert set(np.unique(small)) <= set(np.unique(full))  # nearest: class ids that exist, never averages
    with rasterio.open(str(tmp_path / f"{src.name}_maxprob.tif")) as ds:
        half = ds.read(1, out_shape=(150, 135))
    valid = ~np.isnan(half)
    assert valid.any() and (half[valid] <= 1).all() and (half[valid] >= 1 / K).all()


@pytest.mark.slow
def test_chunked_equals_unchunked_and_reads_stay_chunk_sized(predictor, tmp_path):
    src = ArrayTile.random(380, 500, predictor.channels, np.random.default_rng(2))
    src.valid[330:, 450:] = False
    run_tile(predictor, src, tmp_path / "one", chunk_size=512, save_probs=True, probs_dtype="float32")
    one_read = src.max_read
    src.max_read = 0
    s = run_tile(predictor, src, tmp_path / "many", chunk_size=128, save_probs=True, probs_dtype="float32")
    assert s["chunks"] == 3 * 4 and one_read == 380 * 500
    # a chunk reads itself plus at most one window of margin on each side
    assert src.max_read <= (128 + 2 * 120) ** 2 < one_read
    a = read_band(str(tmp_path / "one" / f"{src.name}_probs.tif"))
    b = read_band(str(tmp_path / "many" / f"{src.name}_probs.tif"))
    np.testing.assert_allclose(a, b, rtol=0, atol=2e-6, equal_nan=True)
    ca = read_band(str(tmp_path / "one" / f"{src.name}_class.tif"), 1)
    cb = read_band(str(tmp_path / "many" / f"{src.name}_class.tif"), 1)
    assert (ca == cb).mean() > 0.9999  # a near-tie may flip at float-summation precision
    assert len(np.unique(ca[ca != 255])) > 1


def test_no_seams_at_window_borders(predictor, tmp_path):
    """On a spatially constant tile the blended probabilities vary smoothly: no jump at any
    window or chunk border bigger than the jumps inside windows."""
    h, w = 260, 260
    pix = np.broadcast_to(np.asarray([1000.0 + 400 * c for c in range(12)], np.float32), (h, w, 12)).copy()
    src = ArrayTile(pix, np.ones((h, w), bool), predictor.channels)
    run_tile(predictor, src, tmp_path, chunk_size=128, save_probs=True, probs_dtype="float32")
    probs = np.moveaxis(read_band(str(tmp_path / f"{src.name}_probs.tif")), 0, -1)
    # without blending, edges of 120-px windows on a constant input differ from their centre:
    # the blended cube stays close to the windows' common centre prediction everywhere inside
    step_r = np.abs(np.diff(probs, axis=0)).max()
    step_c = np.abs(np.diff(probs, axis=1)).max()
    raw = predictor.run_batch(predictor.preprocess(pix[:120, :120].copy(), np.ones((120, 120), bool))[None])[0]
    raw_step = max(np.abs(np.diff(raw, axis=0)).max(), np.abs(np.diff(raw, axis=1)).max())
    assert max(step_r, step_c) <= raw_step + 1e-6


def test_windows_without_data_are_skipped_and_an_empty_tile_maps_to_nodata(predictor, tmp_path):
    src = ArrayTile.random(256, 256, predictor.channels, np.random.default_rng(3))
    src.valid[:] = False
    s = run_tile(predictor, src, tmp_path, chunk_size=256)
    assert s["windows_run"] == 0 and s["valid_pixels"] == 0
    assert (read_band(str(tmp_path / f"{src.name}_class.tif"), 1) == 255).all()


def test_extra_layers_are_written_per_chunk_and_bad_specs_are_clear(predictor, tmp_path):
    src = ArrayTile.random(200, 200, predictor.channels, np.random.default_rng(4))
    src.valid[:10] = False
    extras = [load_extra("tests.predict_fixtures:extra_layers")]
    run_tile(predictor, src, tmp_path, chunk_size=128, save_probs=True, probs_dtype="float32", extras=extras)
    probs = np.moveaxis(read_band(str(tmp_path / f"{src.name}_probs.tif")), 0, -1)
    pw = read_band(str(tmp_path / f"{src.name}_p_water.tif"), 1)
    with rasterio.open(str(tmp_path / f"{src.name}_p_water.tif")) as ds:
        assert ds.transform == src.transform and ds.dtypes[0] == "float32"
    np.testing.assert_allclose(pw[10:], probs[10:, :, 17] + probs[10:, :, 18], atol=1e-6)
    assert np.isnan(pw[:10]).all()
    np.testing.assert_array_equal(
        read_band(str(tmp_path / f"{src.name}_top_class_x2.tif"), 1)[10:],
        read_band(str(tmp_path / f"{src.name}_class.tif"), 1)[10:] * 2.0,
    )
    cm = json.loads((tmp_path / f"{src.name}_classmap.json").read_text())
    assert "p_water" in cm["layers"]
    f = tmp_path / "mylayers.py"
    f.write_text("def conf(p):\n    return p.max(-1)\n")
    assert load_extra(f"{f}:conf").fn.__name__ == "conf"
    for spec, msg in [
        ("nocolon", "module:function"),
        ("no_such_module_x:f", "cannot import"),
        ("tests.predict_fixtures:nope", "no function 'nope'"),
        (f"{tmp_path}/missing.py:f", "does not exist"),
    ]:
        with pytest.raises(PredictError, match=msg):
            load_extra(spec)
    with pytest.raises(PredictError, match="2-D array"):
        run_tile(predictor, src, tmp_path / "bad", chunk_size=128, extras=["tests.predict_fixtures:bad_extra"])


def test_an_interrupted_run_leaves_no_finished_looking_output(predictor, tmp_path):
    calls = []

    def boom(probs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return probs[..., 0]

    src = ArrayTile.random(256, 256, predictor.channels, np.random.default_rng(5))
    with pytest.raises(KeyboardInterrupt):
        run_tile(predictor, src, tmp_path, chunk_size=128, extras=[Extra("x:boom", boom)])
    assert os.listdir(tmp_path) == []
