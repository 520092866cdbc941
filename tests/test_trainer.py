"""The trainer: model shape and parameter count, masked loss, a tiny run that learns,
save -> load, evaluation against plain numpy, the input pipeline against what the ETL
wrote, resume, refusal of incomplete datasets, the CLI.

Models here are narrow (``width`` 4–8) so the suite stays fast on two CPU cores; the
default model is only built, never trained.
"""

import csv
import json
import os

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
import keras  # noqa: E402

from bigearthnet_beam.beam_pipeline.cli import main  # noqa: E402
from bigearthnet_beam.schemas import bands as band_table  # noqa: E402
from bigearthnet_beam.schemas import classes, tfrecord  # noqa: E402
from bigearthnet_beam.schemas import manifest as manifest_schema  # noqa: E402
from bigearthnet_beam.trainer import data as trainer_data  # noqa: E402
from bigearthnet_beam.trainer import model as unet_model  # noqa: E402
from bigearthnet_beam.trainer.config import TrainConfig  # noqa: E402
from bigearthnet_beam.trainer.evaluate import evaluate  # noqa: E402
from bigearthnet_beam.trainer.run_files import run_paths  # noqa: E402
from bigearthnet_beam.trainer.train import seg_metric, train  # noqa: E402
from bigearthnet_beam.transforms.encode import decode_example, iter_records  # noqa: E402
from tests.helpers import IN_PROCESS  # noqa: E402
from tests.trainer_fixtures import make_tiny_dataset  # noqa: E402

