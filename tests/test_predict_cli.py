"""``benbeam predict`` through the command line on real (synthetic) tiles: a model trained on
synthetic patches mapping a synthetic tile, S1 rasters, user errors, the benchmark's viewer in a
real Chromium, and the Beam pipeline giving the same bytes as the plain command."""

import json
import os
import pickle

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
rasterio = pytest.importorskip("rasterio")

from bigearthnet_beam.schemas import bands as band_table  # noqa: E402
from bigearthnet_beam.schemas import classes  # noqa: E402
from bigearthnet_beam.trainer.inference.settings import REPORT_CSV, VIEWER  # noqa: E402
from bigearthnet_beam.trainer.inference.staging import s1_sidecar  # noqa: E402
from tests.predict_fixtures import (  # noqa: E402
    K,
    last_err_line,
    predict_cli,
    read_band,
    save_tiny_model,
)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """A narrow untrained U-Net saved as .keras."""
    return save_tiny_model(str(tmp_path_factory.mktemp("model") / "tiny.keras"))


# --------------------------------------------------------------------------- real tiles, through the command line


@pytest.fixture(scope="module")
def synthetic_model(tmp_path_factory):
    """synth 300 patches → convert → train a narrow S2 U-Net (the real commands, in-process)."""
    from bigearthnet_beam.beam_pipeline.cli import main
    from bigearthnet_beam.trainer.config import TrainConfig
    from bigearthnet_beam.trainer.train import train

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
    return save_tiny_model(str(tmp_path_factory.mktemp("s1model") / "s2s1.keras"), channels=band_table.ALL_NAMES)


@pytest.mark.slow
def test_model_trained_on_synthetic_patches_maps_a_synthetic_safe_tile_well_above_chance(
    synthetic_model, tmp_path, capsys
):
    from bigearthnet_beam.synth.tiles import make_tile

    t = make_tile(str(tmp_path / "tiles"), size=360, seed=1, layout="safe")
    out = tmp_path / "out"
    assert predict_cli(["--model", synthetic_model, "--tile", t["path"], "--out", out, "--chunk_size", 256]) == 0
    cap = capsys.readouterr()
    assert "4/4 chunks (100%)" in cap.err and "ETA" in cap.err and "px/s" in cap.out and "peak memory" in cap.out
    cls = read_band(str(out / f"{t['name']}_class.tif"), 1)
    truth = read_band(t["truth"], 1)
    with rasterio.open(str(out / f"{t['name']}_class.tif")) as a, rasterio.open(t["truth"]) as b:
        assert a.crs == b.crs == t["crs"] and a.transform == b.transform == t["transform"]
        assert a.shape == b.shape
    m = truth != 255
    acc = float((cls[m] == truth[m]).mean())
    majority = np.bincount(truth[m]).max() / m.sum()
    print(f"pixel accuracy {acc:.3f}, majority class {majority:.3f}")
    assert acc > max(0.6, majority + 0.15), (acc, majority)  # chance: 1/19; always the majority class: ~0.4


def test_s2_s1_model_reads_the_s1_raster_or_refuses_clearly(s1_model_file, tmp_path, capsys):
    from bigearthnet_beam.synth.tiles import make_tile

    t = make_tile(str(tmp_path / "tiles"), size=180, seed=2, layout="geotiff", s1=True, nodata_border=30)
    assert (
        predict_cli(["--model", s1_model_file, "--tile", t["path"], "--out", tmp_path / "no_s1", "--chunk_size", 128])
        == 2
    )
    line = last_err_line(capsys)
    assert line.startswith("benbeam predict: error:") and "--s1" in line and "Sentinel-1" in line
    assert not (tmp_path / "no_s1").exists() or not os.listdir(tmp_path / "no_s1")
    out = tmp_path / "out"
    assert (
        predict_cli(
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
    cls = read_band(str(out / f"{t['name']}_class.tif"), 1)
    assert (cls[:, :30] == 255).all() and (cls[:, 31:] != 255).all()  # the nodata border, and only it
    assert s1_sidecar(t["path"]) == t["s1"]
    summary = json.loads((out / f"{t['name']}_summary.json").read_text())
    assert summary["channels"] == list(band_table.ALL_NAMES) and summary["pixels"] == 180 * 180


def test_user_errors_exit_2_with_one_clear_line(model_file, tmp_path, capsys):
    from bigearthnet_beam.synth.tiles import make_tile

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
        assert predict_cli(argv) == 2, argv
        line = last_err_line(capsys)
        assert line.startswith("benbeam predict: error:") and msg in line, (argv, line)
    assert not (tmp_path / "out").exists() or not [f for f in os.listdir(tmp_path / "out") if f.endswith(".tif")]


# --------------------------------------------------------------------------- benchmark + viewer, Beam


@pytest.fixture(scope="module")
def two_tiles(tmp_path_factory):
    """A GeoTIFF tile and a .SAFE tile in one folder."""
    from bigearthnet_beam.synth.tiles import make_tile, tile_ids

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
    assert predict_cli(["--model", model_file, "--input_dir", d, "--out", out, "--benchmark", "--chunk_size", 128]) == 0
    rows = {r["tile"]: r for r in csv.DictReader(open(out / REPORT_CSV))}
    assert sorted(rows) == sorted(t["name"] for t in tiles)
    for t in tiles:
        r = rows[t["name"]]
        n = int(r["pixels"])
        assert n == read_band(t["truth"], 1).size
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
    flags = ["--chunk_size", 128, "--batch_size", 4, "--save_probs", "--extra", "tests.predict_fixtures:extra_layers"]
    assert (
        predict_cli(
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
        assert predict_cli(["--model", model_file, "--tile", t["path"], "--out", plain, *flags]) == 0
        files = sorted(f for f in os.listdir(plain) if not f.endswith("_summary.json") and f != ".benbeam-run.json")
        # 4 layers + probs + 2 extras + classmap + preview; the GDAL sidecar, 4 QGIS styles and the STAC item
        assert len(files) == 15
        assert sorted(f for f in os.listdir(out / t["name"]) if not f.endswith("_summary.json")) == files
        for f in files:
            assert (plain / f).read_bytes() == (out / t["name"] / f).read_bytes(), f


@pytest.mark.slow
def test_beam_transforms_pickle_and_a_bad_tile_becomes_a_dead_letter(model_file, two_tiles, tmp_path):
    import apache_beam as beam
    from apache_beam.testing.test_pipeline import TestPipeline
    from apache_beam.testing.util import assert_that

    from bigearthnet_beam.trainer.inference import beam as predict_beam
    from bigearthnet_beam.trainer.inference.settings import PredictSettings

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

    from bigearthnet_beam.trainer.inference.tile import model_resampling
    from bigearthnet_beam.trainer.model import sidecar_path

    info = json.loads(open(sidecar_path(synthetic_model)).read())
    assert info["resampling"] == "bilinear"  # what convert ran with in the fixture
    assert model_resampling(synthetic_model) == "bilinear"
    other = tmp_path / "m.keras"
    shutil.copy(synthetic_model, other)
    json.dump(dict(info, resampling="cubic"), open(sidecar_path(str(other)), "w"))
    assert model_resampling(str(other)) == "cubic"
    json.dump({k: v for k, v in info.items() if k != "resampling"}, open(sidecar_path(str(other)), "w"))
    assert model_resampling(str(other)) == "bilinear"  # an older model: convert's default
