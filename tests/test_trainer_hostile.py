"""The trainer's commands against hostile and failing input (issue 16, README: "Bad input and
interruption"): `train --resume` refuses another run's settings, history rows match their
header, the reported best score is the real one, `--save` / `predict --out` follow the
output-folder rules of convert, a corrupt shard is named in one line (exit 1), manifest shard
paths stay under the dataset folder, and expected failures end with one line and their exit
code (130 interrupted, 3 unreachable store, 2 missing file) — train, evaluate, predict, export.

Training runs are tiny (8 patches, width 4, 1–2 epochs) and marked slow.
"""

import csv
import json
import os
import shutil
import socket
import time

import pytest

tf = pytest.importorskip("tensorflow")

from bigearthnet_beam.beam_pipeline.cli import DEBUG, main  # noqa: E402
from bigearthnet_beam.schemas import manifest  # noqa: E402
from bigearthnet_beam.trainer.config import TrainConfig  # noqa: E402
from bigearthnet_beam.trainer.data import open_dataset, unreadable_shard  # noqa: E402
from bigearthnet_beam.trainer.evaluate import evaluate  # noqa: E402
from bigearthnet_beam.trainer.run_files import run_paths  # noqa: E402
from bigearthnet_beam.trainer.train import resume_differences, train  # noqa: E402
from bigearthnet_beam.transforms import outdir  # noqa: E402
from tests.trainer_fixtures import make_tiny_dataset  # noqa: E402

