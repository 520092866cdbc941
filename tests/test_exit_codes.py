"""Flags, output folders, honest exits and one clear line (README: "Bad input and interruption").

Exit codes, the same for every command: 0 ok, 1 data failures over the threshold, 2 usage
error, 3 environment, 130 interrupted.
"""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from bigearthnet_beam.beam_pipeline import cli
from bigearthnet_beam.beam_pipeline.cli import main
from bigearthnet_beam.schemas import manifest
from bigearthnet_beam.transforms import outdir
from tests.helpers import IN_PROCESS


@pytest.fixture(scope="module")
def replica(tmp_path_factory):
    d = tmp_path_factory.mktemp("exits")
    assert main(["synth", "--out", str(d / "ok"), "--n", "6", "--seed", "2", "--workers", "1"]) == 0
    assert (
        main(["synth", "--out", str(d / "bad"), "--n", "6", "--seed", "2", "--corrupt", "1.0", "--workers", "1"]) == 0
    )
    return d


# --------------------------------------------------------------------------- flags


@pytest.mark.parametrize(
    "argv,flag",
    [
        (["convert", "--met", "m.parquet", "--ou", "out"], "--met"),
        (["convert", "--meta", "m.parquet", "--ou", "out"], "--ou"),
        (["validate", "--met", "m.parquet", "--out", "v.json"], "--met"),
        (["index", "--met", "m.parquet", "--out", "i.parquet"], "--met"),
        (["synth", "--ou", "x", "--n", "1"], "--ou"),
        (["verify", "x", "--strct"], "--strct"),
        (["report", "x", "--ou", "y"], "--ou"),
        (["synth-tile", "--ou", "x"], "--ou"),
        (["launch", "dataflow", "--proj", "p", "--region", "r", "--temp_location", "gs://b/t"], "--proj"),
        (["convert", "--meta", "m.parquet", "--out", "o", "--shard_sise", "4"], "--shard_sise"),
    ],
)
def test_abbreviated_and_misspelled_flags_are_refused_and_named(argv, flag, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and flag in err, err[-400:]


def test_a_misspelled_flag_gets_a_suggestion(capsys):
    with pytest.raises(SystemExit):
        main(["convert", "--met", "m.parquet", "--ou", "out"])
    err = capsys.readouterr().err
    assert "--met -> --meta" in err and "--ou -> --out" in err and "never abbreviated" in err


@pytest.mark.parametrize(
    "argv,flag",
    [
        (["convert", "--meta", "m", "--out", "o", "--workers", "0"], "--workers"),
        (["convert", "--meta", "m", "--out", "o", "--shard_size", "0"], "--shard_size"),
        (["convert", "--meta", "m", "--out", "o", "--frac", "1.5"], "--frac"),
        (["convert", "--meta", "m", "--out", "o", "--frac", "0"], "--frac"),
        (["convert", "--meta", "m", "--out", "o", "--stats_fraction", "nan"], "--stats_fraction"),
        (["convert", "--meta", "m", "--out", "o", "--max_failure_fraction", "-0.1"], "--max_failure_fraction"),
        (["convert", "--meta", "m", "--out", "o", "--clip_percentiles", "1", "101"], "--clip_percentiles"),
        (["validate", "--meta", "m", "--out", "o", "--workers", "-2"], "--workers"),
        (["validate", "--meta", "m", "--out", "o", "--frac", "2"], "--frac"),
        (["synth", "--out", "o", "--n", "0"], "--n"),
        (["synth", "--out", "o", "--n", "3", "--corrupt", "1.5"], "--corrupt"),
    ],
)
def test_numeric_flags_are_checked_up_front(argv, flag, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and flag in capsys.readouterr().err
    assert not os.listdir(tmp_path)  # nothing was created


# --------------------------------------------------------------------------- output folders


def _convert(replica, out, *extra):
    return main(
        [
            "convert",
            "--meta",
            str(replica / "ok" / "metadata.parquet"),
            "--out",
            str(out),
            "--workers",
            "1",
            *IN_PROCESS,
            "--no_report",
            *extra,
        ]
    )


def test_a_folder_holding_other_files_is_refused_and_left_untouched(replica, tmp_path, capsys):
    out = tmp_path / "theirs"
    (out / "train").mkdir(parents=True)
    files = {
        "train/train-00000-of-00001.tfrecord": b"someone else's shard",
        ".tmp-x": b"their temp file",
        "stats.json": b'{"theirs": 1}',
        "notes.txt": b"mine",
    }
    for rel, data in files.items():
        (out / rel).write_bytes(data)
    assert _convert(replica, out) == 2
    err = capsys.readouterr().err
    assert "not written by `benbeam convert`" in err and "nothing there is deleted" in err
    assert {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()} == set(files)
    assert all((out / rel).read_bytes() == data for rel, data in files.items())


@pytest.mark.slow
def test_an_earlier_run_of_convert_is_recognised_and_rerun_in_place(replica, tmp_path):
    out = tmp_path / "ds"
    assert _convert(replica, out) == 0
    assert (out / outdir.MARKER).exists() and not (out / outdir.LOCK).exists()
    first = (out / manifest.MANIFEST).read_bytes()
    assert _convert(replica, out) == 0
    assert (out / manifest.MANIFEST).read_bytes() == first


def test_a_folder_of_another_command_is_refused(replica, tmp_path, capsys):
    out = tmp_path / "other"
    out.mkdir()
    (out / outdir.MARKER).write_text(json.dumps({"command": "benbeam predict"}))
    (out / "map.tif").write_bytes(b"x")
    assert _convert(replica, out) == 2
    assert "benbeam predict" in capsys.readouterr().err


def test_a_live_lock_fails_a_second_run_at_once(replica, tmp_path, capsys):
    out = tmp_path / "busy"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / outdir.LOCK).write_text(
            json.dumps({"pid": holder.pid, "host": socket.gethostname(), "command": "benbeam convert", "since": "now"})
        )
        t0 = time.monotonic()
        assert _convert(replica, out) == 3
        assert time.monotonic() - t0 < 15
        err = capsys.readouterr().err
        assert f"pid {holder.pid}" in err and "in use by another run" in err
        assert sorted(os.listdir(out)) == [outdir.LOCK]  # nothing written
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.slow
def test_a_stale_lock_of_a_dead_process_is_taken_over(replica, tmp_path):
    out = tmp_path / "stale"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / outdir.LOCK).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    assert _convert(replica, out) == 0
    assert (out / manifest.MANIFEST).exists() and not (out / outdir.LOCK).exists()


