"""``benbeam predict --model <authors' classifier>``: synthetic tiles mapped end to end (folder and
offline hub id), window probabilities checked against the authors' preprocessing computed from
the tile's own JPEG 2000 bands, the nearest / blended maps, chunking, the Beam path through
``RunInference``, and the flag errors."""

import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.pretrained_fixtures import hub_cache, save_authors_model, timm_reference, torch

rasterio = pytest.importorskip("rasterio")

from bigearthnet_beam.pretrained import load  # noqa: E402
from bigearthnet_beam.schemas.classes import CLASS_NAMES  # noqa: E402
from bigearthnet_beam.trainer.inference.grid import blend_weights, window_starts  # noqa: E402
from bigearthnet_beam.trainer.inference.pretrained_predictor import WindowClassifier  # noqa: E402
from bigearthnet_beam.trainer.pretrained import authors  # noqa: E402
from tests.predict_fixtures import last_err_line, predict_cli  # noqa: E402
from tests.test_pretrained import independent_input  # noqa: E402

LEX = sorted(CLASS_NAMES)
NAME = "T32TQR_20240715T101031"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("pmodels")
    return {
        "s2": save_authors_model(str(root / "s2"), "test_resnet", 10, seed=11),
        "s1s2": save_authors_model(str(root / "s1s2"), "test_convnext", 12, seed=12),
    }


@pytest.fixture(scope="module")
def tile(tmp_path_factory):
    from bigearthnet_beam.synth.tiles import make_tile

    d = tmp_path_factory.mktemp("ptiles")
    return make_tile(str(d / "in"), size=360, seed=5, s1=True)


def reference_probs(folder: str, raw: dict, bands) -> np.ndarray:
    """Canonical-order sigmoid probabilities of raw native-resolution bands, computed without project code."""
    net = timm_reference(folder)
    with torch.no_grad():
        p = torch.sigmoid(net(torch.from_numpy(independent_input(raw, bands)))).numpy()
    return p[:, [LEX.index(n) for n in CLASS_NAMES]]