FAST = dict(width=4, batch=4, tensorboard=False, verbose=0)
CLI_FAST = ["--width", "4", "--batch", "4", "--no_tensorboard"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Dataset a (with validation), b (other data, no validation split) and a copy of a elsewhere."""
    d = tmp_path_factory.mktemp("hostile_data")
    a = make_tiny_dataset(d / "a", n_train=8, n_val=4, n_test=0, shards=2)
    b = make_tiny_dataset(d / "b", n_train=8, n_val=0, n_test=0, shards=1, seed=5)
    shutil.copytree(a.path, d / "a_copy")
    return {"a": a.path, "b": b.path, "a_copy": str(d / "a_copy")}


def _errors(err: str) -> list[str]:
    """The command's own error lines (log lines of TensorFlow / the trainer left out)."""
    return [ln for ln in err.splitlines() if ln.startswith("benbeam ")]


def _one_error_line(capsys, command: str) -> str:
    err = capsys.readouterr().err
    lines = _errors(err)
    assert len(lines) == 1 and lines[0].startswith(f"benbeam {command}: "), err[-2000:]
    assert "Traceback" not in err and "DataLossError" not in err, err[-2000:]
    return lines[0]


def _free_port() -> int:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- resume (slow: trains)


@pytest.fixture(scope="module")
def run(data, tmp_path_factory):
    """One epoch of one step on dataset a (so its history has no patches/s column yet)."""
    save = tmp_path_factory.mktemp("hostile_run") / "run" / "m.keras"
    train(TrainConfig(data=data["a"], save=str(save), epochs=1, steps_per_epoch=1, **FAST))
    return save


@pytest.mark.slow
@pytest.mark.parametrize(
    "flags,named",
    [
        (["--data", "B"], ["--data"]),  # other data, which also has no validation split
        (["--data", "A_COPY"], ["--data: saved run"]),  # the same bytes elsewhere: another path
        (["--modalities", "s2"], ["--modalities"]),
        (["--width", "6"], ["--width"]),
        (["--depth", "2"], ["--depth"]),
        (["--task", "both"], ["--task"]),
        (["--class_weights"], ["--class_weights"]),
        (["--width", "6", "--depth", "2", "--data", "B"], ["--width", "--depth", "--data", "sha256"]),
    ],
)
def test_resume_with_other_data_or_architecture_is_refused_listing_the_differences(run, data, flags, named, capsys):
    paths = run_paths(str(run))
    before = {k: open(paths[k], "rb").read() for k in ("state", "history", "last", "model")}
    flags = [{"B": data["b"], "A_COPY": data["a_copy"]}.get(f, f) for f in flags]
    argv = ["train", "--data", data["a"], "--save", str(run), "--epochs", "2", "--resume", *CLI_FAST, *flags]
    assert main(argv) == 2
    line = _one_error_line(capsys, "train")
    assert "--resume" in line and all(n in line for n in named), line
    assert {k: open(paths[k], "rb").read() for k in before} == before  # nothing trained, nothing rewritten


def test_resume_differences_compare_only_what_the_saved_state_records(data):
    ds = open_dataset(data["a"])
    cfg = TrainConfig(data=data["a"], width=4).checked()
    old = {"modalities": "s2,s1", "task": "seg", "width": 4, "depth": 3, "data": data["a"]}  # an older state file
    assert resume_differences(old, cfg, ds) == []
    assert resume_differences({**old, "data_manifest_sha256": "0" * 64}, cfg, ds)[0].startswith(
        "--data: its dataset.json changed"
    )
    assert resume_differences({**old, "settings": {"val_split": "test"}}, cfg, ds)[0].startswith("--val_split")


@pytest.mark.slow
def test_a_resumed_history_matches_its_header_and_the_reported_best_is_real(run, data, tmp_path, capsys):
    save = tmp_path / "run" / "m.keras"
    shutil.copytree(run.parent, save.parent)
    # the first run had one step per epoch (no patches/s); this one has two (a new column)
    argv = [
        "train",
        "--data",
        data["a"],
        "--save",
        str(save),
        "--epochs",
        "2",
        "--steps_per_epoch",
        "2",
        "--resume",
        *CLI_FAST,
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    paths = run_paths(str(save))
    with open(paths["history"], newline="") as fh:
        rows = list(csv.reader(fh))
    header, body = rows[0], rows[1:]
    assert [r[0] for r in body] == ["0", "1"] and "patches_per_s" in header and "val_miou" in header
    assert all(len(r) == len(header) for r in body), rows
    scores = [float(r[header.index("val_miou")]) for r in body]
    metrics = json.loads(open(paths["metrics"]).read())
    assert metrics["best_val_miou"] == max(scores) and metrics["best_epoch"] == 1 + scores.index(max(scores))
    assert f"(epoch {metrics['best_epoch']}, val mIoU {max(scores):.4f})" in out
    # the real score: the saved best model, scored again on the validation split
    got = evaluate(model=str(save), data=data["a"], split="validation", out=str(tmp_path / "ev"), plot=False)
    assert got["miou"] == pytest.approx(max(scores), abs=1e-4)


# --------------------------------------------------------------------------- output folders


def test_a_save_folder_holding_other_files_is_refused_and_left_untouched(data, tmp_path, capsys):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    (folder / "m.keras").write_text("not a model of ours")
    assert main(["train", "--data", data["a"], "--save", str(folder / "m.keras"), *CLI_FAST]) == 2
    line = _one_error_line(capsys, "train")
    assert "not empty" in line and "notes.txt" in line, line
    assert sorted(os.listdir(folder)) == ["m.keras", "notes.txt"]
    assert (folder / "m.keras").read_text() == "not a model of ours"


def test_a_save_folder_of_another_command_is_refused(data, tmp_path, capsys):
    folder = tmp_path / "maps"
    outdir.mark(str(folder), "benbeam predict")
    assert main(["train", "--data", data["a"], "--save", str(folder / "m.keras"), *CLI_FAST]) == 2
    assert "benbeam predict" in _one_error_line(capsys, "train")


def test_a_second_train_into_a_folder_in_use_fails_at_once(data, tmp_path, capsys):
    folder = str(tmp_path / "busy")
    with outdir.Lock(folder, "benbeam train"):  # a live holder: this process
        t0 = time.monotonic()
        assert main(["train", "--data", data["a"], "--save", os.path.join(folder, "m.keras"), *CLI_FAST]) == 3
        assert time.monotonic() - t0 < 5
        line = _one_error_line(capsys, "train")
        assert "in use" in line and f"pid {os.getpid()}" in line and socket.gethostname() in line, line
        assert os.listdir(folder) == [outdir.LOCK]  # the refused run wrote nothing, the holder's lock stays


def test_predict_out_holding_other_files_is_refused_and_left_untouched(tmp_path, capsys):
    from bigearthnet_beam.trainer.inference.cli import run as predict

    model, tile = tmp_path / "m.keras", tmp_path / "t.tif"
    model.write_bytes(b"x")
    tile.write_bytes(b"x")
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.csv").write_text("someone else's")
    assert predict(["--model", str(model), "--tile", str(tile), "--out", str(out)]) == 2
    line = _one_error_line(capsys, "predict")
    assert "not empty" in line and "report.csv" in line, line
    assert os.listdir(out) == ["report.csv"] and (out / "report.csv").read_text() == "someone else's"
    folder = str(tmp_path / "busy")
    with outdir.Lock(folder, "benbeam predict"):
        assert predict(["--model", str(model), "--tile", str(tile), "--out", folder]) == 3
        assert "in use" in _one_error_line(capsys, "predict")


# --------------------------------------------------------------------------- corrupt shards


def _damage(path: str, how: str) -> None:
    blob = bytearray(open(path, "rb").read())
    if how == "flip":
        blob[len(blob) // 2] ^= 0xFF
    else:
        blob = blob[: len(blob) - 100]
    open(path, "wb").write(bytes(blob))


@pytest.mark.slow
@pytest.mark.parametrize("how", ["flip", "truncate"])
def test_a_corrupt_shard_is_named_in_one_line_exit_1(run, data, tmp_path, how, capsys):
    ds = tmp_path / "ds"
    shutil.copytree(data["a"], ds)
    shard = manifest.shard_path("validation", 1, 2)
    _damage(str(ds / shard), how)
    assert (
        main(
            ["evaluate", "--model", str(run), "--data", str(ds), "--split", "validation", "--out", str(tmp_path / "ev")]
        )
        == 1
    )
    line = _one_error_line(capsys, "evaluate")
    assert "corrupt shard" in line and shard in line and "benbeam verify" in line, line
    if how == "flip":  # the same for training (it reads the validation split after each epoch)
        assert (
            main(
                [
                    "train",
                    "--data",
                    str(ds),
                    "--save",
                    str(tmp_path / "run" / "m.keras"),
                    "--epochs",
                    "1",
                    "--steps_per_epoch",
                    "1",
                    *CLI_FAST,
                ]
            )
            == 1
        )
        line = _one_error_line(capsys, "train")
        assert "corrupt shard" in line and shard in line, line


def test_unreadable_shard_reports_nothing_for_a_clean_dataset(data):
    assert unreadable_shard(open_dataset(data["a"]), ["train", "validation"]) is None


# --------------------------------------------------------------------------- manifest paths


@pytest.mark.parametrize(
    "hostile", ["../outside.tfrecord", "/etc/passwd", "train/../../outside.tfrecord", "s3://bucket/x.tfrecord", "LINK"]
)
def test_manifest_shard_paths_outside_the_dataset_are_refused(data, tmp_path, hostile, capsys):
    ds = tmp_path / "ds"
    shutil.copytree(data["a"], ds)
    outside = tmp_path / "outside.tfrecord"
    shutil.copy(ds / manifest.shard_path("train", 0, 2), outside)
    if hostile == "LINK":  # a symlink inside the folder to a file outside it
        os.symlink(outside, ds / "train" / "link.tfrecord")
        hostile = "train/link.tfrecord"
    man = json.loads((ds / manifest.MANIFEST).read_text())
    man["splits"]["train"]["shards"][0]["path"] = hostile
    (ds / manifest.MANIFEST).write_text(json.dumps(man))
    with pytest.raises(ValueError, match="shard"):
        open_dataset(str(ds))
    save = tmp_path / "run" / "m.keras"
    assert main(["train", "--data", str(ds), "--save", str(save), *CLI_FAST]) == 2
    line = _one_error_line(capsys, "train")
    assert hostile[:20] in line and str(ds) in line, line
    assert not save.parent.exists()  # refused before anything was written


def test_the_torch_reader_refuses_shard_paths_outside_the_dataset_too(data, tmp_path):
    if os.environ.get("CI"):  # torch is in the [dev] extra: a CI run without it fails instead of skipping
        import torch  # noqa: F401
    else:
        pytest.importorskip("torch")
    from bigearthnet_beam.trainer.torch_data import BenDataset

    ds = tmp_path / "ds"
    shutil.copytree(data["a"], ds)
    man = json.loads((ds / manifest.MANIFEST).read_text())
    man["splits"]["train"]["shards"][0]["path"] = "../outside.tfrecord"
    (ds / manifest.MANIFEST).write_text(json.dumps(man))
    with pytest.raises(ValueError, match="outside.tfrecord"):
        BenDataset(str(ds), "train")


# --------------------------------------------------------------------------- one clear line


def test_an_interrupted_train_or_evaluate_ends_with_one_line_and_130(data, tmp_path, monkeypatch, capsys):
    def interrupted(url, storage=None):
        raise KeyboardInterrupt

    monkeypatch.setattr("bigearthnet_beam.trainer.data.open_dataset", interrupted)
    save = tmp_path / "run" / "m.keras"
    assert main(["train", "--data", data["a"], "--save", str(save), *CLI_FAST]) == 130
    assert "interrupted" in _one_error_line(capsys, "train")
    assert not save.parent.exists()  # the lock released, the folder it made removed again
    assert main(["evaluate", "--model", str(save), "--data", data["a"], "--out", str(tmp_path / "ev")]) == 130
    assert "interrupted" in _one_error_line(capsys, "evaluate")


@pytest.mark.parametrize("command", ["train", "evaluate", "predict", "export"])
def test_an_unreachable_store_fails_in_seconds_with_one_line_and_3(command, tmp_path, capsys):
    flags = ["--s3_endpoint_url", f"http://127.0.0.1:{_free_port()}"]
    argv = {
        "train": ["train", "--data", "s3://bucket/ds", "--save", str(tmp_path / "run" / "m.keras")],
        "evaluate": [
            "evaluate",
            "--model",
            "s3://bucket/m.keras",
            "--data",
            "s3://bucket/ds",
            "--out",
            str(tmp_path / "ev"),
        ],
        "predict": [
            "predict",
            "--model",
            "s3://bucket/m.keras",
            "--tile",
            "s3://bucket/t.tif",
            "--out",
            str(tmp_path / "maps"),
        ],
        "export": ["export", "--model", "s3://bucket/m.keras", "--out", str(tmp_path / "saved")],
    }[command]
    t0 = time.monotonic()
    assert main([*argv, *flags]) == 3
    assert time.monotonic() - t0 < 20
    assert "reached" in _one_error_line(capsys, command)
    try:  # --debug: the traceback, and the same exit code
        assert main(["--debug", *argv, *flags]) == 3
    finally:
        DEBUG["on"] = False
    assert "Traceback" in capsys.readouterr().err


def test_missing_files_end_with_one_line_and_2(data, tmp_path, capsys):
    assert (
        main(
            ["evaluate", "--model", str(tmp_path / "missing.keras"), "--data", data["a"], "--out", str(tmp_path / "ev")]
        )
        == 2
    )
    assert "missing.keras" in _one_error_line(capsys, "evaluate")
    assert main(["export", "--model", str(tmp_path / "missing.keras"), "--out", str(tmp_path / "saved")]) == 2
    assert "missing.keras" in _one_error_line(capsys, "export")
    with pytest.raises(SystemExit):  # flags are never abbreviated
        main(["export", "--mod", str(tmp_path / "missing.keras"), "--out", str(tmp_path / "saved")])
    assert "--mod" in capsys.readouterr().err
    assert main(["train", "--data", str(tmp_path / "nothing"), "--save", str(tmp_path / "run" / "m.keras")]) == 2
    assert "dataset.json" in _one_error_line(capsys, "train")
