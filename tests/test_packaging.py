"""What a remote worker gets is enough: the project's wheel, installed without extras into
a fresh virtual environment (pip from the registry, with pip's cache), converts through the
portable Job API with the SDK worker pool of that environment, and builds a Dataflow job
that stages the package itself. TensorFlow is not importable there.

The environment is built once per test session (about 1.5 min with a warm pip cache).
"""

import json
import os
import socket
import subprocess
import sys
import time
import venv

import pytest

from bigearthnet_beam.beam_pipeline.cli import main
from bigearthnet_beam.launch import staging
from bigearthnet_beam.schemas import manifest
from tests.servers import free_port

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(900),
]  # servers, clusters or fresh environments: longer than the default


def _clean_env(bin_dir=None) -> dict:
    """The environment of an activated venv (the worker pool starts `python` from PATH)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    if bin_dir is not None:
        env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
        env["VIRTUAL_ENV"] = os.path.dirname(str(bin_dir))
    return env


@pytest.fixture(scope="session")
def wheel_env(tmp_path_factory):
    """(bin folder, folder to run in) of a venv holding only the wheel and its install_requires."""
    root = tmp_path_factory.mktemp("wheel-env")
    whl = staging.build_wheel(str(root / "dist"))
    venv.EnvBuilder(with_pip=True).create(str(root / "venv"))
    bin_dir = root / "venv" / "bin"
    t0 = time.monotonic()
    r = subprocess.run(
        [str(bin_dir / "python"), "-m", "pip", "install", "-q", "--no-compile", whl],
        env=_clean_env(),
        capture_output=True,
        text=True,
        cwd=str(root),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    print(f"wheel environment installed in {time.monotonic() - t0:.0f} s", file=sys.stderr)
    run_dir = root / "run"  # away from the checkout: nothing can be imported from it
    run_dir.mkdir()
    return bin_dir, run_dir


def _run(wheel_env, *argv, timeout=600):
    bin_dir, run_dir = wheel_env
    return subprocess.run(
        [str(bin_dir / argv[0]), *argv[1:]],
        env=_clean_env(bin_dir),
        cwd=str(run_dir),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    d = tmp_path_factory.mktemp("pkg-sample")
    assert main(["synth", "--out", str(d / "reben"), "--n", "14", "--seed", "4", "--faults", "missing_files"]) == 0
    assert (
        main(
            [
                "convert",
                "--meta",
                str(d / "reben" / "metadata.parquet"),
                "--out",
                str(d / "direct"),
                "--shard_size",
                "4",
                "--max_failure_fraction",  # one patch of 14 has missing files on purpose
                "1",
            ]
        )
        == 0
    )
    return d, json.loads((d / "direct" / manifest.MANIFEST).read_text())


def test_the_wheel_installs_no_tensorflow(wheel_env):
    r = _run(wheel_env, "python", "-c", "import tensorflow")
    assert r.returncode == 1 and "No module named 'tensorflow'" in r.stderr
    r = _run(
        wheel_env,
        "python",
        "-c",
        "import bigearthnet_beam.beam_pipeline.convert, bigearthnet_beam.beam_pipeline.verify, sys; "
        "import bigearthnet_beam.launch.staging; "
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules; print(bigearthnet_beam.__file__)",
    )
    assert r.returncode == 0, r.stderr
    assert "site-packages" in r.stdout
    r = _run(wheel_env, "benbeam", "train", "--data", "x")
    assert r.returncode == 3
    assert (
        r.stderr.strip().splitlines()[-1]
        == "benbeam train: error: tensorflow, keras is not installed; pip install 'bigearthnet-beam[train]'"
    )


def _wait_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 90) -> None:
    t0 = time.monotonic()
    while True:
        assert proc.poll() is None, f"{what} exited with {proc.returncode}"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert time.monotonic() - t0 < timeout, f"{what} did not start"
            time.sleep(0.3)


def test_worker_pool_of_the_wheel_converts_through_the_job_api(wheel_env, sample, tmp_path):
    d, direct = sample
    bin_dir, run_dir = wheel_env
    pool_port, js_port = free_port(), free_port()
    procs = [
        subprocess.Popen(
            [
                str(bin_dir / "python"),
                "-m",
                "apache_beam.runners.worker.worker_pool_main",
                f"--service_port={pool_port}",
            ],
            env=_clean_env(bin_dir),
            cwd=str(run_dir),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    ]
    try:
        procs.append(
            subprocess.Popen(
                [
                    str(bin_dir / "python"),
                    "-m",
                    "apache_beam.runners.portability.local_job_service_main",
                    "--port",
                    str(js_port),
                ],
                env=_clean_env(bin_dir),
                cwd=str(run_dir),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        )
        _wait_port(pool_port, procs[0], "worker pool")
        _wait_port(js_port, procs[1], "job service")
        out = tmp_path / "external"
        r = _run(
            wheel_env,
            "benbeam",
            "launch",
            "portable",
            "--job_endpoint",
            f"localhost:{js_port}",
            "--environment_type",
            "EXTERNAL",
            "--environment_config",
            f"localhost:{pool_port}",
            "--",
            "--meta",
            str(d / "reben" / "metadata.parquet"),
            "--out",
            str(out),
            "--shard_size",
            "4",
            "--max_failure_fraction",
            "1",
        )
        assert r.returncode == 0, r.stderr[-3000:]
        assert "staging bigearthnet_beam-" in r.stderr  # the wheel repacked from the installed package
    finally:
        for p in procs:
            p.kill()
            p.wait(10)
    man = json.loads((out / manifest.MANIFEST).read_text())
    hashes = lambda m: {s["path"]: s["sha256"] for e in m["splits"].values() for s in e["shards"]}  # noqa: E731
    assert hashes(man) == hashes(direct)
    assert man["statistics"] == direct["statistics"] and man["failures"] == direct["failures"]
    run = json.loads((out / manifest.RUN_JSON).read_text())
    assert run["runner"] == "PortableRunner"
    # verify works there too, without the tfx-bsl cross-check (which says which extra it needs)
    r = _run(wheel_env, "benbeam", "verify", str(out))
    assert r.returncode == 0 and "tfx-bsl not installed" in r.stdout, r.stderr[-2000:]
    r = _run(wheel_env, "benbeam", "verify", str(out), "--tfx", "on")
    assert r.returncode == 3 and "pip install 'bigearthnet-beam[tfx]'" in r.stderr


def test_dataflow_dry_run_from_the_installed_wheel(wheel_env, sample):
    d, _ = sample
    r = _run(
        wheel_env,
        "benbeam",
        "launch",
        "dataflow",
        "--project",
        "my-project",
        "--region",
        "europe-west4",
        "--temp_location",
        "gs://my-bucket/tmp",
        "--dry_run",
        "--",
        "--meta",
        str(d / "reben" / "metadata.parquet"),
        "--out",
        "gs://my-bucket/ds",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "job graphs of `convert`" in r.stdout
    staged = [line.split("staged: ", 1)[1] for line in r.stdout.splitlines() if "staged: " in line]
    assert any(s.startswith("bigearthnet_beam-") and s.endswith(".whl") for s in staged), staged
    # a --setup_file that does not exist (the old default inside site-packages) is refused
    r = _run(
        wheel_env,
        "benbeam",
        "launch",
        "dataflow",
        "--project",
        "my-project",
        "--region",
        "europe-west4",
        "--temp_location",
        "gs://my-bucket/t",
        "--setup_file",
        "/nowhere/setup.py",
        "--dry_run",
        "--",
        "--meta",
        "m",
        "--out",
        "gs://my-bucket/o",
    )
    assert r.returncode == 2 and "does not exist" in r.stderr
