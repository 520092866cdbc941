"""``benbeam predict``: the window grid and blending, the layers' definitions, chunked =
unchunked, georeferencing, nodata, --extra, temporary names, the CLI's user errors, a
model trained on synthetic patches mapping a synthetic tile, the benchmark's viewer in a
real Chromium, and the Beam pipeline giving the same bytes as the plain command.

Models are narrow (width 4–8) and tiles a few hundred pixels, so the module runs in
about a minute or two on two CPU cores.
"""

import json
import os
import pickle

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
rasterio = pytest.importorskip("rasterio")
from affine import Affine  # noqa: E402
from rasterio.crs import CRS  # noqa: E402

from schemas import bands as band_table  # noqa: E402
from schemas import classes  # noqa: E402
from trainer.inference.grid import BLEND_FLOOR, blend_weights, check_chunk_size, window_starts  # noqa: E402
from trainer.inference.layers import entropy, layers_from_probs, probs_for_file  # noqa: E402
from trainer.inference.plugins import Extra, load_extra  # noqa: E402
from trainer.inference.predictor import Predictor  # noqa: E402
from trainer.inference.settings import PREVIEW, REPORT_CSV, VIEWER, PredictError  # noqa: E402
from trainer.inference.staging import s1_sidecar  # noqa: E402
from trainer.inference.tile import predict_tile  # noqa: E402
from trainer.model import INFO_FORMAT, INFO_VERSION, build_unet, save_model  # noqa: E402

K = classes.NUM_CLASSES


# --------------------------------------------------------------------------- stand-ins


class ArrayTile:
    """A TileSource over in-memory arrays (the interface of ``trainer.tiles.TileSource``);
    counts reads and the largest read so tests can check what predict asks for."""

    def __init__(self, pixels, valid, channels, name="T32TQR_20240715T101031"):
        self.pixels, self.valid = pixels.astype(np.float32), valid.astype(bool)
        self.channels = tuple(channels)
        self.name = name
        self.height, self.width = pixels.shape[:2]
        self.crs = CRS.from_epsg(32632)
        self.transform = Affine(10.0, 0.0, 699960.0, 0.0, -10.0, 5000040.0)
        self.warnings = []
        self.reads, self.max_read = 0, 0

    @classmethod
    def random(cls, h, w, channels, rng, **kw):
        """Smooth blobs of a few raw-unit levels plus noise (so the model's output varies)."""
        yy, xx = np.mgrid[0:h, 0:w]
        field = np.sin(yy / 37.0) + np.cos(xx / 23.0) + 0.5 * np.sin((xx + yy) / 11.0)
        base = np.stack([(1000 + 400 * c) * (1.2 + 0.5 * field) for c in range(len(channels))], -1)
        pix = base + rng.normal(0, 50, base.shape)
        return cls(pix, np.ones((h, w), bool), channels, **kw)

    def read(self, window):
        """The window's (pixels, valid), counting the read."""
        r0, c0, h, w = int(window.row_off), int(window.col_off), int(window.height), int(window.width)
        assert r0 >= 0 and c0 >= 0 and r0 + h <= self.height and c0 + w <= self.width, window
        self.reads += 1
        self.max_read = max(self.max_read, h * w)
        return self.pixels[r0 : r0 + h, c0 : c0 + w].copy(), self.valid[r0 : r0 + h, c0 : c0 + w].copy()

    def close(self):
        """Nothing to close."""
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


def fake_info(channels=band_table.S2_NAMES) -> dict:
    """A valid inference contract for ``channels`` (no trained model behind it)."""
    stats = {}
    for c in band_table.ALL_NAMES:
        i = band_table.ALL_NAMES.index(c)
        mean = 1000.0 + 400 * i
        stats[c] = {
            "count": 100,
            "mean": mean,
            "std": 500.0,
            "p_low": mean - 1500,
            "p_high": mean + 1500,
            "clipped_mean": mean,
            "clipped_std": 450.0,
        }
    return {
        "format": INFO_FORMAT,
        "version": INFO_VERSION,
        "modalities": "s2",
        "channels": list(channels),
        "input_shape": [band_table.PATCH_SIZE, band_table.PATCH_SIZE, len(channels)],
        "task": "seg",
        "classes": list(classes.CLASS_NAMES),
        "class_colors": [list(c) for c in classes.class_colors()],
        "ignore_index": classes.IGNORE_INDEX,
        "statistics": {"clip": True, "bands": stats},
        "image_dtype": "float32",
    }


