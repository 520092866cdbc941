"""Benchmark `benbeam convert` on synthetic patches; prints figures, asserts nothing.

    python benchmarks/bench_convert.py [--sizes 500 2000] [--workdir bench_out] [--runner_args ...]

For each size: generates (or reuses) a synthetic reBEN sample, runs `benbeam convert` in a
subprocess with the default runner (DirectRunner, multi-process on all cores), sampling the
summed RSS of the whole process tree, and runs a plain single-process loop doing the same
read + decode + resample + normalise + encode + write per patch (on a thread, as a worker
runs it). Prints patches/s, the
per-patch cost of the pipeline in core-seconds vs the loop, and peak memory.
"""

from __future__ import annotations

import os

# The loop runs single-threaded like the pipeline's workers (the CLI sets the same for them).
for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def tree_rss(pid: int) -> int:
    """Summed resident memory (bytes) of a process and all its descendants.

    Walks /proc/<pid>/task/<tid>/children (cheap), not all of /proc: on a 2-core machine a
    sampler that scans every process steals measurable CPU from the run it measures.
    """
    page = os.sysconf("SC_PAGE_SIZE")
    total, todo, seen = 0, [pid], set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            with open(f"/proc/{p}/statm") as fh:
                total += int(fh.read().split()[1]) * page
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/children") as fh:
                    todo.extend(int(c) for c in fh.read().split())
        except (OSError, ValueError):
            continue
    return total


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run_convert(meta: str, out: str, extra: list[str]) -> tuple[float, int, float, str]:
    """(wall seconds, peak RSS of the process tree, CPU seconds of the whole tree, its output)."""
    cmd = [sys.executable, "-m", "bigearthnet_beam", "convert", "--meta", meta, "--out", out, *extra]
    os.sync()  # do not charge this run for flushing earlier runs' dirty pages
    cpu0 = _children_cpu()  # reaped descendants accumulate into their parents, then into us
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = 0
    stop = threading.Event()

    def sample():
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, tree_rss(proc.pid))
            time.sleep(0.25)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    output, _ = proc.communicate()
    stop.set()
    th.join()
    dt = time.perf_counter() - t0
    cpu = _children_cpu() - cpu0
    if proc.returncode != 0:
        print(output)
        raise SystemExit(f"convert failed with exit code {proc.returncode}")
    return dt, peak, cpu, output


def plain_loop(meta: str, root: str, out_dir: str, clip_percentiles=(1.0, 99.0)) -> tuple[float, int]:
    """The same work in one process, no Beam: statistics over the training patches, then
    decode + check + resample + normalise + encode + write every patch."""
    import pyarrow.parquet as pq

    from bigearthnet_beam.schemas.classes import multi_hot
    from bigearthnet_beam.schemas.naming import object_urls
    from bigearthnet_beam.transforms.encode import ShardWriter, encode_example
    from bigearthnet_beam.transforms.histogram import BandStats
    from bigearthnet_beam.transforms.normalize import NormParams, normalize
    from bigearthnet_beam.transforms.patch import decode_patch, fetch_objects

    rows = pq.read_table(meta).to_pylist()

    def load(r):
        return decode_patch(r["patch_id"], fetch_objects(object_urls(root, r["patch_id"], r["s1_name"])))

    os.sync()
    t0 = time.perf_counter()
    c0 = time.process_time()
    st = BandStats()
    acc = st.create()
    for r in rows:
        if r["split"] == "train":
            st.add(acc, load(r).pixels)
    params = NormParams.from_stats(st.extract(acc, clip_percentiles), clip=True)
    n = 0
    with ShardWriter(os.path.join(out_dir, "loop.tfrecord")) as w:
        for r in rows:
            p = load(r)
            normalize(p.pixels, params, inplace=True)
            w.write(
                encode_example(r["patch_id"], p.s2, p.s1, p.label, multi_hot(r["labels"]), r["split"], r["country"])
            )
            n += 1
    return time.perf_counter() - t0, time.process_time() - c0, n


def in_thread(fn, *args):
    """``fn(*args)`` on a new thread, as the pipeline's workers run their DoFns (not on a
    main thread, whose glibc heap hands ~0.8 MB arrays back to the kernel after each
    patch: page faults that made the loop's statistics pass ~3x slower than in a worker)."""
    out = []
    th = threading.Thread(target=lambda: out.append(fn(*args)))
    th.start()
    th.join()
    return out[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[500, 2000])
    ap.add_argument("--workdir", default=os.path.join(os.path.dirname(HERE), "bench_out"))
    ap.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="extra convert flags")
    args = ap.parse_args()
    from bigearthnet_beam.synth.generator import generate

    cores = os.cpu_count() or 1
    print(f"machine: {cores} cores; convert flags: {' '.join(args.extra) or '(defaults)'}")
    runs = []
    for n in args.sizes:
        data = os.path.join(args.workdir, f"reben_{n}")
        if not os.path.exists(os.path.join(data, "metadata.parquet")):
            t0 = time.perf_counter()
            generate(data, n, seed=1)
            print(f"[{n}] synth: {n / (time.perf_counter() - t0):.1f} patches/s")
        meta = os.path.join(data, "metadata.parquet")
        with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
            out = os.path.join(tmp, "ds")
            dt, peak, cpu, _ = run_convert(meta, out, args.extra)
            loop_dt, loop_cpu, loop_n = in_thread(plain_loop, meta, data, tmp)
        loop_cost = loop_dt / max(1, loop_n)
        runs.append((n, dt, loop_cost, cpu, loop_cpu / max(1, loop_n)))
        print(
            f"[{n}] convert end to end (process start to exit): {dt:.1f} s = {n / dt:.1f} patches/s; "
            f"peak RSS of the whole process tree {peak / 2**30:.2f} GiB"
        )
        print(f"[{n}] plain single-process loop, same work (stats pass + write pass): {loop_cost * 1e3:.2f} ms/patch")
        print(
            f"[{n}] pipeline total cost {dt * cores / n * 1e3:.2f} core-ms/patch = "
            f"{dt * cores / n / loop_cost:.2f}x the loop (wall x cores, start-up and idle cores included)"
        )
        print(
            f"[{n}] CPU time: pipeline (all processes) {cpu / n * 1e3:.2f} ms/patch = "
            f"{cpu / n / runs[-1][4]:.2f}x the loop's {runs[-1][4] * 1e3:.2f} CPU-ms/patch (start-up included)"
        )
    if len(runs) >= 2:
        (n1, t1, _, c1, _), (n2, t2, _, c2, _) = runs[0], runs[-1]
        loop = sum(r[2] for r in runs) / len(runs)
        loop_c = sum(r[4] for r in runs) / len(runs)
        marginal = (t2 - t1) / (n2 - n1) * cores
        marginal_c = (c2 - c1) / (n2 - n1)
        print(
            f"marginal per-patch cost between {n1} and {n2}: {marginal * 1e3:.2f} core-ms/patch (wall x cores) = "
            f"{marginal / loop:.2f}x the loop's {loop * 1e3:.2f} ms/patch (fixed start-up "
            f"{t1 - marginal / cores * n1:.1f} s)"
        )
        print(
            f"marginal CPU per patch between {n1} and {n2}: {marginal_c * 1e3:.2f} CPU-ms/patch = "
            f"{marginal_c / loop_c:.2f}x the loop's {loop_c * 1e3:.2f} CPU-ms/patch"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
