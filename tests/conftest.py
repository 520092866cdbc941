"""Session-wide test data, built once and shared read-only, and the suite's conventions.

* ``replica``: a synthetic reBEN replica of 36 patches (seed 7) with one patch of every fault
  kind of ``schemas.failures.FAULT_KINDS`` (``injected_faults.json`` lists them);
* ``converted``: ``benbeam convert`` of it (``--shard_size 8 --max_failure_fraction 1``, in one
  process): shards in every split, a dead letter per fault, ``report.html``.

Both are read-only: a test that needs to change them copies them first (``shutil.copytree``).
At the end of the session each is compared with the digest taken when it was built, and a
test that wrote into one fails the session, naming the files. Under pytest-xdist (``-n 2``)
the workers share one copy: the first that needs it builds it, under a lock, and every worker
checks the digest at its end (so a write by any test is caught). Helpers: ``tests/helpers.py``.

Tests marked ``slow`` start servers or browsers, train, kill processes, build environments or
run extra whole conversions; ``make test-fast`` leaves them out. There, a test that starts a Beam
pipeline in this process (other than the shared conversion) fails, naming itself. The default per-test timeout
is in ``pytest.ini``; a longer one is given with ``@pytest.mark.timeout(SECONDS)`` where needed.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path

import pytest

from bigearthnet_beam.schemas.failures import FAULT_KINDS
from tests import helpers

REPLICA_N = 36
REPLICA_SEED = 7


def _shared(root: Path):
    """Yield ``root``; afterwards fail if any file under it was added, removed or changed."""
    before = helpers.tree_digest(root)
    yield root
    diff = helpers.changes(before, helpers.tree_digest(root))
    assert not diff, f"a test changed the shared read-only data under {root}: {diff[:20]}"


# --------------------------------------------------------------------------- the fast tier's pipelines

# Under `-m "not slow"` (make test-fast) every Beam pipeline started in this process is counted;
# a test that starts one, in its body or its fixtures, fails, except the fast tier's handful:
# the session's shared conversion and the recorded-bytes conversion of test_byte_identity (both
# inside helpers.fast_tier_pipelines). The fast tier is unit tests on plain functions.
_PIPELINES = helpers.PIPELINES


def pytest_configure(config):
    if (config.option.markexpr or "").strip() != "not slow":
        return
    import apache_beam as beam

    run = beam.Pipeline.run

    def counted(self, *args, **kwargs):
        if not _PIPELINES["shared"]:
            _PIPELINES["started"].append(type(self).__name__)
        return run(self, *args, **kwargs)

    beam.Pipeline.run = counted


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    started = _PIPELINES["started"]
    if started and call.when in ("setup", "call"):
        report = outcome.get_result()
        report.outcome = "failed"
        report.longrepr = (
            f"{item.nodeid} started {len(started)} Beam pipeline(s) in its {call.when} (fixtures included): "
            "the fast tier (make test-fast) starts none beyond the session's shared conversion "
            "(tests/conftest.py); mark the test @pytest.mark.slow"
        )
        started.clear()


def _built_once(tmp_path_factory, name: str, build) -> Path:
    """``build(folder)`` once per run: under pytest-xdist the first worker to ask builds it in
    the run's shared temporary folder (under a lock) and the others use it; alone, a new folder.
    Its pipelines are the fast tier's allowed ones."""
    with helpers.fast_tier_pipelines():
        return _build_once(tmp_path_factory, name, build)


def _build_once(tmp_path_factory, name: str, build) -> Path:
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return build(tmp_path_factory.mktemp(name))
    shared = tmp_path_factory.getbasetemp().parent  # pytest-N/, above every worker's gwK/
    folder, done = shared / name, shared / f"{name}.built"
    with open(shared / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)  # what a worker that failed half-way left
            folder.mkdir()
            build(folder)
            done.touch()
    return folder


@pytest.fixture(scope="session")
def replica(tmp_path_factory) -> Path:
    """A 36-patch synthetic replica with every fault kind injected once (read-only)."""

    def build(folder: Path) -> Path:
        # one process: synth writes the same bytes whatever the worker count (tests/test_synth.py)
        return helpers.synth(folder, REPLICA_N, "--faults", ",".join(FAULT_KINDS), seed=REPLICA_SEED, workers=1)

    yield from _shared(_built_once(tmp_path_factory, "replica", build))


@pytest.fixture(scope="session")
def converted(replica, tmp_path_factory) -> Path:
    """``benbeam convert`` of ``replica`` with 8-patch shards, every failure tolerated (read-only)."""

    def build(folder: Path) -> Path:
        # in one process (Beam's in-memory DirectRunner): the same bytes as the default
        # multi-process run (tests/test_byte_identity.py checks it), at a third of the CPU time
        flags = ["--shard_size", "8", "--max_failure_fraction", "1", "--direct_running_mode", "in_memory"]
        assert helpers.convert(replica, folder / "ds", *flags) == 0
        return folder

    yield from _shared(_built_once(tmp_path_factory, "converted", build) / "ds")


# The modules that take longest in the full suite (`pytest --durations`), longest first: with
# pytest-xdist's --dist loadfile each goes whole to one process, and started first, none of them is
# left running alone at the end while the other process idles. Other modules keep their order.
LONGEST_FIRST = (
    "test_trainer.py",
    "test_raw_encoding.py",
    "test_raw_read_xla.py",
    "test_interruption.py",
    "test_packaging.py",
    "test_object_stores.py",
    "test_predict_cli.py",
    "test_archives.py",
    "test_api.py",
    "test_gpu_figures.py",
    "test_exit_codes.py",
    "test_convert_e2e.py",
)


def pytest_collection_modifyitems(items):
    """Run the modules of ``LONGEST_FIRST`` first, in that order (the order within a module is kept)."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