def tiny_model(width=4, channels=band_table.S2_NAMES, seed=0):
    """An untrained narrow U-Net carrying a valid inference contract."""
    import keras

    keras.utils.set_random_seed(seed)
    info = fake_info(channels)
    return build_unet(len(channels), width=width, depth=2, info=info), info


@pytest.fixture(scope="module")
def predictor():
    """A Predictor over an untrained narrow U-Net."""
    model, info = tiny_model()
    return Predictor(model, info, batch_size=8, overlap=32)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """That U-Net saved as .keras."""
    model, _ = tiny_model()
    path = str(tmp_path_factory.mktemp("model") / "tiny.keras")
    save_model(model, path)
    return path


def _read(path, *bands):
    with rasterio.open(path) as ds:
        return ds.read(*bands) if bands else ds.read()


def _run_tile(predictor, src, out, **kw):
    kw.setdefault("progress", None)
    return predict_tile(predictor, src, str(out), **kw)


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
    s = _run_tile(predictor, src, tmp_path, chunk_size=128, save_probs=True, probs_dtype="float32")
    stem = tmp_path / src.name
    for layer in ("class", "maxprob", "entropy", "gap", "probs"):
        with rasterio.open(f"{stem}_{layer}.tif") as ds:
            assert ds.crs == src.crs and ds.transform == src.transform
            assert (ds.width, ds.height) == (src.width, src.height)
            assert ds.profile["tiled"] and ds.profile["compress"] == "deflate"
            assert ds.nodata is not None
    probs = np.moveaxis(_read(f"{stem}_probs.tif"), 0, -1)
    cls = _read(f"{stem}_class.tif", 1)
    valid = src.valid
    np.testing.assert_allclose(probs[valid].sum(-1), 1.0, atol=1e-5)
    ref = layers_from_probs(np.nan_to_num(probs), valid)
    np.testing.assert_array_equal(cls, ref["class"])
    for layer in ("maxprob", "entropy", "gap"):
        np.testing.assert_allclose(_read(f"{stem}_{layer}.tif", 1), ref[layer], rtol=0, atol=2e-6)
    p64 = probs[valid].astype(np.float64)
    srt = np.sort(p64, -1)
    np.testing.assert_allclose(_read(f"{stem}_maxprob.tif", 1)[valid], srt[:, -1], atol=1e-7)
    np.testing.assert_allclose(_read(f"{stem}_gap.tif", 1)[valid], srt[:, -1] - srt[:, -2], atol=1e-6)
    np.testing.assert_allclose(
        _read(f"{stem}_entropy.tif", 1)[valid], -(p64 * np.log(np.maximum(p64, 1e-300))).sum(-1), rtol=1e-5, atol=1e-6
    )
    assert (cls[~valid] == 255).all() and np.isnan(probs[~valid]).all()
    assert np.isnan(_read(f"{stem}_entropy.tif", 1)[~valid]).all()
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
    s = _run_tile(
        predictor, src, tmp_path, chunk_size=128, save_probs=True, extras=["tests.test_predict:_extra_layers"]
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
    _run_tile(predictor, src, tmp_path / "one", chunk_size=512, save_probs=True, probs_dtype="float32")
    one_read = src.max_read
    src.max_read = 0
    s = _run_tile(predictor, src, tmp_path / "many", chunk_size=128, save_probs=True, probs_dtype="float32")
    assert s["chunks"] == 3 * 4 and one_read == 380 * 500
    # a chunk reads itself plus at most one window of margin on each side
    assert src.max_read <= (128 + 2 * 120) ** 2 < one_read
    a = _read(str(tmp_path / "one" / f"{src.name}_probs.tif"))
    b = _read(str(tmp_path / "many" / f"{src.name}_probs.tif"))
    np.testing.assert_allclose(a, b, rtol=0, atol=2e-6, equal_nan=True)
    ca = _read(str(tmp_path / "one" / f"{src.name}_class.tif"), 1)
    cb = _read(str(tmp_path / "many" / f"{src.name}_class.tif"), 1)
    assert (ca == cb).mean() > 0.9999  # a near-tie may flip at float-summation precision
    assert len(np.unique(ca[ca != 255])) > 1


def test_no_seams_at_window_borders(predictor, tmp_path):
    """On a spatially constant tile the blended probabilities vary smoothly: no jump at any
    window or chunk border bigger than the jumps inside windows."""
    h, w = 260, 260
    pix = np.broadcast_to(np.asarray([1000.0 + 400 * c for c in range(12)], np.float32), (h, w, 12)).copy()
    src = ArrayTile(pix, np.ones((h, w), bool), predictor.channels)
    _run_tile(predictor, src, tmp_path, chunk_size=128, save_probs=True, probs_dtype="float32")
    probs = np.moveaxis(_read(str(tmp_path / f"{src.name}_probs.tif")), 0, -1)
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
    s = _run_tile(predictor, src, tmp_path, chunk_size=256)
    assert s["windows_run"] == 0 and s["valid_pixels"] == 0
    assert (_read(str(tmp_path / f"{src.name}_class.tif"), 1) == 255).all()


def _extra_layers(probs):
    return {"p_water": probs[..., 17] + probs[..., 18], "top_class_x2": np.argmax(probs, -1) * 2}


def _bad_extra(probs):
    return probs[..., :2]


def test_extra_layers_are_written_per_chunk_and_bad_specs_are_clear(predictor, tmp_path):
    src = ArrayTile.random(200, 200, predictor.channels, np.random.default_rng(4))
    src.valid[:10] = False
    extras = [load_extra("tests.test_predict:_extra_layers")]
    _run_tile(predictor, src, tmp_path, chunk_size=128, save_probs=True, probs_dtype="float32", extras=extras)
    probs = np.moveaxis(_read(str(tmp_path / f"{src.name}_probs.tif")), 0, -1)
    pw = _read(str(tmp_path / f"{src.name}_p_water.tif"), 1)
    with rasterio.open(str(tmp_path / f"{src.name}_p_water.tif")) as ds:
        assert ds.transform == src.transform and ds.dtypes[0] == "float32"
    np.testing.assert_allclose(pw[10:], probs[10:, :, 17] + probs[10:, :, 18], atol=1e-6)
    assert np.isnan(pw[:10]).all()
    np.testing.assert_array_equal(
        _read(str(tmp_path / f"{src.name}_top_class_x2.tif"), 1)[10:],
        _read(str(tmp_path / f"{src.name}_class.tif"), 1)[10:] * 2.0,
    )
    cm = json.loads((tmp_path / f"{src.name}_classmap.json").read_text())
    assert "p_water" in cm["layers"]
    f = tmp_path / "mylayers.py"
    f.write_text("def conf(p):\n    return p.max(-1)\n")
    assert load_extra(f"{f}:conf").fn.__name__ == "conf"
    for spec, msg in [
        ("nocolon", "module:function"),
        ("no_such_module_x:f", "cannot import"),
        ("tests.test_predict:nope", "no function 'nope'"),
        (f"{tmp_path}/missing.py:f", "does not exist"),
    ]:
        with pytest.raises(PredictError, match=msg):
            load_extra(spec)
    with pytest.raises(PredictError, match="2-D array"):
        _run_tile(predictor, src, tmp_path / "bad", chunk_size=128, extras=["tests.test_predict:_bad_extra"])


def test_an_interrupted_run_leaves_no_finished_looking_output(predictor, tmp_path):
    calls = []

    def boom(probs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return probs[..., 0]

    src = ArrayTile.random(256, 256, predictor.channels, np.random.default_rng(5))
    with pytest.raises(KeyboardInterrupt):
        _run_tile(predictor, src, tmp_path, chunk_size=128, extras=[Extra("x:boom", boom)])
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------- real tiles, through the command line


def _cli(argv):
    from trainer.inference.cli import run

    return run([str(a) for a in argv])


def _last_err(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    return err[-1] if err else ""


@pytest.fixture(scope="module")
def synthetic_model(tmp_path_factory):
    """synth 300 patches → convert → train a narrow S2 U-Net (the real commands, in-process)."""
    from beam_pipeline.cli import main
    from trainer.config import TrainConfig
    from trainer.train import train

    d = tmp_path_factory.mktemp("synthetic")
    assert main(["synth", "--out", str(d / "reben"), "--n", "300", "--seed", "0", "--workers", "2"]) == 0
    assert (
        main(
            [
                "convert",
                "--meta",
                str(d / "reben" / "metadata.parquet"),
                "--out",
                str(d / "ds"),
                "--shard_size",
                "64",
                "--workers",
                "2",
            ]
        )
        == 0
    )
    save = str(d / "run" / "unet.keras")
    # deterministic: the same weights in every run, so the accuracy below is the same in CI as here
    train(
        TrainConfig(
            data=str(d / "ds"),
            save=save,
            epochs=8,
            batch=8,
            lr=1e-2,
            width=8,
            modalities="s2",
            tensorboard=False,
            verbose=0,
            max_val_patches=16,
            deterministic=True,
        )
    )
    return save


@pytest.fixture(scope="module")
def s1_model_file(tmp_path_factory):
    """An untrained narrow U-Net reading S2 and S1, saved."""
    model, _ = tiny_model(channels=band_table.ALL_NAMES)
    path = str(tmp_path_factory.mktemp("s1model") / "s2s1.keras")
    save_model(model, path)
    return path


@pytest.mark.slow
def test_model_trained_on_synthetic_patches_maps_a_synthetic_safe_tile_well_above_chance(
    synthetic_model, tmp_path, capsys
):
    from synth.tiles import make_tile

    t = make_tile(str(tmp_path / "tiles"), size=360, seed=1, layout="safe")
    out = tmp_path / "out"
    assert _cli(["--model", synthetic_model, "--tile", t["path"], "--out", out, "--chunk_size", 256]) == 0
    cap = capsys.readouterr()
    assert "4/4 chunks (100%)" in cap.err and "ETA" in cap.err and "px/s" in cap.out and "peak memory" in cap.out
    cls = _read(str(out / f"{t['name']}_class.tif"), 1)
    truth = _read(t["truth"], 1)
    with rasterio.open(str(out / f"{t['name']}_class.tif")) as a, rasterio.open(t["truth"]) as b:
        assert a.crs == b.crs == t["crs"] and a.transform == b.transform == t["transform"]
        assert a.shape == b.shape
    m = truth != 255
    acc = float((cls[m] == truth[m]).mean())
    majority = np.bincount(truth[m]).max() / m.sum()
    print(f"pixel accuracy {acc:.3f}, majority class {majority:.3f}")
    assert acc > max(0.6, majority + 0.15), (acc, majority)  # chance: 1/19; always the majority class: ~0.4


def test_s2_s1_model_reads_the_s1_raster_or_refuses_clearly(s1_model_file, tmp_path, capsys):
    from synth.tiles import make_tile

    t = make_tile(str(tmp_path / "tiles"), size=180, seed=2, layout="geotiff", s1=True, nodata_border=30)
    assert _cli(["--model", s1_model_file, "--tile", t["path"], "--out", tmp_path / "no_s1", "--chunk_size", 128]) == 2
    line = _last_err(capsys)
    assert line.startswith("benbeam predict: error:") and "--s1" in line and "Sentinel-1" in line
    assert not (tmp_path / "no_s1").exists() or not os.listdir(tmp_path / "no_s1")
    out = tmp_path / "out"
    assert (
        _cli(
            [
                "--model",
                s1_model_file,
                "--tile",
                t["path"],
                "--s1",
                t["s1"],
                "--out",
                out,
                "--chunk_size",
                128,
                "--save_probs",
            ]
        )
        == 0
    )
    for layer in ("class", "maxprob", "entropy", "gap", "probs"):
        with rasterio.open(str(out / f"{t['name']}_{layer}.tif")) as ds:
            assert ds.crs == t["crs"] and ds.transform == t["transform"] and ds.shape == (180, 180)
    with rasterio.open(str(out / f"{t['name']}_probs.tif")) as ds:
        assert (
            ds.count == K
            and ds.dtypes[0] == "uint8"
            and ds.nodata == 255
            and ds.descriptions[0] == classes.CLASS_NAMES[0]
        )
    cls = _read(str(out / f"{t['name']}_class.tif"), 1)
    assert (cls[:, :30] == 255).all() and (cls[:, 31:] != 255).all()  # the nodata border, and only it
    assert s1_sidecar(t["path"]) == t["s1"]
    summary = json.loads((out / f"{t['name']}_summary.json").read_text())
    assert summary["channels"] == list(band_table.ALL_NAMES) and summary["pixels"] == 180 * 180


def test_user_errors_exit_2_with_one_clear_line(model_file, tmp_path, capsys):
    from synth.tiles import make_tile

    t = make_tile(str(tmp_path / "tiles"), size=180, seed=3, layout="geotiff")
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    few = tmp_path / "three_bands.tif"
    with rasterio.open(t["path"]) as ds:
        prof = dict(ds.profile, count=3)
        data = ds.read([2, 3, 4])
    with rasterio.open(few, "w", **prof) as ds:
        ds.write(data)
        ds.descriptions = ("B02", "B03", "B04")
    base = ["--out", tmp_path / "out", "--chunk_size", 128]
    cases = [
        (["--model", tmp_path / "missing.keras", "--tile", t["path"], *base], "does not exist"),
        (["--model", model_file, "--tile", tmp_path / "nope.tif", *base], "does not exist"),
        (["--model", model_file, "--tile", few, *base], "lacks bands"),
        (["--model", model_file, "--tile", t["path"], "--out", blocker / "sub"], "cannot write to --out"),
        (
            ["--model", model_file, "--tile", t["path"], "--out", tmp_path / "o2", "--chunk_size", 100],
            "multiple of 128",
        ),
        (["--model", model_file, "--tile", t["path"], *base, "--extra", "nocolon"], "module:function"),
        (["--model", model_file, "--tile", t["path"], *base, "--overlap", 120], "--overlap"),
        (["--model", model_file, "--input_dir", tmp_path / "empty_dir_missing", *base], "not a folder"),
    ]
    for argv, msg in cases:
        assert _cli(argv) == 2, argv
        line = _last_err(capsys)
        assert line.startswith("benbeam predict: error:") and msg in line, (argv, line)
    assert not (tmp_path / "out").exists() or not [f for f in os.listdir(tmp_path / "out") if f.endswith(".tif")]


# --------------------------------------------------------------------------- benchmark + viewer, Beam


@pytest.fixture(scope="module")
def two_tiles(tmp_path_factory):
    """A GeoTIFF tile and a .SAFE tile in one folder."""
    from synth.tiles import make_tile, tile_ids

    d = tmp_path_factory.mktemp("two_tiles")
    return [
        make_tile(str(d), size=150 + 30 * i, seed=10 + i, tile=tid, layout=("geotiff", "safe")[i])
        for i, tid in enumerate(tile_ids(2))
    ], str(d)


@pytest.mark.slow
def test_benchmark_report_and_viewer_render_every_tile_in_chromium(model_file, two_tiles, tmp_path, capsys):
    import csv

    from tests.browser import render, require_chromium

    require_chromium()
    tiles, d = two_tiles
    out = tmp_path / "bench"
    assert _cli(["--model", model_file, "--input_dir", d, "--out", out, "--benchmark", "--chunk_size", 128]) == 0
    rows = {r["tile"]: r for r in csv.DictReader(open(out / REPORT_CSV))}
    assert sorted(rows) == sorted(t["name"] for t in tiles)
    for t in tiles:
        r = rows[t["name"]]
        n = int(r["pixels"])
        assert n == _read(t["truth"], 1).size
        assert float(r["seconds"]) > 0 and abs(float(r["pixels_per_s"]) * float(r["seconds"]) / n - 1) < 0.01
        assert float(r["peak_memory_mib"]) > 50 and r["device"] == "CPU"
    page = render(out / VIEWER, screenshot=str(tmp_path / "viewer.png"))
    assert page["errors"] == []
    for t in tiles:
        assert t["name"] in page["headings"]
        img = [i for i in page["images"] if i["id"] == f"preview-tile-{t['name']}"]
        assert img and img[0]["loaded"] and img[0]["src"].startswith("data:image/png;base64,"), page["images"]
        link = f"{t['name']}/{t['name']}_class.tif"
        assert link in page["links"] and (out / link).is_file()
    assert len([i for i in page["images"] if i["loaded"]]) == len(tiles)


@pytest.mark.slow
def test_beam_pipeline_gives_the_plain_commands_bytes(model_file, two_tiles, tmp_path, capsys):
    tiles, d = two_tiles
    out = tmp_path / "beam"
    flags = ["--chunk_size", 128, "--batch_size", 4, "--save_probs", "--extra", "tests.test_predict:_extra_layers"]
    assert (
        _cli(
            [
                "--model",
                model_file,
                "--input_dir",
                d,
                "--out",
                out,
                "--runner",
                "DirectRunner",
                "--direct_running_mode",
                "in_memory",
                *flags,
            ]
        )
        == 0
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mapped"] == 2 and summary["failures"] == []
    assert (out / VIEWER).is_file()
    for t in tiles:
        plain = tmp_path / "plain" / t["name"]
        assert _cli(["--model", model_file, "--tile", t["path"], "--out", plain, *flags]) == 0
        files = sorted(f for f in os.listdir(plain) if not f.endswith("_summary.json") and f != ".benbeam-run.json")
        assert len(files) == 9  # 4 layers + probs + 2 extras + classmap + preview
        assert sorted(f for f in os.listdir(out / t["name"]) if not f.endswith("_summary.json")) == files
        for f in files:
            assert (plain / f).read_bytes() == (out / t["name"] / f).read_bytes(), f


def test_beam_transforms_pickle_and_a_bad_tile_becomes_a_dead_letter(model_file, two_tiles, tmp_path):
    import apache_beam as beam
    from apache_beam.testing.test_pipeline import TestPipeline
    from apache_beam.testing.util import assert_that

    from trainer.inference import beam as predict_beam
    from trainer.inference.settings import PredictSettings

    settings = PredictSettings(model=model_file, out=str(tmp_path), chunk_size=128)
    for obj in (
        predict_beam.PredictTileFn(settings),
        predict_beam.PredictTiles(settings),
        predict_beam.Finalize(str(tmp_path)),
    ):
        assert type(pickle.loads(pickle.dumps(obj))) is type(obj)
    bad = tmp_path / "broken.tif"
    bad.write_bytes(b"not a tiff")
    tiles, _ = two_tiles

    def check(results):
        tags = sorted(tag for tag, _ in results)
        assert tags == ["failed", "ok"], results
        dead = [r for tag, r in results if tag == "failed"][0]
        assert dead["tile"] == "broken.tif" and dead["stage"] == "open" and "not a readable raster" in dead["reason"]

    with TestPipeline(argv=["--runner=DirectRunner", "--direct_running_mode=in_memory"]) as p:
        res = p | beam.Create([tiles[0]["path"], str(bad)]) | predict_beam.PredictTiles(settings)
        assert_that(res, check)


@pytest.mark.slow
def test_predict_resamples_tiles_as_the_training_data_was_converted(synthetic_model, tmp_path):
    """The model records convert's --resampling; predict uses it unless --resampling is given."""
    import shutil

    from trainer.inference.tile import model_resampling
    from trainer.model import sidecar_path

    info = json.loads(open(sidecar_path(synthetic_model)).read())
    assert info["resampling"] == "bilinear"  # what convert ran with in the fixture
    assert model_resampling(synthetic_model) == "bilinear"
    other = tmp_path / "m.keras"
    shutil.copy(synthetic_model, other)
    json.dump(dict(info, resampling="cubic"), open(sidecar_path(str(other)), "w"))
    assert model_resampling(str(other)) == "cubic"
    json.dump({k: v for k, v in info.items() if k != "resampling"}, open(sidecar_path(str(other)), "w"))
    assert model_resampling(str(other)) == "bilinear"  # an older model: convert's default
