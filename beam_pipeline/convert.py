"""``benbeam convert``: metadata -> validated, paired, decoded patches -> band statistics ->
normalised, sharded TFRecords with a manifest.

``build(pipeline, args)`` assembles the graph; ``run(argv)`` parses options, checks
the inputs up front (clear errors before any work), runs the pipeline and reports.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from beam_pipeline import finalize as fin
from beam_pipeline.options import ConvertOptions, description, local_runner_args, parse
from beam_pipeline.quiet import worker_stderr
from schemas import manifest as M
from transforms import metadata as md
from transforms import outdir, progress, storage
from transforms.objcache import PatchCache
from transforms.plan import RowPlan
from transforms.ptransforms import ComputeBandStats, PlannedShards, WriteShards
from transforms.shard_writer import ShardConfig

LOG = logging.getLogger("benbeam")

# Options recorded in the manifest (never credentials: those never enter the options).
RECORDED = ("meta", "include_snow_cloud", "root", "out", "splits", "frac", "resampling", "shard_size",
            "compression", "image_dtype", "clip_percentiles", "clip", "stats", "stats_fraction")


def _stats_from_acc(acc, clip, clip_percentiles):
    from transforms.histogram import BandStats
    from transforms.normalize import NormParams

    extracted = BandStats().extract(acc, clip_percentiles=tuple(clip_percentiles))
    bad = [b for b, s in extracted.items() if not s.get("count")]
    if bad:
        raise RuntimeError(f"no training pixels for band(s) {', '.join(bad)}: every training patch failed or the "
                           "training split is empty; pass --stats from an earlier run")
    norm = NormParams.from_stats(extracted, clip=clip).to_dict()
    return fin.stats_document(extracted, norm, "computed", clip, clip_percentiles)


def _stats_from_file(url, clip, clip_percentiles, storage_options):
    from transforms.normalize import NormParams

    storage.set_options(storage_options)
    doc = fin.load_stats_document(url)
    norm = NormParams.from_stats(doc["bands"], clip=clip).to_dict()
    return fin.stats_document(doc["bands"], norm, url, clip, clip_percentiles)


def build(p: beam.Pipeline, args, plan: RowPlan | None = None, cache: PatchCache | None = None) -> None:
    """Assemble the convert graph on ``p`` from parsed ConvertOptions ``args``; ``plan``
    (from ``preflight``, which has read the metadata) is made here if absent; ``cache``
    (``object_cache``) keeps training patches fetched for the statistics for the writer."""
    sopts = storage.options()
    metas = [args.meta] + ([args.include_snow_cloud] if args.include_snow_cloud else [])
    splits = tuple(s.strip() for s in args.splits.split(",") if s.strip())

    # The plan (which rows each shard holds) is fixed here; the workers derive the rows of a
    # shard from its key, so only keys, dead letters and per-shard results cross stages.
    if plan is None:
        tables = [md.read_table(m) for m in metas]
        plan = RowPlan.create(metas, md.dataset_root(args.root, args.meta, tables), splits, args.frac,
                              args.shard_size, tables)
    config = ShardConfig(plan, args.out, args.resampling, args.compression, args.image_dtype, sopts,
                         args.decode_timeout, cache)
    checked = p | "PlanShards" >> PlannedShards(config)
    shards, selected = checked["shards"], checked["selected"]

    clip_p = tuple(args.clip_percentiles)
    if args.stats:
        stats_doc = (p | "StatsPath" >> beam.Create([args.stats])
                     | "LoadStats" >> beam.Map(_stats_from_file, args.clip, clip_p, sopts))
        hist = p | "NoHistogram" >> beam.Create([b""])
    else:
        acc = shards | "ComputeBandStats" >> ComputeBandStats(config, args.stats_fraction)
        stats_doc = acc | "ExtractStats" >> beam.Map(_stats_from_acc, args.clip, clip_p)

        def to_npz(a):
            from transforms.histogram import to_npz_bytes

            return to_npz_bytes(a)

        hist = acc | "HistogramNpz" >> beam.Map(to_npz)
    norm = stats_doc | "NormParams" >> beam.Map(lambda d: d["normalization"])

    written = shards | "WriteShards" >> WriteShards(config, norm)
    dead = (checked["dead"], written["dead"]) | "AllDead" >> beam.Flatten()

    options = {k: getattr(args, k) for k in RECORDED}
    options["splits"] = list(splits)
    options["clip_percentiles"] = list(clip_p)
    S = beam.pvalue
    _ = (
        p
        | "Once" >> beam.Create([None])
        | "Finalize" >> beam.Map(
            lambda x, **kw: (storage.set_options(sopts), fin.finalize(x, **kw))[1],
            out=args.out, options=options, compression=args.compression, image_dtype=args.image_dtype,
            shards=S.AsList(written["shards"]), dead=S.AsList(dead), selected=S.AsDict(selected),
            stats_doc=S.AsSingleton(stats_doc), histogram_npz=S.AsSingleton(hist),
            meta_info=plan.info())
    )


def preflight(args, probe_output: bool = True) -> RowPlan:
    """Check inputs before any work (raise ValueError with the fix); returns the plan."""
    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    for s in splits:
        M.check_split(s)
    if not 0 < args.frac <= 1:
        raise ValueError(f"--frac must be in (0, 1], got {args.frac}")
    if not 0 < args.stats_fraction <= 1:
        raise ValueError(f"--stats_fraction must be in (0, 1], got {args.stats_fraction}")
    if args.shard_size < 1:
        raise ValueError("--shard_size must be at least 1")
    lo, hi = args.clip_percentiles
    if not 0 <= lo < hi <= 100:
        raise ValueError(f"--clip_percentiles must satisfy 0 <= LO < HI <= 100, got {lo} {hi}")
    if "train" not in splits and not args.stats:
        raise ValueError("statistics are computed on the training split, which is not selected: add 'train' "
                         "to --splits or pass --stats with the stats.json of an earlier run")
    metas = [args.meta] + ([args.include_snow_cloud] if args.include_snow_cloud else [])
    tables = [md.read_table(m) for m in metas]  # raises MetadataError with a clear message
    root = md.dataset_root(args.root, args.meta, tables)
    plan = RowPlan.create(metas, root, splits, args.frac, args.shard_size, tables)
    if args.root and not storage.exists(root):
        raise ValueError(f"dataset root {root} does not exist")
    if not sum(n for _, n in plan.counts):
        raise ValueError(f"the metadata selects no patch (rows: {', '.join(map(str, plan.rows))}; --splits "
                         f"{args.splits}, --frac {args.frac:g}): nothing to convert")
    if not args.stats and not dict(plan.counts).get("train"):
        raise ValueError("the metadata selects no training patch, so no statistics can be computed: pass --stats "
                         "with the stats.json of an earlier run")
    if args.stats:
        fin.load_stats_document(args.stats)
    if not probe_output:
        return plan
    # The output must be writable, and a stale manifest must not outlive this run.
    probe = storage.join(args.out, ".benbeam-write-test")
    try:
        storage.makedirs(args.out)
        storage.write_bytes_atomic(probe, b"ok")
        storage.filesystem(probe).rm(probe)
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"output {args.out} is not writable: {e}") from None
    manifest = storage.join(args.out, M.MANIFEST)
    if storage.exists(manifest):
        storage.filesystem(manifest).rm(manifest)
    return plan


def summary(out: str) -> dict:
    """The manifest a run just wrote, as its JSON dict."""
    return json.loads(storage.read_bytes(storage.join(out, M.MANIFEST)))


def print_summary(man: dict, seconds: float, stream=None) -> None:
    """Per split: input, written, failed and shards; the failures by reason; the throughput."""
    stream = stream or sys.stdout  # looked up per call: sys.stdout may have been replaced since import
    total_in = sum(s["input"] for s in man["splits"].values())
    total_w = sum(s["written"] for s in man["splits"].values())
    print(f"dataset: {man['options']['out']}", file=stream)
    for name, s in man["splits"].items():
        print(f"  {name:<11} input {s['input']:>7}  written {s['written']:>7}  failed {s['failed']:>6}  "
              f"shards {len(s['shards'])}", file=stream)
    if man["failures"]["total"]:
        reasons = ", ".join(f"{k} {v}" for k, v in man["failures"]["by_reason"].items())
        print(f"  failures: {man['failures']['total']} ({reasons}) -> {man['failures']['file']}", file=stream)
    rate = total_in / seconds if seconds else 0.0
    print(f"  {total_w} patches written in {seconds:.1f} s ({rate:.1f} patches/s)", file=stream)


def print_counters(result, stream=None) -> dict[str, int]:
    """Summarise the pipeline's Beam counters (outcomes by reason, bytes); returns them."""
    stream = stream or sys.stderr
    totals: dict[str, int] = {}
    try:
        counters = result.metrics().query()["counters"]
    except Exception:  # noqa: BLE001 - some runners do not report metrics
        return totals
    for c in counters:
        if c.key.metric.namespace == "benbeam":
            totals[c.key.metric.name] = totals.get(c.key.metric.name, 0) + (c.committed or c.attempted or 0)
    if totals:
        print("counters: " + ", ".join(f"{k}={v}" for k, v in sorted(totals.items())), file=stream)
    return dict(sorted(totals.items()))