FAST = dict(width=4, batch=8, tensorboard=False, verbose=0)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny converted dataset (24/8/8 patches)."""
    return make_tiny_dataset(tmp_path_factory.mktemp("tiny"), n_train=24, n_val=8, n_test=8, shards=2)


@pytest.fixture(scope="module")
def trained(tiny, tmp_path_factory):
    """A narrow U-Net with the multi-label head, trained a few epochs on the tiny dataset."""
    save = str(tmp_path_factory.mktemp("run") / "m.keras")
    metrics = train(TrainConfig(data=tiny.path, save=save, epochs=4, lr=5e-3, task="both", **{**FAST, "width": 6}))
    return save, metrics


# --------------------------------------------------------------------------- model


def test_default_model_has_about_one_million_parameters_and_the_right_outputs():
    m = unet_model.build_unet(14)
    n = m.count_params()
    assert n == unet_model.unet_param_count(14)
    assert 0.9e6 <= n <= 1.2e6, n
    y = m(np.zeros((2, 120, 120, 14), np.float32))
    assert tuple(y[unet_model.SEG].shape) == (2, 120, 120, classes.NUM_CLASSES)
    np.testing.assert_allclose(y[unet_model.SEG].numpy().sum(-1), 1.0, atol=1e-5)
    both = unet_model.build_unet(12, width=8, task="both")
    assert both.count_params() == unet_model.unet_param_count(12, width=8, task="both")
    assert tuple(both(np.zeros((1, 120, 120, 12), np.float32))[unet_model.MULTI].shape) == (1, classes.NUM_CLASSES)
    # --width scales it
    assert unet_model.unet_param_count(14, width=12) < n < unet_model.unet_param_count(14, width=32)
    with pytest.raises(ValueError, match="depth 4"):
        unet_model.build_unet(14, depth=4)


def test_masked_loss_ignores_255_and_equals_numpy():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(classes.NUM_CLASSES), size=(2, 6, 6)).astype(np.float32)
    labels = rng.integers(0, classes.NUM_CLASSES, (2, 6, 6)).astype(np.uint8)
    labels[0, :3] = classes.IGNORE_INDEX
    weights = rng.uniform(0.5, 2.0, classes.NUM_CLASSES)
    valid = labels != classes.IGNORE_INDEX
    y = np.where(valid, labels, 0)
    nll = -np.log(np.take_along_axis(probs, y[..., None].astype(np.int64), -1)[..., 0])
    for cw in (None, weights):
        w = valid * (1.0 if cw is None else cw[y])
        want = (nll * w).sum() / w.sum()
        got = float(unet_model.MaskedSparseCategoricalCrossentropy(cw)(labels, probs))
        assert got == pytest.approx(want, rel=1e-5)
    # whatever the prediction on ignored pixels, the loss does not move
    probs2 = probs.copy()
    probs2[0, :3] = rng.dirichlet(np.ones(classes.NUM_CLASSES), size=(3, 6))
    loss = unet_model.MaskedSparseCategoricalCrossentropy()
    assert float(loss(labels, probs2)) == pytest.approx(float(loss(labels, probs)), rel=1e-6)
    assert float(loss(np.full((1, 2, 2), 255, np.uint8), probs[:1, :2, :2])) == 0.0


def test_class_weights_from_manifest_counts():
    counts = [0] * classes.NUM_CLASSES
    counts[0], counts[1], counts[5] = 900, 100, 0
    w = np.array(unet_model.class_weights_from_counts(counts))
    f = np.array(counts) / 1000
    assert w[5] == 0 and w[0] < w[1]
    assert (f * w).sum() == pytest.approx(1.0)
    assert w[1] / w[0] == pytest.approx(3.0)  # inverse square root of the frequency ratio 9
    with pytest.raises(ValueError, match="all zero"):
        unet_model.class_weights_from_counts([0] * classes.NUM_CLASSES)


# --------------------------------------------------------------------------- input pipeline


@pytest.mark.slow
def test_input_pipeline_yields_the_arrays_the_etl_wrote(tmp_path):
    """Real `synth` + `convert` output, read by the trainer, equals the records decoded by the ETL's own reader."""
    reben, out = tmp_path / "reben", tmp_path / "ds"
    assert main(["synth", "--out", str(reben), "--n", "10", "--seed", "3", "--workers", "1"]) == 0
    assert (
        main(
            [
                "convert",
                "--meta",
                str(reben / "metadata.parquet"),
                "--out",
                str(out),
                "--shard_size",
                "3",
                "--compression",
                "gzip",
                "--dtype",
                "float16",
                *IN_PROCESS,
            ]
        )
        == 0
    )
    ds = trainer_data.open_dataset(str(out))
    for split in ds.manifest["splits"]:
        if not ds.records(split):
            continue
        want = {}
        for url in ds.shards[split]:
            for rec in iter_records(url, "gzip"):
                ex = decode_example(rec, "float16")
                want[ex[tfrecord.PATCH_ID]] = ex
        assert len(want) == ds.records(split)
        for mods in ("s2,s1", "s2", "s1"):
            idx = [band_table.ALL_NAMES.index(c) for c in band_table.channels_for(mods)]
            got = 0
            stream = trainer_data.make_dataset(
                ds, split, batch_size=4, modalities=mods, with_multi_hot=True, with_ids=True
            )
            for x, y, ids in stream:
                for i, pid in enumerate(ids.numpy()):
                    ex = want[pid.decode()]
                    full = np.concatenate([ex[tfrecord.S2], ex[tfrecord.S1]], -1).astype(np.float32)
                    np.testing.assert_array_equal(x[i].numpy(), full[..., idx])
                    np.testing.assert_array_equal(y[unet_model.SEG][i].numpy(), ex[tfrecord.LABEL])
                    np.testing.assert_array_equal(
                        y[unet_model.MULTI][i].numpy(), ex[tfrecord.MULTI_HOT].astype(np.float32)
                    )
                    got += 1
            assert got == len(want)


def test_incomplete_dataset_is_refused_with_a_clear_message(tiny, tmp_path, capsys):
    with pytest.raises(manifest_schema.ManifestError, match="no dataset.json"):
        trainer_data.open_dataset(str(tmp_path))
    with open(os.path.join(tiny.path, manifest_schema.MANIFEST)) as fh:
        bad = json.load(fh)
    bad["classes"] = list(reversed(bad["classes"]))
    (tmp_path / manifest_schema.MANIFEST).write_text(json.dumps(bad))
    with pytest.raises(manifest_schema.ManifestError, match="classes differ"):
        trainer_data.open_dataset(str(tmp_path))
    assert main(["train", "--data", str(tmp_path / "nothing"), "--save", str(tmp_path / "m.keras")]) == 2
    assert "no dataset.json" in capsys.readouterr().err


# --------------------------------------------------------------------------- training


