"""Benchmark converting from the official-style archives vs from the extracted folders;
prints figures, asserts nothing.

    python benchmarks/bench_archives.py [--n 4000] [--memory_sizes 500 4000] [--workers 2] [--workdir bench_out]

On one synthetic sample of ``--n`` patches written both ways (``benbeam synth --archives``):
1. ``benbeam convert`` from the folders and ``benbeam convert --archives`` (wall seconds,
   patches/s, peak summed RSS of the process tree), and when each archive's read ran
   (from the workers' log lines: the three run in parallel, one per worker);
2. the time to extract the three archives with ``tar --zstd -xf`` (one after the other,
   and all three at once), which converting from folders would need first;
3. memory of the archive stage alone (one process streaming the S2 archive into packs) at
   each of ``--memory_sizes`` patches: peak RSS with the default pack buffer and a 8 MiB one,
   and the decompressed MB/s of the stream (the bound of the stage: one zstd stream per archive).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

_STAGE = re.compile(r"archive (\S+): (\d+) members .*? in ([\d.]+) s \(process (\d+), from ([\d.]+) to ([\d.]+)\)")

_SPLIT_ONE = """
import json, sys, tempfile, time
from bigearthnet_beam.transforms import archives, storage
from bigearthnet_beam.transforms.plan import RowPlan
meta, url, buffer_bytes = sys.argv[1], sys.argv[2], int(sys.argv[3])
plan = RowPlan.create([meta], storage.parent(meta), ("train", "validation", "test"), 1.0, 180)
t0 = time.perf_counter()
router = archives.Router.from_plan(plan, "BigEarthNet-S2")
with tempfile.TemporaryDirectory() as d:
    s = archives.split_archive(url, "BigEarthNet-S2", router, d, buffer_bytes)
dt = time.perf_counter() - t0
# VmHWM, not ru_maxrss: the latter carries the parent's peak across fork + exec.
hwm = next(int(x.split()[1]) for x in open("/proc/self/status") if x.startswith("VmHWM:"))
print(json.dumps({"seconds": dt, "bytes": s["bytes"], "members": s["members"], "peak_rss_mib": hwm / 1024}))
"""


def ensure_sample(workdir: str, n: int, workers: int) -> str:
    data = os.path.join(workdir, f"reben_archives_{n}")
    if not os.path.exists(os.path.join(data, "Reference_Maps.tar.zst")):
        t0 = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "bigearthnet_beam",
                "synth",
                "--out",
                data,
                "--n",
                str(n),
                "--seed",
                "3",
                "--archives",
                "--workers",
                str(workers),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        print(f"synth --archives {n}: {time.perf_counter() - t0:.1f} s (not a figure)")
    return data


def extract(data: str, parallel: bool) -> float:
    from bigearthnet_beam.transforms.archives import ARCHIVES

    dest = tempfile.mkdtemp(prefix="bench-extract-", dir=os.path.dirname(data))
    t0 = time.perf_counter()
    cmds = [["tar", "--zstd", "-xf", os.path.join(data, name), "-C", dest] for _, name in ARCHIVES]
    if parallel:
        procs = [subprocess.Popen(c) for c in cmds]
        codes = [p.wait() for p in procs]
    else:
        codes = [subprocess.run(c, check=False).returncode for c in cmds]
    dt = time.perf_counter() - t0
    if any(codes):
        raise SystemExit(f"tar failed: {codes}")
    shutil.rmtree(dest)
    return dt


def split_memory(data: str, buffer_bytes: int) -> dict:
    res = subprocess.run(
        [
            sys.executable,
            "-c",
            _SPLIT_ONE,
            os.path.join(data, "metadata.parquet"),
            os.path.join(data, "BigEarthNet-S2.tar.zst"),
            str(buffer_bytes),
        ],
        capture_output=True,
        text=True,
        cwd=os.path.dirname(HERE),
        check=False,
    )
    if res.returncode:
        raise SystemExit(res.stderr[-3000:])
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--memory_sizes", type=int, nargs="*", default=[500, 4000])
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--workdir", default=os.path.join(os.path.dirname(HERE), "bench_out"))
    ap.add_argument("--no_tar", action="store_true", help="skip the tar extraction figures")
    args = ap.parse_args()
    from benchmarks.bench_convert import run_convert
    from bigearthnet_beam.transforms.archives import ARCHIVES, PACK_BUFFER_BYTES

    print(f"machine: {os.cpu_count()} cores; convert --workers {args.workers}")
    data = ensure_sample(args.workdir, args.n, args.workers)
    meta = os.path.join(data, "metadata.parquet")
    sizes = {name: os.path.getsize(os.path.join(data, name)) for _, name in ARCHIVES}
    print("archives: " + ", ".join(f"{k} {v / 1e6:.1f} MB" for k, v in sizes.items()))
    common = ["--workers", str(args.workers), "--no_report"]
    outs = {}
    for label, extra in (("folders", []), ("archives", ["--archives", data])):
        out = os.path.join(args.workdir, f"ds_archives_bench_{label}")
        shutil.rmtree(out, ignore_errors=True)
        dt, peak, cpu, output = run_convert(meta, out, [*common, *extra])
        outs[label] = out
        print(
            f"convert from {label:<8}: {dt:6.1f} s  {args.n / dt:6.1f} patches/s  peak tree RSS "
            f"{peak / 2**20:6.0f} MiB  CPU {cpu:6.1f} s"
        )
        stages = [m.groups() for m in _STAGE.finditer(output)]
        if stages:
            t_first = min(float(s[4]) for s in stages)
            for url, members, secs, pid, start, end in stages:
                print(
                    f"    {os.path.basename(url):<24} {int(members):>7} members  {float(secs):6.1f} s  "
                    f"process {pid}  [{float(start) - t_first:5.1f} s .. {float(end) - t_first:5.1f} s]"
                )
    same = _identical(outs["folders"], outs["archives"])
    print(f"outputs identical (shards, stats, failures, histograms): {same}")
    for parallel in () if args.no_tar else (False, True):
        print(
            f"tar --zstd -xf of the three archives {'all at once' if parallel else 'one after the other'}: "
            f"{extract(data, parallel):.1f} s"
        )
    for n in args.memory_sizes:
        d = data if n == args.n else ensure_sample(args.workdir, n, args.workers)
        for buf in (PACK_BUFFER_BYTES, 8 << 20):
            r = split_memory(d, buf)
            print(
                f"S2 archive stage alone, {n:>5} patches, pack buffer {buf >> 20:>3} MiB: peak RSS "
                f"{r['peak_rss_mib']:6.0f} MiB, {r['seconds']:5.1f} s, {r['bytes'] / 1e6 / r['seconds']:6.1f} MB/s "
                "decompressed"
            )
    return 0


def _identical(a: str, b: str) -> bool:
    import hashlib

    def files(d):
        got = {}
        for root, _, names in os.walk(d):
            for f in names:
                rel = os.path.relpath(os.path.join(root, f), d)
                if rel not in ("run.json", "dataset.json"):
                    with open(os.path.join(root, f), "rb") as fh:
                        got[rel] = hashlib.file_digest(fh, "sha256").hexdigest()
        return got

    return files(a) == files(b)


if __name__ == "__main__":
    raise SystemExit(main())