def write_run_record(out: str, man: dict, seconds: float, opts, counters: dict) -> dict:
    """``run.json``: how this run went (time, throughput, runner). Not part of the manifest,
    which stays byte-identical between runs; the report's throughput section reads it."""
    import datetime
    import resource

    from beam_pipeline import __version__

    allopts = opts.get_all_options()
    patches = sum(s["input"] for s in man["splits"].values())
    rec = {
        "package_version": __version__,
        "seconds": round(seconds, 3),
        "patches": patches,
        "patches_per_s": round(patches / seconds, 2) if seconds else None,
        "runner": allopts.get("runner") or "DirectRunner",
        "direct_running_mode": allopts.get("direct_running_mode"),
        "workers": allopts.get("direct_num_workers") or allopts.get("num_workers"),
        "finished_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "counters": counters,
    }
    storage.write_bytes_atomic(storage.join(out, M.RUN_JSON), (json.dumps(rec, indent=2, sort_keys=True) + "\n").encode())
    return rec


LOCAL_RUNNERS = (None, "", "DirectRunner", "direct", "PrismRunner", "prism", "SwitchingDirectRunner")


def object_cache(choice: str, root: str | None, opts) -> PatchCache | None:
    """The object cache of a run: ``auto`` = in the system's temporary directory when the
    dataset root is an object store and the runner is local (its workers share this disk);
    ``none``; or a directory (used with any runner: it must exist on the workers)."""
    import tempfile
    import uuid

    if choice == "none":
        return None
    if choice == "auto":
        runner = opts.get_all_options().get("runner")
        if not (root and storage.is_remote(root)) or runner not in LOCAL_RUNNERS:
            return None
        base = tempfile.gettempdir()
    else:
        base = choice
    return PatchCache(os.path.join(base, f"benbeam-object-cache-{uuid.uuid4().hex[:12]}"))