def raw_window(tile: dict, bands, r: int, c: int) -> dict:
    """Band values of the 120-px window at (r, c) read from the SAFE's JPEG 2000 files at native
    resolution (minus the product's BOA_ADD_OFFSET), S1 from its raster: the authors' patch."""
    from rasterio.windows import Window

    from bigearthnet_beam.trainer.tiles import read_offsets

    offsets, _ = read_offsets(tile["path"])
    out = {}
    for b in bands:
        if b in ("VV", "VH"):
            with rasterio.open(tile["s1"]) as ds:
                out[b] = ds.read(1 + ("VV", "VH").index(b), window=Window(c, r, 120, 120))[None].astype(np.float32)
            continue
        (path,) = glob.glob(os.path.join(tile["path"], "GRANULE", "*", "IMG_DATA", "R*m", f"*_{b}_*m.jp2"))
        f = 2 if path.endswith("_20m.jp2") else 1
        with rasterio.open(path) as ds:
            v = ds.read(1, window=Window(c // f, r // f, 120 // f, 120 // f)).astype(np.float32)
        out[b] = (v + np.float32(offsets.get(b, 0.0)))[None]
    return out


# --------------------------------------------------------------------------- end to end through the command


@pytest.mark.slow  # predict end to end through the command
def test_tile_windows_are_the_authors_patches(models, tile, tmp_path):
    out = tmp_path / "out"
    argv = ["--model", models["s2"], "--tile", tile["path"], "--out", out, "--save_probs", "--probs_dtype", "float32"]
    assert predict_cli(argv) == 0
    again = tmp_path / "again"
    assert predict_cli([*argv[:5], again, *argv[6:]]) == 0
    for layer in ("class", "maxprob", "entropy", "gap", "probs"):  # deterministic: the same bytes twice
        assert (out / f"{NAME}_{layer}.tif").read_bytes() == (again / f"{NAME}_{layer}.tif").read_bytes(), layer
    with rasterio.open(out / f"{NAME}_probs.tif") as ds:
        probs = ds.read()  # (19, H, W)
    with rasterio.open(out / f"{NAME}_class.tif") as ds:
        cls = ds.read(1)
    bands = authors.BANDS_FOR_CHANNELS[10]
    for i, j in [(0, 0), (1, 2), (2, 2)]:
        want = reference_probs(models["s2"], raw_window(tile, bands, 120 * i, 120 * j), bands)[0]
        block = probs[:, 120 * i : 120 * i + 120, 120 * j : 120 * j + 120]
        assert (block == block[:, :1, :1]).all()  # nearest: one window's values over its whole block
        np.testing.assert_allclose(block[:, 0, 0], want, atol=2e-6)
        assert (cls[120 * i : 120 * i + 120, 120 * j : 120 * j + 120] == np.argmax(want)).all()
    s = json.loads((out / f"{NAME}_summary.json").read_text())
    assert s["windows_run"] == 9 and s["windows_skipped"] == 0 and s["device"] == "CPU"
    assert s["channels"] == list(bands) and s["overlap"] == 0
    cm = json.loads((out / f"{NAME}_classmap.json").read_text())
    assert "independent" in cm["layers"]["probs"] and "19 ln 2" in cm["layers"]["entropy"]
    with rasterio.open(out / f"{NAME}_entropy.tif") as ds:
        assert "H(p)" in ds.tags()["layer"]
    assert (out / "preview.png").stat().st_size > 0


@pytest.mark.slow  # predict end to end through the command
def test_s1_s2_model_from_the_hub_cache_offline(models, tile, tmp_path):
    """The real ``benbeam`` entry point, a hub id resolved from a filled cache with HF_HUB_OFFLINE=1."""
    cache = tmp_path / "hub"
    hub_cache(str(cache), "BIFOLD-Test/tiny-convnext-s1s2", models["s1s2"])
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "o"
    argv = ["predict", "--model", "BIFOLD-Test/tiny-convnext-s1s2@main", "--tile", tile["path"], "--s1", tile["s1"]]
    argv += ["--out", out, "--save_probs", "--probs_dtype", "float32", "--stride", 60, "--window_map", "blend"]
    r = subprocess.run(
        [sys.executable, "-m", "bigearthnet_beam", *map(str, argv)], env=env, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr[-2000:]
    with rasterio.open(out / f"{NAME}_probs.tif") as ds:
        probs = ds.read()
    # blend: a pixel is the Hann-weighted mean of the windows over it (stride 60: up to 4 windows)
    bands = authors.BANDS_FOR_CHANNELS[12]
    starts = window_starts(360, 120, 60)
    w2 = blend_weights(120)
    for y, x in [(30, 30), (100, 170), (359, 200)]:
        acc, wsum = np.zeros(19), 0.0
        for r0 in starts[(starts <= y) & (starts + 120 > y)]:
            for c0 in starts[(starts <= x) & (starts + 120 > x)]:
                w = float(w2[y - r0, x - c0])
                acc += w * reference_probs(models["s1s2"], raw_window(tile, bands, int(r0), int(c0)), bands)[0]
                wsum += w
        np.testing.assert_allclose(probs[:, y, x], acc / wsum, atol=1e-5)
    s = json.loads((out / f"{NAME}_summary.json").read_text())
    assert s["windows_run"] == 25 and s["model"] == "BIFOLD-Test/tiny-convnext-s1s2@main"


# --------------------------------------------------------------------------- in memory: chunking, no data


class ArrayTile:
    """A TileSource over in-memory arrays."""

    def __init__(self, pixels, valid, channels):
        from affine import Affine
        from rasterio.crs import CRS

        self.pixels, self.valid, self.channels = pixels.astype(np.float32), valid, tuple(channels)
        self.name, self.height, self.width = "T00XXX_mem", *pixels.shape[:2]
        self.crs, self.transform = CRS.from_epsg(32632), Affine(10.0, 0.0, 600000.0, 0.0, -10.0, 5000000.0)
        self.warnings, self.path = [], ""

    def read(self, window):
        r0, c0, h, w = int(window.row_off), int(window.col_off), int(window.height), int(window.width)
        return self.pixels[r0 : r0 + h, c0 : c0 + w].copy(), self.valid[r0 : r0 + h, c0 : c0 + w].copy()


def _array_tile(channels, h=380, w=500, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(600 + 300 * k) * (1.5 + np.sin(yy / (17 + k)) * np.cos(xx / 29)) for k in range(len(channels))])
    return ArrayTile(
        base.transpose(1, 2, 0) + rng.normal(0, 30, (h, w, len(channels))), np.ones((h, w), bool), channels
    )


@pytest.mark.slow  # maps a tile twice per blending mode
@pytest.mark.parametrize("window_map", ["nearest", "blend"])
def test_chunking_does_not_change_the_maps(models, tmp_path, window_map):
    from bigearthnet_beam.trainer.inference.tile import predict_tile

    m = load(models["s2"])
    src = _array_tile(m.bands)
    outs = []
    for chunk in (128, 512):
        pred = WindowClassifier(m, overlap=20, window_map=window_map, batch_size=7)
        d = tmp_path / f"{window_map}{chunk}"
        predict_tile(pred, src, str(d), chunk_size=chunk, save_probs=True, probs_dtype="float32", progress=None)
        with rasterio.open(d / "T00XXX_mem_probs.tif") as ds:
            outs.append(ds.read())
    if window_map == "nearest":
        np.testing.assert_array_equal(outs[0], outs[1])
    else:
        np.testing.assert_allclose(outs[0], outs[1], atol=1e-6)
    assert np.isfinite(outs[0]).all() and np.ptp(outs[0]) > 0.01


def test_windows_without_data_are_skipped(models, tmp_path):
    from bigearthnet_beam.trainer.inference.tile import predict_tile

    m = load(models["s2"])
    src = _array_tile(m.bands, h=360, w=360)
    src.valid[:, :150] = False  # columns 0..149: windows at x = 0 hold no data; x = 120 still some
    pred = WindowClassifier(m)
    s = predict_tile(pred, src, str(tmp_path / "o"), chunk_size=128, progress=None)
    assert s["windows_run"] == 6 and s["windows_skipped"] == 3
    with rasterio.open(tmp_path / "o" / "T00XXX_mem_class.tif") as ds:
        cls = ds.read(1)
    assert (cls[:, :150] == 255).all() and (cls[:, 150:] < 19).all()
    # the table: NaN for the skipped windows, the model's probabilities elsewhere
    table = pred.window_table(src, window_starts(360, 120, 0), window_starts(360, 120, 0))
    assert np.isnan(table[:, 0]).all() and np.isfinite(table[:, 1:]).all()
    from rasterio.windows import Window

    x = pred.normalise_strip(*src.read(Window(0, 0, 360, 120)))[:, 240:360]
    np.testing.assert_allclose(table[0, 2], m.proba_normalised(x.transpose(2, 0, 1)[None])[0], atol=1e-6)


# --------------------------------------------------------------------------- Beam: RunInference


@pytest.mark.slow
def test_beam_path_runs_inference_with_the_pytorch_handler(models, tile, tmp_path):
    import apache_beam as beam
    from apache_beam.ml.inference.base import KeyedModelHandler, RunInference
    from apache_beam.ml.inference.pytorch_inference import PytorchModelHandlerTensor

    from bigearthnet_beam.trainer.inference.pretrained_beam import WindowModelHandler, build_pretrained
    from bigearthnet_beam.trainer.inference.settings import PredictSettings

    # the graph: RunInference around Beam's PyTorch handler (keyed by tile and window)
    p = beam.Pipeline()
    build_pretrained(p, [tile["path"]], PredictSettings(model=models["s2"], out=str(tmp_path / "g"), overlap=0), ())
    found = []

    class V(beam.pipeline.PipelineVisitor):
        def enter_composite_transform(self, node):
            if isinstance(node.transform, RunInference):
                found.append(node.transform._model_handler)

    p.visit(V())
    assert len(found) == 1 and isinstance(found[0], KeyedModelHandler)
    assert isinstance(found[0]._unkeyed, (WindowModelHandler, PytorchModelHandlerTensor))

    # two tiles through the pipeline: the same maps as the plain command
    from bigearthnet_beam.synth.tiles import make_tile

    d = tmp_path / "in"
    make_tile(str(d), size=240, seed=8, tile="33UUP")
    make_tile(str(d), size=360, seed=5)
    assert predict_cli(["--model", models["s2"], "--input_dir", d, "--out", tmp_path / "b", "--save_probs"]) == 0
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert summary["mapped"] == 2 and summary["failed"] == 0
    assert predict_cli(["--model", models["s2"], "--tile", tile["path"], "--out", tmp_path / "t", "--save_probs"]) == 0
    for layer in ("probs", "class"):
        with (
            rasterio.open(tmp_path / "b" / NAME / f"{NAME}_{layer}.tif") as a,
            rasterio.open(tmp_path / "t" / f"{NAME}_{layer}.tif") as b,
        ):
            diff = np.abs(a.read().astype(np.int16) - b.read().astype(np.int16))
            assert diff.max() <= (1 if layer == "probs" else 0), layer  # uint8 probabilities: batching may round
    assert (tmp_path / "b" / "viewer.html").exists()
    # --benchmark: the tiles one after the other, the report and the viewer
    assert predict_cli(["--model", models["s2"], "--input_dir", d, "--out", tmp_path / "bm", "--benchmark"]) == 0
    report = (tmp_path / "bm" / "benchmark_report.csv").read_text().splitlines()
    assert len(report) == 3 and (tmp_path / "bm" / "viewer.html").exists()


def test_classifier_flag_errors(models, tile, tmp_path, capsys):
    base = ["--tile", tile["path"], "--out", tmp_path / "out"]
    cases = [
        (["--model", models["s2"], *base, "--stride", 119], 2, "even stride"),
        (["--model", models["s2"], *base, "--stride", 121], 2, "--stride: must be a window step in 60..120"),
        (["--model", models["s2"], *base, "--stride", 60, "--overlap", 60], 2, "not both"),
        (["--model", tmp_path / "u.keras", *base, "--stride", 60], 2, "authors' classifier"),
        (["--model", models["s1s2"], *base], 2, "--s1"),
    ]
    if not torch.cuda.is_available():
        cases.append((["--model", models["s2"], *base, "--device", "cuda"], 3, "no CUDA GPU"))
    for argv, code, words in cases:
        assert predict_cli(argv) == code, argv
        line = last_err_line(capsys)
        assert line.startswith("benbeam predict: error:") and words in line, (argv, line)
    assert not (tmp_path / "out").exists() or not glob.glob(str(tmp_path / "out" / "*.tif"))
