"""Session-wide test data, built once and shared read-only, and the suite's conventions.

* ``replica``: a synthetic reBEN replica of 36 patches (seed 7) with one patch of every fault
  kind of ``schemas.failures.FAULT_KINDS`` (``injected_faults.json`` lists them);
* ``converted``: ``benbeam convert`` of it (``--shard_size 8 --max_failure_fraction 1``, in one
  process): shards in every split, a dead letter per fault, ``report.html``.

Both are read-only: a test that needs to change them copies them first (``shutil.copytree``).
At the end of the session each is compared with the digest taken when it was built, and a
test that wrote into one fails the session, naming the files. Helpers: ``tests/helpers.py``.

Tests marked ``slow`` start servers or browsers, train, kill processes, build environments or
run extra whole conversions; ``make test-fast`` leaves them out. The default per-test timeout
is in ``pytest.ini``; a longer one is given with ``@pytest.mark.timeout(SECONDS)`` where needed.
"""

from __future__ import annotations

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


@pytest.fixture(scope="session")
def replica(tmp_path_factory) -> Path:
    """A 36-patch synthetic replica with every fault kind injected once (read-only)."""
    root = helpers.synth(
        tmp_path_factory.mktemp("replica"), REPLICA_N, "--faults", ",".join(FAULT_KINDS), seed=REPLICA_SEED, workers=2
    )
    yield from _shared(root)


@pytest.fixture(scope="session")
def converted(replica, tmp_path_factory) -> Path:
    """``benbeam convert`` of ``replica`` with 8-patch shards, every failure tolerated (read-only)."""
    out = tmp_path_factory.mktemp("converted") / "ds"
    # in one process (Beam's in-memory DirectRunner): the same bytes as the default multi-process
    # run (tests/test_byte_identity.py runs that), at a third of the CPU time
    flags = ["--shard_size", "8", "--max_failure_fraction", "1", "--direct_running_mode", "in_memory"]
    assert helpers.convert(replica, out, *flags) == 0
    yield from _shared(out)
