"""Killing `convert` (SIGKILL, the whole process group) at several points, then running it
again, gives a dataset identical to an uninterrupted run; after every kill, no file under a
shard's final name is partial and `dataset.json` is either absent or complete.

Kill points are states of the output folder (it exists; a shard is being written; the
first shard is complete; half of them are), not fixed delays, so that they interrupt the
run on a fast machine as on a slow one."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from bigearthnet_beam.beam_pipeline.cli import main
from bigearthnet_beam.schemas import manifest
from bigearthnet_beam.transforms.encode import iter_records
from tests.helpers import IN_PROCESS

# servers, job services, clusters or killed processes: make test-fast leaves these out
pytestmark = pytest.mark.slow


def _shards(out):
    return [p for p in out.glob("*/*.tfrecord*") if not p.name.startswith(".tmp-")]


KILL_WHEN = {
    "output folder created": lambda out, n: out.exists(),
    "a shard being written": lambda out, n: any(out.glob("*/.tmp-*")),
    "first shard complete": lambda out, n: len(_shards(out)) >= 1,
    "half of the shards complete": lambda out, n: len(_shards(out)) >= n // 2,
}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    d = tmp_path_factory.mktemp("kill")
    argv = ["synth", "--out", str(d / "reben"), "--n", "40", "--seed", "21", "--faults", "s1_nan", "--workers", "1"]
    assert main(argv) == 0
    # the reference in this process; the runs that are killed use the worker processes
    argv = ["convert", "--meta", str(d / "reben" / "metadata.parquet"), "--out", str(d / "ref"), "--shard_size", "5"]
    assert main([*argv, *IN_PROCESS]) == 0
    return d, json.loads((d / "ref" / manifest.MANIFEST).read_text())


def _convert_cmd(d, out):
    return [
        sys.executable,
        "-m",
        "bigearthnet_beam",
        "convert",
        "--meta",
        str(d / "reben" / "metadata.parquet"),
        "--out",
        str(out),
        "--shard_size",
        "5",
    ]


def _check_visible_state(out):
    """What a reader could see right after a crash: only complete shards, no half manifest."""
    man_path = out / manifest.MANIFEST
    if man_path.exists():
        manifest.validate(json.loads(man_path.read_text()))
    for split_dir in out.iterdir():
        if not split_dir.is_dir():
            continue
        for f in split_dir.iterdir():
            if f.name.startswith(".tmp-"):
                continue  # temporary names are never read; the next run removes them
            n = sum(1 for _ in iter_records(str(f), "none"))  # CRCs and framing checked
            assert n > 0 or f.stat().st_size == 0, f


def test_kill_at_four_points_then_rerun_gives_the_same_dataset(reference, tmp_path):
    d, ref = reference
    hashes = lambda m: {s["path"]: s["sha256"] for e in m["splits"].values() for s in e["shards"]}  # noqa: E731
    kills = 0
    n_shards = len(hashes(ref))
    for i, when in enumerate(KILL_WHEN.values()):
        out = tmp_path / f"run{i}"
        proc = subprocess.Popen(
            _convert_cmd(d, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        while proc.poll() is None and not when(out, n_shards):
            time.sleep(0.005)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the driver and every worker process, at once
            kills += 1
        proc.wait()
        if out.exists():
            _check_visible_state(out)
        res = subprocess.run(_convert_cmd(d, out), capture_output=True, text=True)
        assert res.returncode == 0, res.stderr[-2000:]
        man = json.loads((out / manifest.MANIFEST).read_text())
        assert hashes(man) == hashes(ref)
        assert man["statistics"] == ref["statistics"]
        assert man["failures"] == ref["failures"]
        leftovers = [p for p in out.rglob(".tmp-*")]
        assert not leftovers, leftovers
    assert kills >= 3, kills  # the kill points really interrupted running conversions


_FULL_DISK_SCRIPT = r"""
import hashlib, json, os, subprocess, sys
mnt, size, cmd = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", mnt], check=True)
res = subprocess.run(cmd, capture_output=True, text=True)
files = {}
for dirpath, _, names in os.walk(mnt):
    for n in names:
        p = os.path.join(dirpath, n)
        files[os.path.relpath(p, mnt)] = hashlib.sha256(open(p, "rb").read()).hexdigest()
print(json.dumps({"rc": res.returncode, "stderr": res.stderr[-3000:], "files": files}))
"""


def test_a_full_disk_is_a_clear_error_and_no_dataset_is_presented_as_complete(reference, tmp_path):
    """`convert` onto a filesystem that fills up half way (a small tmpfs, mounted in a private
    mount namespace): exit non-zero with a message that says the disk is full, no
    dataset.json, and every file under a shard's final name is a complete shard, byte-identical
    to the uninterrupted run's."""
    import shutil

    d, ref = reference
    if shutil.which("unshare") is None:
        msg = "util-linux's unshare is needed to mount a small tmpfs for the full-disk test"
        pytest.fail(msg) if os.environ.get("CI") else pytest.skip(msg)
    total = sum(s["bytes"] for info in ref["splits"].values() for s in info["shards"])
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    cmd = _convert_cmd(d, mnt / "ds")
    res = subprocess.run(
        [
            "unshare",
            "--user",
            "--map-root-user",
            "--mount",
            sys.executable,
            "-c",
            _FULL_DISK_SCRIPT,
            str(mnt),
            str(total // 2),
            json.dumps(cmd),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-2000:]  # the namespace and the mount worked
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["rc"] == 3, out["stderr"]  # a full disk is an environment failure (README: exit codes)
    assert "No space left on device" in out["stderr"] and "is full" in out["stderr"]
    said = [line for line in out["stderr"].splitlines() if line.startswith("benbeam convert:")]
    assert len(said) == 1 and "is full" in said[0], said  # one line (issue 24, W8)
    assert f"no {manifest.MANIFEST} was written" in out["stderr"]
    assert manifest.MANIFEST not in {os.path.basename(f) for f in out["files"]}
    ref_hashes = {s["path"]: s["sha256"] for info in ref["splits"].values() for s in info["shards"]}
    final = {
        f[len("ds/") :]: h
        for f, h in out["files"].items()
        if f.endswith(".tfrecord") and not os.path.basename(f).startswith(".tmp-")
    }
    assert 0 < len(final) < len(ref_hashes)  # some shards were finished before the disk filled
    for path, h in final.items():
        assert ref_hashes[path] == h, f"{path} is visible under its final name but is not the complete shard"


def test_a_rerun_removes_what_a_killed_run_left_at_the_top(reference, tmp_path):
    """A kill between writing a temporary file and renaming it (the write probe, a JSON
    file) leaves a `.tmp-*` at the top of the output: the next run removes it."""
    d, ref = reference
    out = tmp_path / "out"
    out.mkdir()
    left = [out / ".tmp-.benbeam-write-test-0123", out / ".tmp-dataset.json-4567", out / ".benbeam-write-test"]
    for p in left:
        p.write_bytes(b"half")
    # a run marks --out before writing anything else (transforms.outdir), so a killed one left its marker
    (out / ".benbeam-run.json").write_text('{"command": "benbeam convert"}')
    res = subprocess.run(_convert_cmd(d, out), capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert not [p for p in left if p.exists()]
    assert json.loads((out / manifest.MANIFEST).read_text())["splits"] == ref["splits"]
