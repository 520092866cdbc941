"""Raw vs normalised records in one run: convert speed and where its overhead goes, read speed
(tf.data and PyTorch) and bytes per patch of float32, float16 and raw; prints figures, asserts nothing.

    python benchmarks/bench_raw.py [--n 1000] [--repeats 2] [--workers 2] [--workdir /tmp/bench-raw]
    python benchmarks/bench_raw.py --n 6000 --read_ab 12    # the interleaved tf.data A/B only

One synthetic replica is converted float32 (the default), ``--dtype float16``, ``--encoding raw``
and ``--encoding raw --compression gzip`` by ``benbeam convert`` subprocesses (DirectRunner,
``--workers`` processes), ``--repeats`` times in turn, each timed with ``getrusage`` of the
children: wall, user and system CPU, voluntary context switches (a process waiting: hand-offs
between the runner's processes, I/O) and file-system output blocks. A plain single-process loop
does the same per-patch work (statistics pass, then decode, [resample, normalise,] encode, write)
to show the pipeline's overhead over it. Then every dataset's training split is read by
``trainer.data.make_dataset`` (tf.data) and through a ``torch`` DataLoader over
``trainer.torch_data.BenDataset``, ``--repeats`` times after a warm-up pass; then an interleaved
A/B of tf.data (``--read_ab N`` alone: float16, raw through XLA, raw through TensorFlow ops, in
turn, N times; the rate ratio and the CPU-cost ratio per alternation and their medians), and
with ``--torch_ab N`` the same for the DataLoader: float16, raw decoded per sample in the
workers, raw decoded per batch in the main process (``BenDataset(decode_on="batch")``). The
machine's load (``os.getloadavg``) is printed before and after: on a shared machine the figures
are ranges.
"""

from __future__ import annotations

import os

for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # as the pipeline's workers
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

VARIANTS = {
    "float32": [],
    "float16": ["--dtype", "float16"],
    "raw": ["--encoding", "raw"],
    "raw+gzip": ["--encoding", "raw", "--compression", "gzip"],
}
READ = ("float32", "float16", "raw")


def load() -> str:
    """The 1/5/15-minute load averages and the core count."""
    a, b, c = os.getloadavg()
    return f"load average {a:.2f} {b:.2f} {c:.2f} on {os.cpu_count()} cores"


def _rusage(who) -> dict:
    ru = resource.getrusage(who)
    return {
        "user": ru.ru_utime,
        "sys": ru.ru_stime,
        "vcsw": ru.ru_nvcsw,
        "ivcsw": ru.ru_nivcsw,
        "oublock": ru.ru_oublock,
    }


def _delta(a: dict, b: dict) -> dict:
    return {k: b[k] - a[k] for k in a}


