"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

import os
import subprocess
import sys
import time


def timed_convert(meta: str, out: str, extra: list[str], cores: set[int] | None = None) -> float:
    """Run `benbeam convert` in a fresh process (after flushing earlier dirty pages), on
    ``cores`` only if given; wall seconds."""
    cmd = [sys.executable, "-m", "bigearthnet_beam", "convert", "--meta", meta, "--out", out, *extra]
    os.sync()
    t0 = time.perf_counter()
    pin = (lambda: os.sched_setaffinity(0, cores)) if cores else None
    res = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=pin)
    dt = time.perf_counter() - t0
    if res.returncode != 0:
        print(res.stdout[-3000:], res.stderr[-3000:])
        raise SystemExit(f"convert failed ({res.returncode})")
    return dt
