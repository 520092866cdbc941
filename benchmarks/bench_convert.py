"""Benchmark `benbeam convert` on synthetic patches; prints figures, asserts nothing.

    python benchmarks/bench_convert.py [--sizes 500 2000] [--workdir bench_out] [--runner_args ...]

For each size: generates (or reuses) a synthetic reBEN sample, runs `benbeam convert` in a
subprocess with the default runner (DirectRunner, multi-process on all cores), sampling the
summed RSS of the whole process tree, and runs a plain single-process loop doing the same
read + decode + resample + normalise + encode + write per patch. Prints patches/s, the
per-patch cost of the pipeline in core-seconds vs the loop, and peak memory.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def tree_rss(pid: int) -> int:
    """Summed resident memory (bytes) of a process and all its descendants."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as fh:
                parts = fh.read().rsplit(")", 1)[1].split()
            ppid, pages = int(parts[1]), int(parts[21])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(d))
        rss[int(d)] = pages * os.sysconf("SC_PAGE_SIZE")
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += rss.get(p, 0)
        todo.extend(children.get(p, []))
    return total


def run_convert(meta: str, out: str, extra: list[str]) -> tuple[float, int]:
    cmd = [sys.executable, "-m", "beam_pipeline", "convert", "--meta", meta, "--out", out, *extra]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = 0
    stop = threading.Event()

    def sample():
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, tree_rss(proc.pid))
            time.sleep(0.1)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    output, _ = proc.communicate()
    stop.set()
    th.join()
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        print(output)
        raise SystemExit(f"convert failed with exit code {proc.returncode}")
    return dt, peak


def plain_loop(meta: str, root: str, out_dir: str, stats_path: str) -> tuple[float, int]:
    """The same per-patch work in one process, no Beam."""
    import json

    import pyarrow.parquet as pq

    from schemas.classes import multi_hot
    from schemas.naming import object_urls
    from transforms.encode import ShardWriter, encode_example
    from transforms.normalize import NormParams, normalize
    from transforms.patch import decode_patch, fetch_objects

    rows = pq.read_table(meta).to_pylist()
    params = NormParams.from_dict(json.load(open(stats_path))["normalization"])
    n = 0
    t0 = time.perf_counter()
    with ShardWriter(os.path.join(out_dir, "loop.tfrecord")) as w:
        for r in rows:
            try:
                p = decode_patch(r["patch_id"], fetch_objects(object_urls(root, r["patch_id"], r["s1_name"])))
            except Exception:  # noqa: BLE001 - faults are not in the benchmark data
                continue
            x = normalize(np.concatenate([p.s2, p.s1], -1), params)
            w.write(encode_example(r["patch_id"], x[..., :12], x[..., 12:], p.label, multi_hot(r["labels"]),
                                   r["split"], r["country"]))
            n += 1
        w.close()
    return time.perf_counter() - t0, n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[500, 2000])
    ap.add_argument("--workdir", default=os.path.join(os.path.dirname(HERE), "bench_out"))
    ap.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="extra convert flags")
    args = ap.parse_args()
    from synth.generator import generate

    cores = os.cpu_count() or 1
    print(f"machine: {cores} cores; convert flags: {' '.join(args.extra) or '(defaults)'}")
    for n in args.sizes:
        data = os.path.join(args.workdir, f"reben_{n}")
        if not os.path.exists(os.path.join(data, "metadata.parquet")):
            t0 = time.perf_counter()
            generate(data, n, seed=1)
            print(f"[{n}] synth: {n / (time.perf_counter() - t0):.1f} patches/s")
        meta = os.path.join(data, "metadata.parquet")
        with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
            out = os.path.join(tmp, "ds")
            dt, peak = run_convert(meta, out, args.extra)
            loop_dt, loop_n = plain_loop(meta, data, tmp, os.path.join(out, "stats.json"))
        pipe_cost = dt * cores / n
        loop_cost = loop_dt / max(1, loop_n)
        print(f"[{n}] convert end to end: {dt:.1f} s = {n / dt:.1f} patches/s "
              f"(peak RSS of the process tree {peak / 2**30:.2f} GiB)")
        print(f"[{n}] plain single-process loop: {loop_cost * 1e3:.2f} ms/patch ({1 / loop_cost:.1f} patches/s)")
        print(f"[{n}] pipeline cost {pipe_cost * 1e3:.2f} core-ms/patch = {pipe_cost / loop_cost:.2f}x the loop")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