def convert(meta: str, out: str, flags: list[str], workers: int) -> dict:
    """One `benbeam convert` subprocess: wall seconds and the children's resource usage."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "bigearthnet_beam", "convert", "--meta", meta, "--out", out, "--no_report"]
    cmd += ["--workers", str(workers), *flags]
    os.sync()  # do not charge this run for flushing an earlier run's pages
    r0 = _rusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        print(res.stdout[-2000:], res.stderr[-2000:])
        raise SystemExit(f"convert {' '.join(flags)} failed ({res.returncode})")
    man = json.load(open(os.path.join(out, "dataset.json")))
    n = sum(s["written"] for s in man["splits"].values())
    nbytes = sum(sh["bytes"] for s in man["splits"].values() for sh in s["shards"])
    return {"wall": wall, "patches": n, "bytes": nbytes, **_delta(r0, _rusage(resource.RUSAGE_CHILDREN))}


def plain_loop(meta: str, root: str, out_dir: str, raw: bool, dtype: str = "float32") -> dict:
    """The conversion's per-patch work in this process, no Beam (run on a thread, as a worker's DoFn)."""
    import pyarrow.parquet as pq

    from bigearthnet_beam.schemas.classes import multi_hot
    from bigearthnet_beam.schemas.naming import object_urls
    from bigearthnet_beam.transforms.encode import ShardWriter, encode_example, encode_raw_example
    from bigearthnet_beam.transforms.histogram import BandStats
    from bigearthnet_beam.transforms.normalize import NormParams, normalize
    from bigearthnet_beam.transforms.patch import decode_patch, fetch_objects

    rows = [r for r in pq.read_table(meta).to_pylist()]

    def get(r, resampling):
        return decode_patch(r["patch_id"], fetch_objects(object_urls(root, r["patch_id"], r["s1_name"])), resampling)

    result = {}

    def work():
        os.sync()
        r0, t0 = _rusage(resource.RUSAGE_SELF), time.perf_counter()
        st = BandStats()
        acc = st.create()
        for r in rows:
            if r["split"] == "train":
                st.add(acc, get(r, "bilinear").pixels)
        params = NormParams.from_stats(st.extract(acc, (1.0, 99.0)), clip=True)
        n = 0
        with ShardWriter(os.path.join(out_dir, f"loop-{'raw' if raw else dtype}.tfrecord")) as w:
            for r in rows:
                mh = multi_hot(r["labels"])
                if raw:
                    p = get(r, None)
                    data = encode_raw_example(r["patch_id"], p.native, p.label, mh, r["split"], r["country"])
                else:
                    p = get(r, "bilinear")
                    normalize(p.pixels, params, inplace=True)
                    s2, s1 = (p.s2, p.s1) if dtype == "float32" else (p.s2.astype(dtype), p.s1.astype(dtype))
                    data = encode_example(r["patch_id"], s2, s1, p.label, mh, r["split"], r["country"], dtype)
                w.write(data)
                n += 1
        result.update(wall=time.perf_counter() - t0, patches=n, **_delta(r0, _rusage(resource.RUSAGE_SELF)))

    th = threading.Thread(target=work)
    th.start()
    th.join()
    return result


def read_tf(path: str, batch: int, raw_xla: bool | None = None) -> float:
    """Patches/s of one pass over the training split through ``trainer.data.make_dataset``."""
    from bigearthnet_beam.trainer import data

    ds = data.open_dataset(path)
    t0, n = time.perf_counter(), 0
    for x, _ in data.make_dataset(ds, "train", batch_size=batch, raw_xla=raw_xla):
        n += int(x.shape[0])
    return n / (time.perf_counter() - t0)


def epoch(stream) -> tuple[float, float, int]:
    """One pass over a tf.data stream: wall seconds, this process's CPU seconds, patches."""
    t0, c0, n = time.perf_counter(), time.process_time(), 0
    for x, _ in stream:
        n += int(x.shape[0])
    return time.perf_counter() - t0, time.process_time() - c0, n


