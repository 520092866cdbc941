"""`convert` throughput on the same sample under three runners, side by side; prints
figures, asserts nothing.

    python benchmarks/bench_runners.py [--n 2000] [--workdir DIR]

DirectRunner (multi-process, the default), the portable Job API (Beam's local job service,
PortableRunner, LOOPBACK environment) and Dask (a dask.distributed LocalCluster with one
single-threaded worker process per core). Wall time of each `convert` process, start to
exit; the job service and the Dask cluster are started beforehand and not counted.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def convert(meta: str, out: str, extra: list[str]) -> float:
    from benchmarks.common import timed_convert

    return timed_convert(meta, out, extra)


def _hashes(out: str) -> list[str]:
    with open(os.path.join(out, "dataset.json")) as fh:
        man = json.load(fh)
    return sorted(s["sha256"] for e in man["splits"].values() for s in e["shards"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    from distributed import LocalCluster

    from synth.generator import generate
    from tests.servers import free_port

    work = args.workdir or tempfile.mkdtemp(prefix="bench-runners-")
    data = os.path.join(work, f"reben_{args.n}")
    if not os.path.exists(os.path.join(data, "metadata.parquet")):
        generate(data, args.n, seed=1)
    meta = os.path.join(data, "metadata.parquet")
    cores = os.cpu_count() or 1
    results = {}

    results["DirectRunner (multi-process)"] = (convert(meta, os.path.join(work, "direct"), []),
                                               os.path.join(work, "direct"))

    port = free_port()
    js = subprocess.Popen([sys.executable, "-m", "apache_beam.runners.portability.local_job_service_main",
                           "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(300):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        out = os.path.join(work, "portable")
        results["PortableRunner + local job service (LOOPBACK)"] = (convert(meta, out, [
            "--runner", "PortableRunner", "--job_endpoint", f"localhost:{port}", "--environment_type", "LOOPBACK"]),
            out)
    finally:
        js.terminate()
        js.wait(10)

    with LocalCluster(n_workers=cores, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster:
        out = os.path.join(work, "dask")
        results[f"DaskRunner, LocalCluster {cores} processes"] = (convert(meta, out, [
            "--runner", "apache_beam.runners.dask.dask_runner.DaskRunner",
            "--dask_client_address", cluster.scheduler_address.replace("tcp://", "")]), out)

    ref = None
    print(f"convert, {args.n} patches, {cores} cores, process start to exit:")
    for name, (dt, out) in results.items():
        h = _hashes(out)
        ref = ref or h
        print(f"  {name:<48} {dt:6.1f} s  {args.n / dt:6.1f} patches/s  shards identical: {h == ref}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
