"""Helpers the test modules share: run the real CLI, read what a conversion wrote, and prove that
a shared folder was left as it was found.

The session-wide data built with these (a synthetic replica, a converted dataset) are the
fixtures of ``tests/conftest.py``; modules that need data of their own shape build it here too.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path

from bigearthnet_beam.beam_pipeline.cli import main
from bigearthnet_beam.schemas import manifest

# Beam's in-memory runner, in this process: for the conversions whose running mode is not what a
# test is about. It writes the bytes of the default runner's worker processes
# (tests/test_byte_identity.py checks it) without their start-up (~4 s a pipeline).
IN_PROCESS = ("--direct_running_mode", "in_memory")


def synth(out: Path, n: int, *extra: str, seed: int = 0, workers: int = 1) -> Path:
    """``benbeam synth --out OUT --n N --seed S --workers W [extra]``; the replica's folder."""
    argv = ["synth", "--out", str(out), "--n", str(n), "--seed", str(seed), "--workers", str(workers), *extra]
    rc = main(argv)
    assert rc == 0, f"benbeam {' '.join(argv)} exited {rc}"
    return Path(out)


def convert(replica: Path, out: Path, *extra: str) -> int:
    """``benbeam convert --meta REPLICA/metadata.parquet --out OUT [extra]``; its exit code."""
    return main(["convert", "--meta", str(Path(replica) / "metadata.parquet"), "--out", str(out), *extra])


def read_manifest(dataset: Path) -> dict:
    """A dataset's ``dataset.json`` as a dict."""
    return json.loads((Path(dataset) / manifest.MANIFEST).read_text())


def read_failures(dataset: Path) -> list[dict]:
    """A dataset's dead letters, one dict per line of ``failures.jsonl``."""
    text = (Path(dataset) / manifest.FAILURES_JSONL).read_text()
    return [json.loads(line) for line in text.splitlines()]


def tree_digest(root: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``root`` (symlinks by their target's name)."""
    root = Path(root)
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_symlink():
            out[rel] = "-> " + str(p.readlink())
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
        elif p.is_dir():
            out[rel + "/"] = "dir"
    return out


def changes(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """What differs between two ``tree_digest`` results: added, removed and changed paths."""
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(k for k in set(before) & set(after) if before[k] != after[k])
    return [f"+{k}" for k in added] + [f"-{k}" for k in removed] + [f"~{k}" for k in changed]


# The fast tier's pipeline count (tests/conftest.py): pipelines started while "shared" > 0 are
# among the handful the fast tier allows; the others are listed in "started".
PIPELINES: dict = {"shared": 0, "started": []}


@contextlib.contextmanager
def fast_tier_pipelines():
    """Pipelines started inside are among the fast tier's handful (``make test-fast`` fails a test
    that starts any other): the session's shared conversion and the recorded-bytes conversion."""
    PIPELINES["shared"] += 1
    try:
        yield
    finally:
        PIPELINES["shared"] -= 1