def read_ab(workdir: str, batch: int, alternations: int) -> None:
    """Interleaved A/B of tf.data reading: float16, raw (XLA) and raw (TensorFlow ops) in turn over the
    same period, ``alternations`` times; each stream built once and iterated once per alternation,
    as a training run iterates its dataset per epoch (after a warm-up pass: page cache, tracing, XLA)."""

    from bigearthnet_beam.trainer import data

    print(
        f"\ntf.data interleaved A/B, training split, {batch} per batch, {alternations} alternations; before: {load()}"
    )
    streams = {}
    for name, path, xla in (("float16", "float16", None), ("raw (XLA)", "raw", True), ("raw (TF ops)", "raw", False)):
        ds = data.open_dataset(os.path.join(workdir, path))
        streams[name] = data.make_dataset(ds, "train", batch_size=batch, raw_xla=xla)
        epoch(streams[name])
    rates: dict[str, list[float]] = {k: [] for k in streams}
    cpu: dict[str, list[float]] = {k: [] for k in streams}
    for i in range(alternations):
        for name, stream in streams.items():
            wall, c, n = epoch(stream)
            rates[name].append(n / wall)
            cpu[name].append(1000 * c / n)
        r = {k: v[-1] for k, v in rates.items()}
        c = {k: v[-1] for k, v in cpu.items()}
        print(
            f"  {i + 1}: float16 {r['float16']:5.0f}  raw (XLA) {r['raw (XLA)']:5.0f}  "
            f"raw (TF ops) {r['raw (TF ops)']:5.0f} patches/s;  raw/float16 "
            f"{r['raw (XLA)'] / r['float16']:.2f}x (XLA), {r['raw (TF ops)'] / r['float16']:.2f}x (TF ops); "
            f"CPU ratio {c['float16'] / c['raw (XLA)']:.2f}x (XLA);  load {os.getloadavg()[0]:.2f}"
        )
    med = {k: statistics.median(v) for k, v in rates.items()}
    ratio = lambda k: statistics.median(a / b for a, b in zip(rates[k], rates["float16"], strict=True))  # noqa: E731
    cpu_ratio = lambda k: statistics.median(b / a for a, b in zip(cpu[k], cpu["float16"], strict=True))  # noqa: E731
    print("  median patches/s: " + ", ".join(f"{k} {v:.0f}" for k, v in med.items()))
    print(
        f"  median raw/float16 of the alternations: {ratio('raw (XLA)'):.2f}x (XLA), "
        f"{ratio('raw (TF ops)'):.2f}x (TF ops)"
    )
    print(
        "  median CPU ms/patch (this process, all threads): "
        + ", ".join(f"{k} {statistics.median(v):.3f}" for k, v in cpu.items())
    )
    print(
        f"  median CPU ratio float16/raw of the alternations (the rate ratio on idle cores): "
        f"{cpu_ratio('raw (XLA)'):.2f}x (XLA), {cpu_ratio('raw (TF ops)'):.2f}x (TF ops)"
    )
    print(f"  after: {load()}")


def read_torch(path: str, batch: int, workers: int, decode_on: str = "sample", decode: bool = True) -> float:
    """Patches/s of one pass over the training split through a DataLoader over ``BenDataset``
    (``decode_on="batch"``: each batch decoded by ``batch_decoder`` in this process, on the CPU;
    with ``decode=False`` only received, as the main process does before a GPU decodes)."""
    from torch.utils.data import DataLoader

    from bigearthnet_beam.trainer.torch_data import BenDataset

    ds = BenDataset(path, "train", decode_on=decode_on)
    t0, n = time.perf_counter(), 0
    for b in DataLoader(ds, batch_size=batch, num_workers=workers):
        if decode_on == "batch" and decode:
            b = ds.batch_decoder(b)
        n += len(b["mask"])
    return n / (time.perf_counter() - t0)


def torch_ab(workdir: str, batch: int, workers: int, alternations: int) -> None:
    """Interleaved passes of the DataLoader: float16, raw decoded per sample in the workers, raw
    decoded per batch in the main process, and raw received per batch but not decoded (what the
    main process does when a GPU decodes); the main process's CPU time per patch of each (what
    bounds a GPU's feed when the workers keep up)."""
    variants = (
        ("float16", "float16", "sample", True),
        ("raw", "raw", "sample", True),
        ("raw, per batch", "raw", "batch", True),
        ("raw, received", "raw", "batch", False),
    )
    rates: dict[str, list[float]] = {name: [] for name, *_ in variants}
    main_cpu: dict[str, list[float]] = {name: [] for name, *_ in variants}
    for _, v, how, decode in variants:  # warm-up: page cache
        read_torch(os.path.join(workdir, v), batch, workers, how, decode)
    for _ in range(alternations):
        for name, v, how, decode in variants:
            c0 = time.process_time()
            r = read_torch(os.path.join(workdir, v), batch, workers, how, decode)
            n = json.load(open(os.path.join(workdir, v, "dataset.json")))["splits"]["train"]["written"]
            rates[name].append(r)
            main_cpu[name].append(1000 * (time.process_time() - c0) / n)
    print(f"\ntorch DataLoader, {workers} workers, batch {batch}, {alternations} interleaved passes; {load()}")
    for name, *_ in variants:
        print(
            f"  {name:15s} {rng(rates[name]):>11s} patches/s (median {statistics.median(rates[name]):,.0f})   "
            f"main process {statistics.median(main_cpu[name]):.2f} CPU ms/patch"
        )


