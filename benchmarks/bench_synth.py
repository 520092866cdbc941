"""Benchmark `benbeam synth`: prints patches/s for N patches (default 1,000); asserts nothing."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=None)
    args = ap.parse_args()
    from bigearthnet_beam.synth.generator import generate

    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        s = generate(os.path.join(d, "reben"), args.n, seed=0, workers=args.workers)
        dt = time.perf_counter() - t0
        files = sum(len(f) for _, _, f in os.walk(d))
    print(
        f"synth: {args.n} patches ({files} files) in {dt:.1f} s = {args.n / dt:.1f} patches/s "
        f"on {os.cpu_count()} cores; summary {s}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