@pytest.mark.slow
def test_two_concurrent_converts_into_one_folder_one_is_refused(replica, tmp_path):
    out = tmp_path / "race"
    cmd = [
        sys.executable,
        "-m",
        "bigearthnet_beam",
        "convert",
        "--meta",
        str(replica / "ok" / "metadata.parquet"),
        "--out",
        str(out),
        "--workers",
        "1",
        "--no_report",
    ]
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    procs = [subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(rc for rc, _ in results)
    assert codes == [0, 3], results
    assert "in use by another run" in next(err for rc, err in results if rc == 3)
    assert main(["verify", str(out)]) == 0


@pytest.mark.slow
def test_validate_out_rules(replica, tmp_path, capsys):
    meta = str(replica / "ok" / "metadata.parquet")
    assert main(["validate", "--meta", meta, "--out", str(tmp_path), "--workers", "1"]) == 2
    assert "is a folder" in capsys.readouterr().err
    mine = tmp_path / "notes.json"
    mine.write_text('{"mine": true}')
    assert main(["validate", "--meta", meta, "--out", str(mine), "--workers", "1"]) == 2
    assert mine.read_text() == '{"mine": true}'
    rep = tmp_path / "v.json"
    assert main(["validate", "--meta", meta, "--out", str(rep), "--workers", "1", *IN_PROCESS]) == 0
    assert main(["validate", "--meta", meta, "--out", str(rep), "--workers", "1", *IN_PROCESS]) == 0  # rewritten


# --------------------------------------------------------------------------- honest exits


@pytest.mark.slow  # a whole conversion of its own
def test_a_mostly_failing_convert_exits_1_after_writing_everything(replica, tmp_path, capsys):
    out = tmp_path / "bad"
    rc = main(["convert", "--meta", str(replica / "bad" / "metadata.parquet"), "--out", str(out), "--workers", "1"])
    err = capsys.readouterr().err
    if (out / manifest.MANIFEST).exists():  # some training patch survived: a dataset, and exit 1 by the threshold
        assert rc == 1 and "more than --max_failure_fraction 0.05" in err
        assert (out / manifest.REPORT_HTML).exists()
    else:  # no training patch survived: the reasons are still written
        assert rc == 1 and "no statistics" in err
    assert (out / manifest.FAILURES_JSONL).read_text().strip()
    assert "Traceback" not in err


@pytest.mark.slow
def test_validate_exits_1_when_patches_fail(replica, tmp_path, capsys):
    rep = tmp_path / "v.json"
    assert (
        main(
            [
                "validate",
                "--meta",
                str(replica / "bad" / "metadata.parquet"),
                "--out",
                str(rep),
                "--workers",
                "1",
                "--deep",
            ]
        )
        == 1
    )
    doc = json.loads(rep.read_text())
    assert doc["totals"]["failed"] > 0 and "more than --max_failure_fraction" in capsys.readouterr().err
    assert (
        main(
            [
                "validate",
                "--meta",
                str(replica / "bad" / "metadata.parquet"),
                "--out",
                str(rep),
                "--workers",
                "1",
                "--deep",
                "--max_failure_fraction",
                "1",
            ]
        )
        == 0
    )


def test_every_failing_check_of_a_patch_is_listed(replica, tmp_path):
    import shutil

    src = replica / "ok"
    work = tmp_path / "two"
    shutil.copytree(src, work)
    from bigearthnet_beam.transforms import metadata as md

    table, _ = md.read_table(str(work / "metadata.parquet"))
    rec = md.check_row(md.table_rows(table)[0], str(work))
    urls = md.record_urls(rec)
    os.unlink(urls["B04"])
    open(urls["VH"], "wb").close()
    from bigearthnet_beam.schemas import failures
    from bigearthnet_beam.transforms.patch import fetch_objects

    with pytest.raises(failures.PatchError) as e:
        fetch_objects(urls, root=str(work))
    checks = e.value.checks()
    assert [c["reason"] for c in checks] == ["missing_object", "empty_object"]
    assert checks[0]["detail"].startswith("B04 ") and checks[1]["detail"].startswith("VH ")
    d = e.value.record(rec["patch_id"], rec["split"])
    assert d["reason"] == "missing_object" and len(d["reasons"]) == 2


# --------------------------------------------------------------------------- one clear line


def test_ctrl_c_is_one_line_and_exit_130(monkeypatch, capsys):
    import bigearthnet_beam.beam_pipeline.index as index

    def interrupted(argv):
        raise KeyboardInterrupt

    monkeypatch.setattr(index, "run", interrupted)
    assert main(["index", "--meta", "m", "--out", "o"]) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "interrupted" in err


@pytest.mark.parametrize(
    "exc,code",
    [
        (RuntimeError("boom"), 1),
        (OSError(28, "No space left on device"), 3),
        (outdir.OutputBusy("--out x is in use"), 3),
        (manifest.ManifestError("x/dataset.json is malformed"), 2),
        (KeyboardInterrupt(), 130),
    ],
)
def test_debug_shows_the_traceback_and_keeps_the_exit_code(exc, code, monkeypatch, capsys):
    import bigearthnet_beam.beam_pipeline.index as index

    def broken(argv):
        raise exc

    monkeypatch.setattr(index, "run", broken)
    assert main(["index", "--meta", "m", "--out", "o"]) == code
    assert "Traceback" not in capsys.readouterr().err
    try:
        assert main(["index", "--meta", "m", "--out", "o", "--debug"]) == code
    finally:
        cli.DEBUG["on"] = False
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("benbeam index: ")


@pytest.mark.parametrize(
    "exc,code,words",
    [
        (ConnectionRefusedError(111, "Connection refused"), 3, "cannot be reached"),
        (OSError(28, "No space left on device"), 3, "disk is full"),
        (PermissionError(13, "Permission denied", "/ro/out"), 3, "permission denied on /ro/out"),
        (OSError(30, "Read-only file system", "/ro/out"), 3, "read-only file system"),
        (FileNotFoundError(2, "No such file or directory", "/no/such"), 2, "/no/such"),
        (type("NoCredentialsError", (Exception,), {})("Unable to locate credentials"), 3, "credentials"),
        (RuntimeError("a bug"), 1, "--debug"),
    ],
)
def test_unhandled_failures_are_classified(exc, code, words):
    got, line = cli.classify(exc)
    assert got == code and words in line and "\n" not in line


def test_an_unreachable_endpoint_fails_in_seconds_with_exit_3(capsys):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    rc = main(
        [
            "convert",
            "--meta",
            "s3://bucket/metadata.parquet",
            "--out",
            "s3://bucket/out",
            "--s3_endpoint_url",
            f"http://127.0.0.1:{port}",
        ]
    )
    assert rc == 3 and time.monotonic() - t0 < 10
    err = capsys.readouterr().err
    assert "cannot be reached" in err and err.count("\n") == 1


def test_refused_connections_are_retried_twice_not_five_times():
    from bigearthnet_beam.transforms import storeconfig

    calls = []

    def refused():
        calls.append(1)
        raise ConnectionRefusedError(111, "Connection refused")

    with pytest.raises(ConnectionRefusedError):
        storeconfig.retry(refused, sleep=lambda s: None)
    assert len(calls) == storeconfig.REFUSED_ATTEMPTS == 2


@pytest.mark.slow
def test_a_corrupt_shard_in_train_and_evaluate_is_named_in_one_line(replica, tmp_path, capsys):
    out = tmp_path / "ds"
    assert _convert(replica, out) == 0
    man = json.loads((out / manifest.MANIFEST).read_text())
    shard = out / man["splits"]["train"]["shards"][0]["path"]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte inside a record: its CRC no longer matches
    shard.write_bytes(bytes(data))
    capsys.readouterr()
    rc = main(
        [
            "train",
            "--data",
            str(out),
            "--save",
            str(tmp_path / "run" / "m.keras"),
            "--epochs",
            "1",
            "--width",
            "4",
            "--batch",
            "4",
            "--no_tensorboard",
        ]
    )  # --save: a new folder (output-folder rules)
    err = capsys.readouterr().err
    assert rc == 1 and "corrupt shard" in err and str(shard) in err and "Traceback" not in err, err[-1500:]
    for flag in ("--epoch", "--widt"):  # the trainer's flags are never abbreviated either
        with pytest.raises(SystemExit):
            main(["train", "--data", str(out), flag, "1"])
        assert flag in capsys.readouterr().err


@pytest.mark.parametrize(
    "flags,word",
    [
        (["--project", "p", "--region", "europe-west4", "--temp_location", "gs://my-bucket/tmp"], "--project"),
        (["--project", "my-project", "--region", "r", "--temp_location", "gs://my-bucket/tmp"], "--region"),
        (["--project", "my-project", "--region", "europe-west4", "--temp_location", "gs://b/tmp"], "--temp_location"),
        (
            ["--project", "my-project", "--region", "europe-west4", "--temp_location", "gs://My_Bucket/tmp"],
            "--temp_location",
        ),
    ],
)
def test_launch_dataflow_placeholder_names_are_one_line_exit_2(flags, word, capsys):
    t0 = time.monotonic()
    argv = ["launch", "dataflow", *flags, "--dry_run", "--", "--meta", "m.parquet", "--out", "gs://my-bucket/o"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert word in err and err.count("\n") == 1 and time.monotonic() - t0 < 5


def test_a_run_killed_while_writing_its_marker_is_still_recognised(tmp_path):
    out = tmp_path / "killed"
    out.mkdir()
    (out / f".tmp-{outdir.MARKER}-0123").write_text("{")
    (out / outdir.LOCK).write_text("{}")
    outdir.check(str(out), "benbeam convert")  # no OutputRefused
    (out / "theirs.txt").write_text("x")
    with pytest.raises(outdir.OutputRefused):
        outdir.check(str(out), "benbeam convert")


# --------------------------------------------------------------------------- one mapping from types to codes


class _Http(Exception):
    def __init__(self, status):
        super().__init__(f"HTTP {status}")
        self.status = status


@pytest.mark.parametrize(
    "exc,code",
    [
        (RuntimeError("No space left on device"), 1),  # the words do not decide
        (RuntimeError("Connection refused by the endpoint"), 1),
        (ValueError("Permission denied"), 1),
        (_Http(403), 3),
        (_Http(503), 3),
        (outdir.OutputRefused("--out x holds other files"), 2),
        (outdir.OutputUnwritable("--out /ro is on a read-only file system"), 3),
        (manifest.ManifestError("bad"), 2),
    ],
)
def test_classify_decides_by_type_errno_and_status_never_by_words(exc, code):
    assert cli.classify(exc)[0] == code


def test_an_error_raised_from_a_full_disk_keeps_its_own_type_and_code():
    from bigearthnet_beam.schemas import errors

    try:
        try:
            raise OSError(28, "No space left on device")
        except OSError as e:
            raise errors.IntegrityError("3 shards do not add up") from e
    except errors.IntegrityError as e:
        got = cli.classify(e)
    assert got == (1, "3 shards do not add up")


def test_the_projects_errors_derive_from_schemas_errors_and_keep_their_builtin_bases():
    from bigearthnet_beam.launch.staging import StagingError
    from bigearthnet_beam.schemas import errors
    from bigearthnet_beam.transforms.archives import ArchiveError
    from bigearthnet_beam.transforms.metadata import MetadataError

    table = {
        outdir.OutputRefused: (errors.InputError, ValueError),
        outdir.OutputBusy: (errors.UnavailableError, RuntimeError),
        MetadataError: (errors.InputError, ValueError),
        manifest.ManifestError: (errors.InputError, ValueError),
        ArchiveError: (errors.IntegrityError,),
        StagingError: (errors.UnavailableError, RuntimeError),
    }
    for cls, bases in table.items():
        assert all(issubclass(cls, b) for b in bases), cls
    assert [errors.exit_code(c("x")) for c in table] == [2, 3, 2, 2, 1, 3]


def test_predict_and_trainer_errors_map_to_their_codes():
    from bigearthnet_beam.schemas import errors
    from bigearthnet_beam.trainer.data import ShardError
    from bigearthnet_beam.trainer.inference.settings import PredictEnvironmentError, PredictError

    assert errors.exit_code(PredictError("x")) == 2 and isinstance(PredictError("x"), ValueError)
    assert errors.exit_code(PredictEnvironmentError("x")) == 3 and isinstance(
        PredictEnvironmentError("x"), PredictError
    )
    assert errors.exit_code(ShardError("x")) == 1


def test_credentials_in_urls_are_never_echoed(capsys):
    exc = ConnectionRefusedError(111, "nothing answers at http://AKIAEXAMPLE:s3cr3t@127.0.0.1:1/")
    code, line = cli.classify(exc)
    assert code == 3 and "s3cr3t" not in line and "AKIAEXAMPLE" not in line and "http://***@127.0.0.1:1/" in line
    with pytest.raises(SystemExit) as e:
        main(["convert", "--meta", "m", "--out", "ftp://user:hunter2@host/x"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "hunter2" not in err and err.count("\n") == 1


def test_a_refused_endpoint_names_the_flag_of_the_endpoint_configured():
    from bigearthnet_beam.transforms.storage import Storage

    dead = "http://127.0.0.1:9"  # the discard port: nothing listens
    for st, flag, other in (
        (Storage(gcs_endpoint_url=dead), "--gcs_endpoint_url", "--s3_endpoint_url"),
        (Storage(s3_endpoint_url=dead), "--s3_endpoint_url", "--gcs_endpoint_url"),
    ):
        with pytest.raises(ConnectionRefusedError) as e:
            st.probe()  # the refusal says which endpoint refused: no process-wide setting is consulted
        code, line = cli.classify(e.value)
        assert code == 3 and flag in line and other not in line, line
    line = cli.classify(ConnectionRefusedError(111, "refused"))[1]  # no client, no value: both named
    assert "--s3_endpoint_url / --gcs_endpoint_url" in line