def rng(values) -> str:
    """'lo–hi' of a list of figures (one figure when they are equal)."""
    lo, hi = min(values), max(values)
    return f"{lo:.0f}" if round(lo) == round(hi) else f"{lo:.0f}–{hi:.0f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000, help="patches of the synthetic replica")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2, help="convert --workers and DataLoader workers")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--workdir", default="/tmp/bench-raw")
    ap.add_argument("--skip_loop", action="store_true", help="leave out the plain loops")
    ap.add_argument("--convert_only", action="store_true", help="float32 and raw conversions only")
    ap.add_argument(
        "--read_ab",
        type=int,
        default=0,
        metavar="N",
        help="only the interleaved tf.data A/B (N alternations) over float16 and raw datasets converted "
        "here (converting them first if absent)",
    )
    ap.add_argument(
        "--torch_ab",
        type=int,
        default=0,
        metavar="N",
        help="only the interleaved PyTorch DataLoader passes (N alternations): float16, raw decoded per "
        "sample, raw decoded per batch (converting the datasets first if absent)",
    )
    args = ap.parse_args()
    from bigearthnet_beam.synth.generator import generate

    os.makedirs(args.workdir, exist_ok=True)
    root = os.path.join(args.workdir, f"reben-{args.n}")
    if not os.path.exists(os.path.join(root, "metadata.parquet")):
        generate(root, args.n, seed=0, workers=args.workers)
    meta = os.path.join(root, "metadata.parquet")
    print(f"bench_raw: {args.n} synthetic patches, convert --workers {args.workers}; before: {load()}")
    if args.read_ab or args.torch_ab:
        for v in ("float16", "raw"):
            if not os.path.exists(os.path.join(args.workdir, v, "dataset.json")):
                convert(meta, os.path.join(args.workdir, v), VARIANTS[v], args.workers)
        if args.read_ab:
            read_ab(args.workdir, args.batch, args.read_ab)
        if args.torch_ab:
            torch_ab(args.workdir, args.batch, args.workers, args.torch_ab)
        return 0

    variants = {v: VARIANTS[v] for v in (("float32", "raw") if args.convert_only else VARIANTS)}
    conv: dict[str, list[dict]] = {v: [] for v in variants}
    for _ in range(args.repeats):
        for v, flags in variants.items():
            conv[v].append(convert(meta, os.path.join(args.workdir, v), flags, args.workers))
    base = [r["patches"] / r["wall"] for r in conv["float32"]]
    print("\nconvert (end to end, statistics pass included):")
    print("  variant    patches/s  vs float32  bytes/patch  user ms/p  sys ms/p  vol.ctxsw/p  fs-out KB/p")
    for v, rs in conv.items():
        rates = [r["patches"] / r["wall"] for r in rs]
        ratio = [a / b for a, b in zip(rates, base, strict=True)]
        per = lambda k, rs=rs: sum(r[k] / r["patches"] for r in rs) / len(rs)  # noqa: E731
        print(
            f"  {v:9s}  {rng(rates):>9s}  {min(ratio):.2f}–{max(ratio):.2f}x"
            f"  {rs[0]['bytes'] / rs[0]['patches']:11,.0f}"
            f"  {1000 * per('user'):9.1f}  {1000 * per('sys'):8.1f}  {per('vcsw'):11.1f}  {per('oublock') / 2:11.1f}"
        )
    for v, rs in conv.items():  # each repeat's ratio (the variants of one repeat run back to back)
        if v != "float32":
            ratio = [r["patches"] / r["wall"] / b for r, b in zip(rs, base, strict=True)]
            listed = " ".join(f"{x:.2f}" for x in ratio)
            print(f"  {v} / float32 per repeat: {listed}; median {statistics.median(ratio):.2f}x")

    print("\nfixed cost: the same commands on a --frac 0.02 sample (start-up of the runner, its worker")
    print("processes and their imports, two jobs), and the marginal cost per patch of the full runs:")
    for v, flags in variants.items():
        small = convert(meta, os.path.join(args.workdir, v + "-small"), [*flags, "--frac", "0.02"], args.workers)
        big = conv[v][-1]
        fixed = small["user"] + small["sys"]
        marginal = (big["user"] + big["sys"] - fixed) / (big["patches"] - small["patches"])
        print(
            f"  {v:9s} {small['patches']:3d} patches: {small['wall']:5.1f} s wall, {fixed:5.1f} CPU s "
            f"(sys {small['sys']:.1f}); marginal {1000 * marginal:5.2f} CPU ms/patch"
        )

    if args.convert_only:
        print(f"\nafter: {load()}")
        return 0
    if not args.skip_loop:
        print("\nplain single-process loop (same per-patch work, statistics included), CPU ms per patch:")
        for name, raw, dt in (("float32", False, "float32"), ("float16", False, "float16"), ("raw", True, "")):
            r = plain_loop(meta, root, args.workdir, raw, dt or "float32")
            cpu = 1000 * (r["user"] + r["sys"]) / r["patches"]
            pipe = conv[name]
            pcpu = [1000 * (p["user"] + p["sys"]) / p["patches"] for p in pipe]
            print(
                f"  {name:8s} loop {cpu:6.2f} (user {1000 * r['user'] / r['patches']:.2f}, sys "
                f"{1000 * r['sys'] / r['patches']:.2f}), {r['patches'] / r['wall']:.0f} patches/s on one core; "
                f"pipeline {rng(pcpu)} CPU ms/patch = {min(pcpu) / cpu:.2f}–{max(pcpu) / cpu:.2f}x the loop"
            )

    print(f"\nread the training split ({args.batch} per batch), patches/s, {args.repeats} passes after a warm-up:")
    for v in READ:
        path = os.path.join(args.workdir, v)
        read_tf(path, args.batch)  # warm-up: page cache, graph tracing
        tf_rates = [read_tf(path, args.batch) for _ in range(args.repeats)]  # raw: the TF-ops path (short stream)
        t0 = [read_torch(path, args.batch, 0) for _ in range(args.repeats)]
        tw = [read_torch(path, args.batch, args.workers) for _ in range(args.repeats)]
        print(
            f"  {v:8s} tf.data {rng(tf_rates):>9s}   torch num_workers=0 {rng(t0):>7s}   "
            f"num_workers={args.workers} {rng(tw):>7s}"
        )
        if v == "raw":
            tb = [read_torch(path, args.batch, args.workers, "batch") for _ in range(args.repeats)]
            print(f"  {'':8s} torch decode_on=batch (decoded on this CPU), num_workers={args.workers} {rng(tb):>7s}")
        conv[v].append({"tf": tf_rates, "t0": t0, "tw": tw})
    f16, raw = conv["float16"][-1], conv["raw"][-1]
    for k, name in (("tf", "tf.data"), ("t0", "torch 0 workers"), ("tw", f"torch {args.workers} workers")):
        lo, hi = min(raw[k]) / max(f16[k]), max(raw[k]) / min(f16[k])
        print(f"  raw / float16 read rate, {name}: {lo:.2f}–{hi:.2f}x")
    read_ab(args.workdir, args.batch, max(3, args.repeats))
    print(f"\nafter: {load()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
