"""Quiet by default: no TensorFlow start-up lines (cuInit, CUDA factories, absl) on a CPU-only
machine unless ``--verbose``; no Keras shuffle warning in training; a progress bar as wide as the
terminal that a worker moves within a shard."""

import io
import os
import subprocess
import sys
import warnings

import pytest

from bigearthnet_beam.trainer.tfenv import is_noise
from bigearthnet_beam.transforms import progress

NOISE_WORDS = ("cuInit", "Unable to register cuDNN", "Unable to register cuFFT", "Unable to register cuBLAS")


def _benbeam(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bigearthnet_beam", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, **(env or {})),
    )


@pytest.mark.slow  # two TensorFlow command processes
def test_tensorflow_commands_print_no_start_up_noise_unless_verbose(tmp_path):
    args = ["export", "--model", str(tmp_path / "missing.keras"), "--out", str(tmp_path / "x")]
    r = _benbeam(*args)
    assert r.returncode == 2 and "does not exist" in r.stderr
    lines = r.stderr.splitlines()
    assert [ln for ln in lines if is_noise(ln) or any(w in ln for w in NOISE_WORDS)] == [], r.stderr
    assert not [ln for ln in lines if ln[:1] in "IWE" and ln[1:5].isdigit()], r.stderr  # no absl-formatted line at all
    assert len(lines) == 1, r.stderr
    loud = _benbeam(*args, "--verbose")
    assert loud.returncode == 2
    # on this CPU-only machine TensorFlow announces itself (oneDNN, CUDA probing): --verbose shows it
    assert any(is_noise(ln) for ln in loud.stderr.splitlines()), loud.stderr


def test_help_stays_silent():
    r = _benbeam("evaluate", "--help")
    assert r.returncode == 0 and r.stderr == ""


def test_genuine_lines_are_kept_by_the_filter():
    assert is_noise("E0000 00:00:1796392357.858502   13684 cuda_platform.cc:52] failed call to cuInit: INTERNAL")
    assert is_noise("WARNING: All log messages before absl::InitializeLog() is called are written to STDERR")
    assert not is_noise("E0000 00:00:1.0   1 saved_model_loader.cc:12] could not read the model: corrupt file")
    assert not is_noise("benbeam export: error: model x does not exist")


@pytest.mark.slow
def test_training_raises_no_shuffle_warning(tmp_path):
    from bigearthnet_beam.trainer.config import TrainConfig
    from bigearthnet_beam.trainer.train import train
    from tests.trainer_fixtures import make_tiny_dataset

    t = make_tiny_dataset(tmp_path / "d", n_train=8, n_val=0, n_test=0, shards=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(
            TrainConfig(
                data=t.path,
                save=str(tmp_path / "run" / "m.keras"),
                epochs=1,
                width=4,
                batch=4,
                tensorboard=False,
                verbose=0,
            )
        )
    assert not [w for w in caught if "shuffle" in str(w.message)], [str(w.message) for w in caught]


@pytest.mark.parametrize("columns", [60, 100, 160])
def test_the_bar_is_as_wide_as_the_terminal(monkeypatch, columns):
    monkeypatch.setenv("COLUMNS", str(columns))
    out = io.StringIO()
    bar = progress.Bar("convert: write", total=100, stream=out, tty=True)
    for _ in range(100):
        bar.update(1)
    bar.close()
    frames = [f for f in out.getvalue().replace("\n", "\r").split("\r") if f.strip()]
    assert frames and all(len(f) <= columns for f in frames)
    assert max(len(f) for f in frames) >= columns - 2  # the bar fills the line, it is not cut at a fixed width
    assert "100/100" in frames[-1]


def test_a_worker_reports_patches_within_a_shard(tmp_path, monkeypatch):
    monkeypatch.setenv(progress.ENV_DIR, str(tmp_path))
    t = progress.Ticker("write", 10, every=0.0)  # report every patch
    for _ in range(7):
        t.tick()
    t.done()
    (events,) = tmp_path.iterdir()
    lines = events.read_text().splitlines()
    assert lines[:7] == ["write 1"] * 7 and lines[7:] == ["write 3"]  # 7 as they came, the shard's other 3 at the end
    slow = progress.Ticker("statistics", 5, every=3600)
    for _ in range(5):
        slow.tick()
    slow.done()
    assert events.read_text().splitlines()[8:] == ["statistics 5"]  # one line per shard when ticks come faster


def test_workers_and_direct_num_workers_must_agree(capsys):
    from bigearthnet_beam.beam_pipeline.options import local_runner_args

    with pytest.raises(SystemExit) as e:
        local_runner_args(["--direct_num_workers", "2"], 1, "benbeam convert")
    assert e.value.code == 2 and "--workers 1 and --direct_num_workers 2 disagree" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        local_runner_args(["--direct_num_workers=3"], 2)
    assert "--direct_num_workers=2" in local_runner_args(["--direct_num_workers=2"], 2)  # the same: fine
    assert "--direct_num_workers=4" in local_runner_args([], 4)


_BAR_CHILD = """
import logging, sys, time
from bigearthnet_beam.transforms.progress import Bar
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stderr)
bar = Bar("convert: write", total=40)
for i in range(40):
    bar.update(1)
    if i == 20:
        logging.getLogger("benbeam").warning("a line in the middle of the pass")
    time.sleep(0.01)
bar.close()
"""


def test_log_lines_print_above_the_bar_on_a_terminal():
    import pty
    import re

    main, child = pty.openpty()
    os.set_blocking(main, True)
    env = dict(os.environ, COLUMNS="90")
    proc = subprocess.Popen([sys.executable, "-c", _BAR_CHILD], stdin=child, stdout=child, stderr=child, env=env)
    os.close(child)
    data = b""
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        data += chunk
    proc.wait(timeout=60)
    os.close(main)
    assert proc.returncode == 0, data[-2000:]
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", data.decode(errors="replace"))
    line = next(ln for ln in text.split("\n") if "a line in the middle" in ln)
    # what the terminal shows on that line: the text after the last carriage return
    assert line.rstrip("\r").rsplit("\r", 1)[-1].strip() == "WARNING a line in the middle of the pass"
    assert "40/40" in text.split("a line in the middle")[1]  # the bar goes on below it
