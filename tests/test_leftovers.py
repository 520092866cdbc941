"""Interruption, failure and refusal leave nothing behind, and say so in one line.

Ctrl-C in ``convert`` and ``validate`` prints one line and exits 130, without Beam's
``run_worker`` tracebacks (T1); no run leaves ``/tmp/beam-temp*`` (W12: the local runner is
named, so the DirectRunner never tries, and fails, to start Prism); a failed ``predict``
leaves no empty ``--out`` it created (W12) and a full disk is exit 3 (W8); ``synth`` writes
``metadata.parquet`` last, so a replica cut short never looks complete (W8); a refused
flag leaves no lock, temporary file or folder (W1, W7).
"""

import errno
import logging
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from bigearthnet_beam.beam_pipeline import quiet
from bigearthnet_beam.beam_pipeline.cli import main
from bigearthnet_beam.beam_pipeline.options import local_runner_args
from bigearthnet_beam.transforms import scratch

# --------------------------------------------------------------------------- Beam's own tracebacks


def test_beams_thread_tracebacks_go_to_the_worker_log_not_the_terminal(tmp_path, capsys, monkeypatch):
    log = tmp_path / "workers.log"
    log.write_text("")
    monkeypatch.setitem(quiet.LOG_FILE, "path", str(log))
    quiet.install_thread_hook()

    def beam_thread():  # a frame of an apache_beam module raises, as run_worker does on Ctrl-C
        exec(
            compile("raise RuntimeError('Worker subprocess exited with return code -2')", "lj", "exec"),
            {"__name__": "apache_beam.runners.portability.local_job_service"},
        )

    t = threading.Thread(target=beam_thread, name="run_worker")
    t.start()
    t.join()
    assert "Traceback" not in capsys.readouterr().err
    assert "return code -2" in log.read_text() and "run_worker" in log.read_text()


def test_beams_logged_tracebacks_go_to_the_worker_log(tmp_path, monkeypatch):
    log = tmp_path / "workers.log"
    monkeypatch.setitem(quiet.LOG_FILE, "path", str(log))
    f = quiet.BeamTracebackFilter()
    try:
        raise RuntimeError("closed stream")
    except RuntimeError:
        rec = logging.getLogger("apache_beam.runners.worker.data_plane").makeRecord(
            "apache_beam.runners.worker.data_plane", logging.ERROR, "x", 1, "Failed to read inputs", (), sys.exc_info()
        )
    assert f.filter(rec) is False and "closed stream" in log.read_text()
    ours = logging.getLogger("benbeam").makeRecord("benbeam", logging.ERROR, "x", 1, "our line", (), None)
    assert f.filter(ours) is True
    monkeypatch.setitem(quiet.DEBUG, "on", True)
    assert f.filter(rec) is True  # --debug shows everything