@pytest.mark.slow
def test_tiny_run_decreases_the_loss_and_writes_its_outputs(trained):
    save, metrics = trained
    paths = run_paths(save)
    with open(paths["history"]) as fh:
        hist = list(csv.DictReader(fh))
    assert len(hist) == 4
    losses = [float(r["loss"]) for r in hist]
    assert losses == sorted(losses, reverse=True) and losses[-1] < 0.92 * losses[0], losses
    assert seg_metric(hist[-1], "miou") > seg_metric(hist[0], "miou")
    for key in ("model", "info", "last", "state", "metrics"):
        assert os.path.exists(paths[key]), key
    assert metrics["epochs_completed"] == 4
    assert metrics["best_val_miou"] == max(seg_metric(r, "miou", val=True) for r in hist)
    assert metrics["best_epoch"] == 1 + int(np.argmax([seg_metric(r, "miou", val=True) for r in hist]))
    assert json.loads(open(paths["metrics"]).read())["params"] == unet_model.unet_param_count(14, width=6, task="both")


@pytest.mark.slow
def test_save_load_gives_identical_predictions_and_carries_the_inference_contract(trained, tiny):
    save, _ = trained
    model, info = unet_model.load_model(save)
    again, info2 = unet_model.load_model(save)
    x = tiny.split_arrays("test")[1][:4]
    a, b = model.predict(x, verbose=0), again.predict(x, verbose=0)
    np.testing.assert_array_equal(a[unet_model.SEG], b[unet_model.SEG])
    np.testing.assert_array_equal(a[unet_model.MULTI], b[unet_model.MULTI])
    assert info == info2 == json.loads(open(save + ".json").read())
    assert info["channels"] == list(band_table.ALL_NAMES)
    assert info["classes"] == list(classes.CLASS_NAMES)
    assert info["ignore_index"] == 255
    assert info["statistics"] == tiny.manifest["statistics"]
    assert info["task"] == "both"