class _Held:
    """The output folder's lock while a run holds it (released however the run ends)."""

    lock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.lock is not None:
            self.lock.release()


def progress_watcher(args, plan: RowPlan, opts, dry_run: bool):
    """The overall progress lines of the statistics and write passes (``transforms.progress``)."""
    counts = {s: n for s, n in plan.counts if s in M.SPLITS}
    passes = [] if args.stats else [progress.Pass("statistics", "convert: statistics", counts.get("train", 0))]
    passes.append(progress.Pass("write", "convert: write", sum(counts.values())))
    return progress.watch(passes, "dry run" if dry_run else opts.get_all_options().get("runner"))


def run(argv: list[str] | None = None) -> int:
    """``benbeam convert``: the exit code (0 ok, 1 failed job or too many failures, 2 bad usage,
    3 environment: output folder in use, full disk; README: exit codes)."""
    with _Held() as held:
        return _run(argv, held)


def _run(argv: list[str] | None, held: _Held) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args, _ = parse(ConvertOptions, argv, "benbeam convert", description(__doc__))
    storage.configure(args.s3_endpoint_url, args.anon, args.gcs_endpoint_url)
    beam_argv = local_runner_args(argv, args.workers)
    opts = PipelineOptions(beam_argv)
    dry_run = bool(opts.get_all_options().get("dry_run"))
    try:
        if not dry_run:  # --out must be new, empty or an earlier convert's; one run at a time; marked first
            held.lock = outdir.claim(args.out, "benbeam convert")
            outdir.mark(args.out, "benbeam convert")
        plan = preflight(args, probe_output=not dry_run)
    except outdir.OutputBusy as e:
        print(f"benbeam convert: error: {e}", file=sys.stderr)
        return 3
    except (ValueError, md.MetadataError) as e:
        print(f"benbeam convert: error: {e}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    cache = None if dry_run else object_cache(args.object_cache, plan.root, opts)
    if cache is not None:
        LOG.info("object cache for training patches: %s", cache.directory)
    p = beam.Pipeline(options=opts)
    build(p, opts.view_as(ConvertOptions), plan, cache)
    wlog: dict = {}
    quiet = None if args.verbose else progress.quiet_shard_lines()
    try:
        # workers' tracebacks to a log file (--debug: here), then the progress lines
        with worker_stderr(wlog), progress_watcher(args, plan, opts, dry_run):
            result = p.run()
            if dry_run:  # DataflowRunner --dry_run: the job graph was built and every transform pickled
                print(f"dry run: the {opts.get_all_options().get('runner') or 'runner'} job graph of `convert` was "
                      "built; nothing was submitted or written")
                return 0
            result.wait_until_finish()
    except Exception as e:  # noqa: BLE001 - a failed job: one clear line, no manifest, exit 1
        if wlog.get("log"):
            print(f"benbeam convert: the workers' output is in {wlog['log']} (--debug shows it here)", file=sys.stderr)
        msg = str(e)
        if "no training pixels for band(s)" in msg:  # every training patch failed: say why, keep the reasons
            from beam_pipeline.diagnose import no_statistics

            print(f"benbeam convert: error: {no_statistics(plan, args.out, args.resampling, args.decode_timeout)}; "
                  f"no {M.MANIFEST} was written", file=sys.stderr)
            return 1
        line = f"{type(e).__name__}: {msg.strip().splitlines()[-1][:500]}" if msg.strip() else type(e).__name__
        print(f"benbeam convert: error: the conversion failed: {line}", file=sys.stderr)
        if "No space left on device" in msg or "Errno 28" in msg or "Disk quota exceeded" in msg:
            print(f"benbeam convert: the disk holding {args.out} is full: free space (the dataset needs about "
                  "0.85 MB per patch as float32, half that with --dtype float16, less with --compression gzip) or "
                  "choose another --out, then run the same command again", file=sys.stderr)
            print(f"benbeam convert: no {M.MANIFEST} was written to {args.out}; the shards there are incomplete",
                  file=sys.stderr)
            return 3
        print(f"benbeam convert: no {M.MANIFEST} was written to {args.out}; the shards there are incomplete",
              file=sys.stderr)
        return 1
    finally:
        if quiet is not None:
            progress.restore_shard_lines(quiet)
        if cache is not None:
            cache.remove()
    dt = time.perf_counter() - t0
    counters = print_counters(result)
    man = summary(args.out)
    print_summary(man, dt)
    try:
        write_run_record(args.out, man, dt, opts, counters)
        if args.report:
            from beam_pipeline.report import write_report

            print(f"  report: {write_report(args.out)}")
    except Exception as e:  # noqa: BLE001 - the dataset is complete; a failed report must not hide that
        print(f"benbeam convert: warning: the dataset is complete, but its report could not be written "
              f"({type(e).__name__}: {e}); `benbeam report {args.out}` tries again", file=sys.stderr)
    total = sum(s["input"] for s in man["splits"].values())
    frac = man["failures"]["total"] / total if total else 0.0
    if frac > args.max_failure_fraction:
        from beam_pipeline.diagnose import top_reasons

        reasons = top_reasons([{"reason": r} for r, n in man["failures"]["by_reason"].items() for _ in range(n)])
        print(f"benbeam convert: error: {man['failures']['total']} of {total} patches ({frac:.1%}) failed, more "
              f"than --max_failure_fraction {args.max_failure_fraction:g} ({reasons}); the dataset was written, "
              f"see {storage.join(args.out, M.FAILURES_JSONL)}", file=sys.stderr)
        return 1
    return 0