def _interrupt(argv, tmp_path, when):
    """Run ``benbeam ARGV`` in its own process group and press Ctrl-C once ``when()`` holds."""
    env = dict(os.environ, TMPDIR=str(tmp_path / "tmp"))
    p = subprocess.Popen(
        [sys.executable, "-m", "bigearthnet_beam", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 120
    while not when() and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    os.killpg(p.pid, signal.SIGINT)
    out, err = p.communicate(timeout=120)
    return p.returncode, err


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    d = tmp_path_factory.mktemp("big")
    assert main(["synth", "--out", str(d / "reben"), "--n", "400", "--seed", "8"]) == 0
    return d / "reben"


@pytest.mark.slow
@pytest.mark.parametrize("cmd", ["validate", "convert"])
def test_ctrl_c_is_one_line_exit_130_and_no_beam_traceback(big, tmp_path, cmd):
    (tmp_path / "tmp").mkdir()
    out = tmp_path / ("v.json" if cmd == "validate" else "out")
    argv = [cmd, "--meta", str(big / "metadata.parquet"), "--out", str(out), "--workers", "2"]
    if cmd == "validate":
        argv.append("--deep")
    started = tmp_path / "tmp"

    def running():  # the workers' log exists once the pipeline runs
        return any(p.name.startswith("benbeam-workers-") for p in started.iterdir())

    rc, err = _interrupt(argv, tmp_path, running)
    own = [x for x in err.splitlines() if x.startswith("benbeam")]
    assert rc == 130, err[-3000:]
    assert "Traceback" not in err and "run_worker" not in err and "grpc" not in err, err[-3000:]
    assert len(own) == 1 and "interrupted" in own[0], err[-3000:]
    assert not [p.name for p in started.iterdir()], "an interrupted run left its temporary files"


def test_ctrl_c_while_the_graph_is_built_leaves_no_beam_pipeline_temp(tmp_path, monkeypatch):
    # Beam removes a Pipeline's local temporary folder only at the end of run(): a Ctrl-C before
    # run() (graph building) used to leave beam-pipeline-temp* behind
    import tempfile

    from bigearthnet_beam.beam_pipeline import convert
    from bigearthnet_beam.synth.generator import generate

    generate(str(tmp_path / "reben"), 4, seed=0, workers=1)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    foreign = tmp / "beam-pipeline-tempNOTOURS"  # another program's: must stay
    foreign.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(convert, "build_stats", interrupted)
    rc = main(["convert", "--meta", str(tmp_path / "reben" / "metadata.parquet"), "--out", str(tmp_path / "out")])
    assert rc == 130
    assert sorted(p.name for p in tmp.iterdir()) == [foreign.name]


def test_only_the_commands_own_pipeline_folders_are_removed(tmp_path, monkeypatch):
    import tempfile

    from apache_beam.options.pipeline_options import PipelineOptions

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    other = tmp_path / "beam-pipeline-tempOTHER"
    other.mkdir()
    p = quiet.new_pipeline(PipelineOptions([]))
    assert os.path.isdir(p.local_tempdir) and p.local_tempdir.startswith(str(tmp_path))
    scratch.remove_all()
    assert not os.path.exists(p.local_tempdir) and other.is_dir()
    scratch.remove_all()  # a second call has nothing left to remove
    assert other.is_dir()


def test_a_forced_end_removes_what_the_command_made_for_itself_and_nothing_else(tmp_path, monkeypatch):
    """After Ctrl-C a runner that does not stop within the grace period ends the command by force
    (``quiet._end_now``): no block's clean-up runs then, so the registry (``transforms.scratch``)
    removes the pipeline's folder, the workers' log and the progress folder."""
    import io
    import tempfile

    from apache_beam.options.pipeline_options import PipelineOptions

    from bigearthnet_beam.transforms import progress

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    others = [tmp_path / "benbeam-progress-NOTOURS", tmp_path / "beam-pipeline-tempOTHER"]
    for o in others:
        o.mkdir()
    (tmp_path / "benbeam-workers-NOTOURS.log").write_text("another run's\n")

    def exited(code):
        raise SystemExit(code)

    monkeypatch.setattr(quiet.os, "_exit", exited)
    quiet.new_pipeline(PipelineOptions([]))
    with quiet.worker_stderr() as keep:
        with progress.Watcher([progress.Pass("write", "convert: write", 10)], stream=io.StringIO(), tty=False) as w:
            made = [keep["log"], w.folder]
            assert all(os.path.exists(m) for m in made)
            with pytest.raises(SystemExit) as e:
                quiet._end_now("benbeam convert: interrupted")
    assert e.value.code == 130
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [*(o.name for o in others), "benbeam-workers-NOTOURS.log"]
    )
    assert scratch.owned() == []


# --------------------------------------------------------------------------- /tmp/beam-temp*


def test_the_local_runner_is_named_so_prism_is_never_tried():
    argv = local_runner_args([], 2)
    assert "--runner=FnApiRunner" in argv and "--direct_num_workers=2" in argv
    assert "--runner=FnApiRunner" not in local_runner_args(["--runner=DataflowRunner"], 2)


@pytest.mark.slow
def test_runs_leave_no_beam_temp_folders(big, tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = dict(os.environ, TMPDIR=str(tmp))
    meta = str(big / "metadata.parquet")
    for argv in (
        ["validate", "--meta", meta, "--out", str(tmp_path / "v.json"), "--frac", "0.05", "--workers", "1"],
        ["convert", "--meta", meta, "--out", str(tmp_path / "ds"), "--frac", "0.05", "--workers", "1"],
    ):
        r = subprocess.run([sys.executable, "-m", "bigearthnet_beam", *argv], capture_output=True, text=True, env=env)
        assert r.returncode == 0, r.stderr[-2000:]
    assert not list(tmp.iterdir()), [p.name for p in tmp.iterdir()]


# --------------------------------------------------------------------------- predict and synth


@pytest.fixture
def predict_inputs(tmp_path, monkeypatch):
    model, tile = tmp_path / "m.keras", tmp_path / "tile.tif"
    model.write_bytes(b"PK")
    tile.write_bytes(b"II*")
    from bigearthnet_beam.trainer.inference import cli as pcli

    return pcli, ["predict", "--model", str(model), "--tile", str(tile), "--out", str(tmp_path / "p")]


@pytest.mark.parametrize(
    "exc,code",
    [
        (OSError(errno.ENOSPC, "No space left on device"), 3),
        (OSError(errno.EROFS, "Read-only file system"), 3),
        (RuntimeError("the model failed"), 1),
    ],
)
def test_a_failed_predict_exits_by_type_and_leaves_no_empty_out(
    predict_inputs, tmp_path, monkeypatch, capsys, exc, code
):
    pcli, argv = predict_inputs

    def fail(args, beam_args, tiles, st=None):
        assert (tmp_path / "p").is_dir()  # the run got as far as its --out
        raise exc

    monkeypatch.setattr(pcli, "_predict", fail)
    assert main(argv) == code
    own = [x for x in capsys.readouterr().err.splitlines() if x.startswith("benbeam")]
    assert len(own) == 1, own
    assert not (tmp_path / "p").exists()


def test_a_refused_predict_window_leaves_nothing(predict_inputs, tmp_path, capsys):
    _, argv = predict_inputs
    for bad in (["--overlap", "119"], ["--overlap", "-1"], ["--chunk_size", "100"], ["--chunk_size", "１０２４"]):
        with pytest.raises(SystemExit) as e:
            main([*argv, *bad])
        assert e.value.code == 2 and capsys.readouterr().err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.keras", "tile.tif"]


def test_a_refused_learning_rate_leaves_nothing(tmp_path, capsys):
    for lr in ("inf", "nan", "-0.001", "0", "1e400"):
        with pytest.raises(SystemExit) as e:
            main(["train", "--data", str(tmp_path), "--save", str(tmp_path / "run" / "m.keras"), "--lr", lr])
        assert e.value.code == 2 and "--lr" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_synth_cut_short_by_a_full_disk_has_no_metadata(tmp_path, monkeypatch, capsys):
    from bigearthnet_beam.synth import generator

    real = generator._work
    calls = []

    def work(args):
        if calls:
            raise OSError(errno.ENOSPC, "No space left on device")
        calls.append(1)
        return real(args)

    monkeypatch.setattr(generator, "_work", work)
    out = tmp_path / "reben"
    assert main(["synth", "--out", str(out), "--n", "4", "--workers", "1"]) == 3
    assert "disk is full" in capsys.readouterr().err
    assert out.is_dir() and not (out / "metadata.parquet").exists()
