"""Throughput of the trainer's input pipeline (``trainer.data.make_dataset``, as `benbeam
train` builds it); prints figures, asserts nothing.

    python benchmarks/bench_input.py [--n 2000] [--batch 32] [--batches 60] [--workdir DIR]
    python benchmarks/bench_input.py --data DATASET [DATASET ...]

Without ``--data``: synthesises N patches and converts them twice (``--dtype float32`` and
``float16``) under ``--workdir``, reused by later runs. For each dataset it streams the
train split exactly as training does (shuffled shards, shuffle buffer, batched parsing,
prefetch; endless with ``repeat``), without and with ``--augment``, alternating the two
``--rounds`` times, and prints patches/s (best round, and median), the CPU time per patch,
and the share of the throughput that augmentation costs (from the wall clock, and from
the CPU time, which other load on a shared machine disturbs less). TensorFlow uses every core of the machine; the
per-8-core figure assumes throughput in proportion to the cores.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def stream_rate(ds, *, augment: bool, batch: int, batches: int, warmup: int = 5, seed: int = 0) -> tuple[float, float]:
    """(patches/s, CPU-ms per patch of this process) over ``batches`` training batches after
    ``warmup`` (the shuffle buffer fills first)."""
    from trainer import data as D

    stream = D.make_dataset(ds, "train", batch_size=batch, training=True, augment=augment, repeat=True, seed=seed)
    it = iter(stream)
    for _ in range(warmup):
        next(it)
    n = 0
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(batches):
        x, _y = next(it)
        n += int(x.shape[0])
    return n / (time.perf_counter() - t0), (time.process_time() - c0) / n * 1e3


def ensure_datasets(n: int, workdir: str) -> list[str]:
    """Synthetic sample + float32 and float16 conversions under ``workdir`` (reused)."""
    from beam_pipeline.cli import main as cli

    reben = os.path.join(workdir, f"reben_{n}")
    if not os.path.exists(os.path.join(reben, "metadata.parquet")):
        if cli(["synth", "--out", reben, "--n", str(n), "--seed", "0"]) != 0:
            raise SystemExit("synth failed")
    out = []
    for dtype in ("float32", "float16"):
        ds = os.path.join(workdir, f"dataset_{n}_{dtype}")
        meta = os.path.join(reben, "metadata.parquet")
        if not os.path.exists(os.path.join(ds, "dataset.json")) and cli(
                ["convert", "--meta", meta, "--out", ds, "--dtype", dtype]) != 0:
            raise SystemExit(f"convert --dtype {dtype} failed")
        out.append(ds)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", nargs="+", default=None, help="converted datasets (default: synthesise and convert)")
    ap.add_argument("--n", type=int, default=2000, help="synthetic patches when --data is not given")
    ap.add_argument("--workdir", default=os.path.join(os.path.dirname(HERE), "bench_out"))
    ap.add_argument("--batch", type=int, default=32, help="batch size (default: train's, %(default)s)")
    ap.add_argument("--batches", type=int, default=60, help="batches timed per round")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    datasets = args.data or ensure_datasets(args.n, args.workdir)
    from trainer import data as D

    cores = os.cpu_count() or 1
    print(f"machine: {cores} cores; batch {args.batch}; {args.batches} batches per round, {args.rounds} rounds")
    for path in datasets:
        ds = D.open_dataset(path)
        rates = {False: [], True: []}
        cpu = {False: [], True: []}
        for _ in range(args.rounds):
            for aug in (False, True):
                r, c = stream_rate(ds, augment=aug, batch=args.batch, batches=args.batches)
                rates[aug].append(r)
                cpu[aug].append(c)
        print(f"{path} ({ds.image_dtype}, {ds.records('train')} train patches):")
        for flag, name in ((False, "no augmentation"), (True, "--augment")):
            best = max(rates[flag])
            print(f"  {name:16s} {best:8.0f} patches/s (median {statistics.median(rates[flag]):.0f}) on {cores} cores "
                  f"= {best / cores * 8:.0f} per 8 cores, extrapolated; {min(cpu[flag]):.3f} CPU-ms/patch")
        wall = 1 - max(rates[True]) / max(rates[False])
        work = 1 - min(cpu[False]) / min(cpu[True])
        print(f"  augmentation costs {100 * wall:.1f}% of the throughput (best rounds; a loaded machine makes this "
              f"noisy) and {100 * work:.1f}% of the CPU time (least CPU per patch: the throughput share on an "
              "otherwise idle machine)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
