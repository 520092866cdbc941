"""`convert` throughput on the same sample under several runners, side by side; prints
figures, asserts nothing.

    python benchmarks/bench_runners.py [--n 2000] [--workdir DIR] [--envs BASE_VENV FULL_VENV]

Runners: DirectRunner (multi-process, the default); PortableRunner against Beam's local job
service with an EXTERNAL SDK worker pool (what a Flink/Spark job server with worker pools
does); DaskRunner on a LocalCluster (one single-threaded worker process per core); DaskRunner
on a three-host cluster (scheduler and two workers in their own network namespaces; root
only) reading the input from the local disk every namespace shares. Wall time of each
`convert` process, start to exit (both jobs: statistics, then shards); servers and clusters
are started beforehand and not counted. ``--envs`` also prints the size of two virtual
environments (e.g. one with the base install, one with ``[train,tfx]``).
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
DASK = ["--runner", "apache_beam.runners.dask.dask_runner.DaskRunner", "--dask_partition_size", "1"]


def convert(meta: str, out: str, extra: list[str]) -> float:
    from benchmarks.common import timed_convert

    return timed_convert(meta, out, extra)


def _hashes(out: str) -> list[str]:
    with open(os.path.join(out, "dataset.json")) as fh:
        man = json.load(fh)
    return sorted(s["sha256"] for e in man["splits"].values() for s in e["shards"])


def _wait(port: int, host: str = "127.0.0.1") -> None:
    for _ in range(300):
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"nothing answers on {host}:{port}")


def _portable_external(meta: str, work: str) -> tuple[float, str]:
    from tests.servers import free_port

    pool, js = free_port(), free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main", f"--service_port={pool}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            # the pool starts its workers as `python` from PATH
            env=dict(os.environ, PATH=os.pathsep.join([os.path.dirname(sys.executable), os.environ["PATH"]])),
        ),
        subprocess.Popen(
            [sys.executable, "-m", "apache_beam.runners.portability.local_job_service_main", "--port", str(js)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
    ]
    try:
        _wait(pool)
        _wait(js)
        out = os.path.join(work, "portable")
        return convert(
            meta,
            out,
            [
                "--runner",
                "PortableRunner",
                "--job_endpoint",
                f"localhost:{js}",
                "--environment_type",
                "EXTERNAL",
                "--environment_config",
                f"localhost:{pool}",
                "--direct_num_workers",
                str(os.cpu_count() or 1),
            ],
        ), out
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)


def _du_mb(path: str) -> int:
    return int(subprocess.run(["du", "-sm", path], capture_output=True, text=True).stdout.split()[0])


def main() -> int:
    """Run the conversion under each runner and print wall time, patches/s and the ratio."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--envs", nargs=2, metavar=("BASE_VENV", "FULL_VENV"), default=None)
    ap.add_argument("--skip", default="", help="comma-separated: portable,dask,netns")
    args = ap.parse_args()
    from distributed import LocalCluster

    from bigearthnet_beam.synth.generator import generate
    from tests import netns

    skip = set(args.skip.split(","))
    work = args.workdir or tempfile.mkdtemp(prefix="bench-runners-")
    data = os.path.join(work, f"reben_{args.n}")
    if not os.path.exists(os.path.join(data, "metadata.parquet")):
        generate(data, args.n, seed=1)
    meta = os.path.join(data, "metadata.parquet")
    cores = os.cpu_count() or 1
    results = {}

    results["DirectRunner (multi-process)"] = (
        convert(meta, os.path.join(work, "direct"), []),
        os.path.join(work, "direct"),
    )
    if "portable" not in skip:
        results["PortableRunner, job service + EXTERNAL pool"] = _portable_external(meta, work)
    if "dask" not in skip:
        with LocalCluster(
            n_workers=cores, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
        ) as cluster:
            out = os.path.join(work, "dask")
            results[f"DaskRunner, LocalCluster {cores} processes"] = (
                convert(meta, out, DASK + ["--dask_client_address", cluster.scheduler_address.replace("tcp://", "")]),
                out,
            )
    if "netns" not in skip:
        try:
            with netns.hosts(["sched", "w1", "w2"]) as h:
                env = dict(os.environ, PYTHONPATH=ROOT)
                with netns.dask_cluster(h["sched"], [h["w1"], h["w2"]], env, work, sys.executable) as (addr, _):
                    out = os.path.join(work, "dask3")
                    results["DaskRunner, 3 hosts (netns), 2 workers"] = (
                        convert(meta, out, DASK + ["--dask_client_address", addr]),
                        out,
                    )
        except netns.NetnsUnavailable as e:
            print(f"(three-host cluster skipped: {e})")

    ref = None
    direct = results["DirectRunner (multi-process)"][0]
    print(f"convert, {args.n} patches, {cores} cores, process start to exit:")
    for name, (dt, out) in results.items():
        h = _hashes(out)
        ref = ref or h
        print(
            f"  {name:<46} {dt:7.1f} s  {args.n / dt:6.1f} patches/s  {direct / dt:5.2f}x Direct  "
            f"shards identical: {h == ref}"
        )
    if args.envs:
        for label, path in zip(("base install", "with [train,tfx]"), args.envs, strict=True):
            print(f"  environment {label:<18} {path}: {_du_mb(path)} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