@pytest.mark.slow
def test_evaluation_equals_plain_numpy(trained, tiny, tmp_path):
    save, _ = trained
    out = tmp_path / "ev"
    r = evaluate(model=save, data=tiny.path, split="test", out=str(out))
    model, _ = unet_model.load_model(save)
    _, x, lab, mh = tiny.split_arrays("test")
    y = model.predict(x, batch_size=8, verbose=0)
    pred = y[unet_model.SEG].argmax(-1)
    valid = lab != 255
    # IoU per class, written out longhand
    ious = []
    for c in range(classes.NUM_CLASSES):
        tp = np.sum((pred == c) & (lab == c) & valid)
        fp = np.sum((pred == c) & (lab != c) & valid)
        fn = np.sum((pred != c) & (lab == c) & valid)
        ious.append(tp / (tp + fp + fn) if tp + fp + fn else None)
        assert r["per_class"][c]["iou"] == (None if ious[-1] is None else pytest.approx(ious[-1], abs=1e-12))
    assert r["miou"] == pytest.approx(np.mean([v for v in ious if v is not None]), abs=1e-12)
    assert r["pixel_accuracy"] == pytest.approx(np.sum((pred == lab) & valid) / valid.sum(), abs=1e-12)
    cm = json.loads((out / "confusion_matrix.json").read_text())["matrix"]
    assert np.sum(cm) == valid.sum() and np.trace(cm) == np.sum((pred == lab) & valid)
    assert (out / "confusion_matrix.png").stat().st_size > 10_000
    # multi-label: micro F1 and per-class AP against longhand numpy
    s = y[unet_model.MULTI]
    p = s >= 0.5
    t = mh.astype(bool)
    tp, fp, fn = np.sum(p & t), np.sum(p & ~t), np.sum(~p & t)
    assert r["multilabel"]["micro_f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn), abs=1e-9)
    aps = []
    for c in range(classes.NUM_CLASSES):
        if not t[:, c].any():
            continue
        order = np.argsort(-s[:, c], kind="stable")
        hits = t[order, c]
        prec_at_hits = np.cumsum(hits)[hits] / (np.nonzero(hits)[0] + 1)
        aps.append(prec_at_hits.mean())  # AP without ties (scores are continuous)
    assert r["multilabel"]["map_macro"] == pytest.approx(np.mean(aps), abs=1e-6)


@pytest.mark.slow
def test_resume_continues_from_the_last_epoch(tiny, tmp_path):
    save = str(tmp_path / "r.keras")
    train(TrainConfig(data=tiny.path, save=save, epochs=1, max_train_patches=8, **FAST))
    paths = run_paths(save)
    assert json.loads(open(paths["state"]).read())["epoch"] == 1
    m = train(TrainConfig(data=tiny.path, save=save, epochs=2, max_train_patches=8, resume=True, **FAST))
    assert m["epochs_completed"] == 2 and m["epochs_this_run"] == 1
    with open(paths["history"]) as fh:
        assert [int(r["epoch"]) for r in csv.DictReader(fh)] == [0, 1]
    with pytest.raises(ValueError, match="no checkpoint"):
        train(TrainConfig(data=tiny.path, save=str(tmp_path / "other.keras"), epochs=2, resume=True, **FAST))
    # --resume continues the same run or refuses, listing every difference (issue 16)
    fast = {k: v for k, v in FAST.items() if k not in ("width", "depth")}
    with pytest.raises(ValueError) as e:
        train(
            TrainConfig(
                data=tiny.path,
                save=save,
                epochs=3,
                max_train_patches=8,
                resume=True,
                **fast,
                width=int(FAST.get("width", 24)) + 8,
                depth=2,
            )
        )
    assert "--width" in str(e.value) and "--depth" in str(e.value)
    state = json.loads(open(paths["state"]).read())
    state["data_manifest_sha256"] = "0" * 64  # as if the dataset had been converted again since
    open(paths["state"], "w").write(json.dumps(state))
    with pytest.raises(ValueError, match="dataset.json changed"):
        train(TrainConfig(data=tiny.path, save=save, epochs=3, max_train_patches=8, resume=True, **FAST))
    assert json.loads(open(paths["state"]).read())["epoch"] == 2  # nothing trained


@pytest.mark.slow
def test_cli_train_and_evaluate_s2_only_with_seed_flags(tiny, tmp_path, capsys):
    save = tmp_path / "cli" / "s2.keras"
    argv = [
        "train",
        "--data",
        tiny.path,
        "--epochs",
        "1",
        "--batch",
        "8",
        "--lr",
        "0.003",
        "--save",
        str(save),
        "--modalities",
        "s2",
        "--width",
        "4",
        "--steps_per_epoch",
        "2",
        "--class_weights",
        "--augment",
        "--no_tensorboard",
        "--export",
        str(tmp_path / "serving"),
    ]
    assert main(argv) == 0
    assert (tmp_path / "serving" / "saved_model.pb").is_file() and (tmp_path / "serving" / "info.json").is_file()
    _, info = unet_model.load_model(str(save))
    assert info["channels"] == list(band_table.S2_NAMES)
    counts = trainer_data.open_dataset(tiny.path).split_info("train")["class_pixel_counts"]
    assert info["class_weights"] == pytest.approx(unet_model.class_weights_from_counts(counts, "inv_sqrt"))
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(save),
                "--data",
                tiny.path,
                "--split",
                "validation",
                "--out",
                str(tmp_path / "ev"),
            ]
        )
        == 0
    )
    r = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert r["channels"] == list(band_table.S2_NAMES) and r["patches"] == 8
    assert "mIoU" in capsys.readouterr().out
    assert (
        main(["evaluate", "--model", str(save), "--data", tiny.path, "--split", "val", "--out", str(tmp_path / "x")])
        == 2
    )


@pytest.mark.slow
def test_gpu_options_run_on_cpu_and_tensorboard_logs_are_written(tiny, tmp_path):
    """--mixed_precision and --strategy mirrored take the same code path as on a GPU (one CPU replica here)."""
    save = str(tmp_path / "mp.keras")
    m = train(
        TrainConfig(
            data=tiny.path,
            save=save,
            epochs=1,
            steps_per_epoch=1,
            max_val_patches=4,
            mixed_precision=True,
            strategy="mirrored",
            width=4,
            batch=4,
            tensorboard=True,
            verbose=0,
        )
    )
    assert m["epochs_completed"] == 1
    assert keras.mixed_precision.global_policy().name == "float32"  # restored after the run
    model, _ = unet_model.load_model(save)
    assert model.get_layer("enc0a_conv").dtype_policy.name == "mixed_float16"
    assert model.predict(np.zeros((1, 120, 120, 14), np.float32), verbose=0)[unet_model.SEG].dtype == np.float32
    events = [f for _, _, fs in os.walk(run_paths(save)["tensorboard"]) for f in fs if "tfevents" in f]
    assert events, "no TensorBoard event files"


@pytest.mark.slow
def test_deterministic_training_gives_the_same_weights_twice(tiny, tmp_path):
    """`--deterministic`: same data, seed and flags -> bit-identical weights."""
    import keras

    from bigearthnet_beam.trainer.model import load_model

    weights = []
    for i in range(2):
        save = str(tmp_path / f"d{i}" / "m.keras")
        train(
            TrainConfig(
                data=tiny.path, save=save, epochs=2, max_train_patches=16, deterministic=True, augment=True, **FAST
            )
        )
        model, _ = load_model(save)
        weights.append([w.numpy() if hasattr(w, "numpy") else keras.ops.convert_to_numpy(w) for w in model.weights])
    assert len(weights[0]) == len(weights[1])
    for a, b in zip(*weights, strict=True):
        assert np.array_equal(a, b)


PLAIN_KERAS_LOAD = '''
import importlib.abc
import sys

import numpy as np


class NoBenbeam(importlib.abc.MetaPathFinder):
    """Any import of this project's packages fails: the process has Keras but not benbeam."""

    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {"bigearthnet_beam", "tests"}:
            raise ImportError(f"{name}: this process has no benbeam")


sys.meta_path.insert(0, NoBenbeam())
import keras  # noqa: E402

model = keras.models.load_model(sys.argv[1])  # compile=True, Keras' default
np.save(sys.argv[3], model.predict(np.load(sys.argv[2]), verbose=0)["seg"])
'''


@pytest.mark.slow
def test_the_saved_model_loads_with_plain_keras_in_a_process_without_the_project(trained, tiny, tmp_path):
    import subprocess
    import sys

    save, _ = trained
    x = tiny.split_arrays("test")[1][:2]
    np.save(tmp_path / "x.npy", x)
    (tmp_path / "load.py").write_text(PLAIN_KERAS_LOAD)
    r = subprocess.run(
        [sys.executable, "load.py", save, "x.npy", "seg.npy"], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0, r.stderr[-3000:]
    model, _ = unet_model.load_model(save)
    np.testing.assert_array_equal(np.load(tmp_path / "seg.npy"), model.predict(x, verbose=0)[unet_model.SEG])


@pytest.mark.slow
def test_the_export_serves_on_raw_bands_as_the_predictor_does(trained, tmp_path):
    from bigearthnet_beam.trainer.inference.predictor import Predictor

    save, _ = trained
    out = tmp_path / "exported"
    assert main(["export", "--model", save, "--out", str(out)]) == 0
    predictor = Predictor.load(save, batch_size=4)
    bands = predictor.info["statistics"]["bands"]
    rng = np.random.default_rng(7)
    # raw values around each band's mean, a good share beyond the clip percentiles
    raw = np.stack(
        [rng.normal(bands[c]["mean"], 2 * bands[c]["std"] + 1, (3, 120, 120)) for c in predictor.channels], -1
    ).astype(np.float32)
    want = predictor.run_batch(predictor.preprocess(raw.copy(), np.ones(raw.shape[:3], bool)))
    loaded = tf.saved_model.load(str(out))
    got = loaded.serve(tf.constant(raw))
    # the same float32 maths in another graph: summation order differs (seen: up to 1.1e-5)
    np.testing.assert_allclose(got[unet_model.SEG].numpy(), want, rtol=0, atol=1e-4)
    assert set(got) == {unet_model.SEG, unet_model.MULTI, "class_id"}
    assert got["class_id"].dtype == tf.uint8
    np.testing.assert_array_equal(got["class_id"].numpy(), np.argmax(got[unet_model.SEG].numpy(), -1))
    raw[1] = 0.0  # a window without data: every raw band 0
    raw[2, :10, :20] = 0.0
    ids = loaded.serve(tf.constant(raw))["class_id"].numpy()
    assert (ids[1] == 255).all() and (ids[2, :10, :20] == 255).all() and (ids[2, 10:] < 19).all()
    assert json.loads((out / "info.json").read_text()) == predictor.info
