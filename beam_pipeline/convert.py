"""``benbeam convert``: metadata -> validated, paired, decoded patches -> band statistics ->
normalised, sharded TFRecords with a manifest.

``build(pipeline, args)`` assembles the graph; ``run(argv)`` parses options, checks
the inputs up front (clear errors before any work), runs the pipeline and reports.
"""

from __future__ import annotations

import logging
import os
import sys
import time

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from bigearthnet_beam.beam_pipeline import finalize as fin
from bigearthnet_beam.beam_pipeline.dataset import ComputeStatistics, ConvertDataset, check_options
from bigearthnet_beam.beam_pipeline.options import ConvertOptions, description, local_runner_args, parse
from bigearthnet_beam.beam_pipeline.quiet import close_clients, new_pipeline, worker_stderr
from bigearthnet_beam.beam_pipeline.run_record import (
    print_counters,
    print_summary,
    staged_artifacts,
    summary,
    write_run_record,
)
from bigearthnet_beam.beam_pipeline.stats_pass import (
    STATS_PASS_JSON,
    load_stats_pass,
    remove_stats_pass,
    stats_pass_key,
    write_stats_pass,
)
from bigearthnet_beam.schemas import manifest as manifest_schema
from bigearthnet_beam.transforms import metadata as md
from bigearthnet_beam.transforms import outdir, progress, scratch, storage, storeconfig
from bigearthnet_beam.transforms.carried import DISK_FULL, exit_code_of, message_of
from bigearthnet_beam.transforms.cli_args import storage_from_args
from bigearthnet_beam.transforms.objcache import PatchCache
from bigearthnet_beam.transforms.plan import RowPlan
from bigearthnet_beam.transforms.ptransforms import ReadMetadata
from bigearthnet_beam.transforms.statistics import NoStatisticsError, stats_document

LOG = logging.getLogger("benbeam")


def _storage(args, st):
    """``st``, else the ``Storage`` the parsed flags describe (the environment filling the rest)."""
    return st if st is not None else storage_from_args(args, probe=False)


def _splits(args) -> tuple[str, ...]:
    return tuple(s.strip() for s in args.splits.split(",") if s.strip())


def _shard_options(args, st, cache, objects) -> dict:
    """The options of parsed ConvertOptions ``args`` that both jobs' stages take (``_ShardStage``'s fields)."""
    return {
        "storage": st,
        "splits": _splits(args),
        "frac": args.frac,
        "shard_size": args.shard_size,
        "resampling": args.resampling,
        "stats_fraction": args.stats_fraction,
        "decode_timeout": args.decode_timeout,
        "cache": cache,
        "objects": objects,
    }


def _metas(args) -> tuple[str, ...]:
    return (args.meta,) + ((args.include_snow_cloud,) if args.include_snow_cloud else ())


def build_packs(p: beam.Pipeline, args, plan: RowPlan, pack_dir: str, st=None) -> None:
    """With ``--archives``, the first job: stream each archive (in parallel, once) into per-shard
    packs under ``pack_dir``, which the other jobs read through ``PackObjects(pack_dir)``."""
    from bigearthnet_beam.transforms.archive_ptransforms import SplitArchives

    _ = p | "SplitArchives" >> SplitArchives(plan, args.archives, pack_dir, _storage(args, st))


def build_stats(
    p: beam.Pipeline, args, plan: RowPlan, key: dict, cache: PatchCache | None = None, objects=None, st=None
) -> None:
    """The statistics job: ``ComputeStatistics`` of the metadata rows, kept in ``args.out`` as the
    stats pass (``stats_pass``); ``objects``: the object source (None: the files; ``--archives``: the packs)."""
    st = _storage(args, st)
    _ = (
        p
        | "ReadMetadata" >> ReadMetadata(_metas(args), storage=st)
        | "ComputeStatistics" >> ComputeStatistics(plan.root, **_shard_options(args, st, cache, objects))
        | "WriteStatsPass" >> beam.Map(write_stats_pass, args.out, key, args.clip, tuple(args.clip_percentiles), st)
    )


def convert_dataset(args, plan: RowPlan, st, cache=None, stats: tuple[dict, bytes] | None = None, objects=None):
    """The ``ConvertDataset`` of parsed ConvertOptions ``args`` (``stats``: computed by the statistics job)."""
    return ConvertDataset(
        plan.root,
        args.out,
        **_shard_options(args, st, cache, objects),
        compression=args.compression,
        image_dtype=args.image_dtype,
        clip=args.clip,
        clip_percentiles=tuple(args.clip_percentiles),
        stats=args.stats,
        report=False,  # written after run.json, so that it shows this run's throughput
        encoding=args.encoding,
        statistics=None if args.stats else stats,
    )


def build(
    p: beam.Pipeline,
    args,
    plan: RowPlan | None = None,
    cache: PatchCache | None = None,
    stats: tuple[dict, bytes] | None = None,
    objects=None,
    st=None,
) -> None:
    """The write job on ``p``: ``ReadMetadata | ConvertDataset`` of parsed ConvertOptions ``args``.
    ``stats`` = (stats document, histograms.npz bytes) are known at construction time (``--stats``,
    or the statistics job of ``run``), so the write job does not compute them again. ``plan`` (from ``preflight``)
    is made here if absent; ``cache`` (``object_cache``) holds patches the statistics job fetched;
    ``objects``: the object source (None: the files; ``--archives``: the packs of ``build_packs``)."""
    st = _storage(args, st)
    if plan is None:
        tables = [md.read_table(m, st) for m in _metas(args)]
        plan = RowPlan.create(
            _metas(args),
            md.dataset_root(args.root, args.meta, tables),
            _splits(args),
            args.frac,
            args.shard_size,
            tables,
            st,
        )
    if stats is None and not args.stats:
        raise ValueError("build() needs the statistics: run the statistics job first (convert.run does)")
    _ = (
        p
        | "ReadMetadata" >> ReadMetadata(_metas(args), storage=st)
        | "ConvertDataset" >> convert_dataset(args, plan, st, cache, stats, objects)
    )


def preflight(args, probe_output: bool = True, st=None) -> RowPlan:
    """Check inputs before any work (raise ValueError with the fix); returns the plan."""
    st = _storage(args, st)
    splits = list(_splits(args))
    check_options(splits, args.frac, args.stats_fraction, args.shard_size, args.clip_percentiles, args.stats)
    metas = [args.meta] + ([args.include_snow_cloud] if args.include_snow_cloud else [])
    tables = [md.read_table(m, st) for m in metas]  # raises MetadataError with a clear message
    root = md.dataset_root(args.root, args.meta, tables)
    plan = RowPlan.create(metas, root, splits, args.frac, args.shard_size, tables, st)
    if args.archives:
        from bigearthnet_beam.transforms.archives import check_archives

        check_archives(args.archives, st)
        if any(c.startswith("url_") for t, _ in tables for c in t.column_names):
            raise ValueError(
                "--archives reads the objects by their reBEN names; this metadata has url_* columns "
                "(`benbeam index` output): pass the official metadata.parquet instead"
            )
    elif args.root and not st.exists(root):
        raise ValueError(f"dataset root {root} does not exist")
    if not sum(n for _, n in plan.counts):
        raise ValueError(
            f"the metadata selects no patch (rows: {', '.join(map(str, plan.rows))}; --splits "
            f"{args.splits}, --frac {args.frac:g}): nothing to convert"
        )
    if not args.stats and not dict(plan.counts).get("train"):
        raise ValueError(
            "the metadata selects no training patch, so no statistics can be computed: pass --stats "
            "with the stats.json of an earlier run"
        )
    if args.stats:
        fin.load_stats_document(args.stats, st)
    if not probe_output:
        return plan
    # The output must be writable, and a stale manifest must not outlive this run.
    probe = storage.join(args.out, ".benbeam-write-test")
    try:
        st.makedirs(args.out)
        st.write_bytes_atomic(probe, b"ok")
        st.filesystem(probe).rm(probe)
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"output {args.out} is not writable: {e}") from None
    manifest = storage.join(args.out, manifest_schema.MANIFEST)
    if st.exists(manifest):
        st.filesystem(manifest).rm(manifest)
    return plan


LOCAL_RUNNERS = progress.LOCAL_RUNNERS  # the runners that run here (one list: transforms.progress)


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
    # ours alone (a new name): removed when the run ends, or by an interrupted run's clean-up
    return PatchCache(scratch.own(os.path.join(base, f"benbeam-object-cache-{uuid.uuid4().hex[:12]}")))


class _Held:
    """The output folder's lock while a run holds it (released however the run ends)."""

    lock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.lock is not None:
            self.lock.release()


def progress_watcher(args, plan: RowPlan, opts, dry_run: bool, statistics: bool = True):
    """The overall progress lines of the statistics (when it runs) and write passes (``transforms.progress``)."""
    counts = {s: n for s, n in plan.counts if s in manifest_schema.SPLITS}
    passes = [progress.Pass("statistics", "convert: statistics", counts.get("train", 0))] if statistics else []
    passes.append(progress.Pass("write", "convert: write", sum(counts.values())))
    return progress.watch(passes, "dry run" if dry_run else opts.get_all_options().get("runner"))


def run(argv: list[str] | None = None) -> int:
    """``benbeam convert``: the exit code (0 ok, 1 failed job or too many failures, 2 bad usage,
    3 environment: output folder in use, full disk; README: exit codes)."""
    with _Held() as held:
        return _run(argv, held)


def _failed(e: BaseException, args, plan: RowPlan, st, stats, wlog: dict) -> int:
    """One line for a failed run, chosen by the error's type (``transforms.carried``); its exit code."""
    nothing = f"no {manifest_schema.MANIFEST} was written to {args.out}"
    if any(isinstance(x, NoStatisticsError) for x in storeconfig.exception_chain(e)):
        from bigearthnet_beam.beam_pipeline.diagnose import no_statistics

        why = no_statistics(plan, args.out, args.resampling, args.decode_timeout, st)
        print(f"benbeam convert: error: {why}; {nothing}", file=sys.stderr)
        return 1
    found = exit_code_of(e)
    if found is not None and found[1] == DISK_FULL:
        print(
            f"benbeam convert: error: the disk holding {args.out} is full ({message_of(e)}): free space (the "
            "dataset needs about 0.85 MB per patch as float32, half that with --dtype float16, less with "
            f"--compression gzip) or choose another --out, then run the same command again; {nothing}",
            file=sys.stderr,
        )
        return 3
    if wlog.get("log"):
        print(f"benbeam convert: the workers' output is in {wlog['log']} (--debug shows it here)", file=sys.stderr)
    kind = found[1] if found is not None else type(e).__name__
    print(f"benbeam convert: error: the conversion failed: {kind}: {message_of(e)}", file=sys.stderr)
    print(f"benbeam convert: {nothing}; the shards there are incomplete", file=sys.stderr)
    if not args.stats and stats is not None:
        print(
            f"benbeam convert: the statistics are kept in {storage.join(args.out, STATS_PASS_JSON)}: the "
            "same command again resumes with the shards",
            file=sys.stderr,
        )
    return found[0] if found is not None else 1


def _run(argv: list[str] | None, held: _Held) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args, _ = parse(ConvertOptions, argv, "benbeam convert", description(__doc__))
    st = storage_from_args(args)
    beam_argv = local_runner_args(argv, args.workers, "benbeam convert")
    opts = PipelineOptions(beam_argv)
    dry_run = bool(opts.get_all_options().get("dry_run"))
    try:
        if not dry_run:  # --out must be new, empty or an earlier convert's; one run at a time; marked first
            held.lock = outdir.claim(args.out, "benbeam convert", st)
            outdir.mark(args.out, "benbeam convert", st)
        plan = preflight(args, probe_output=not dry_run, st=st)
    except outdir.OutputBusy as e:
        print(f"benbeam convert: error: {e}", file=sys.stderr)
        return 3
    except (ValueError, md.MetadataError) as e:
        print(f"benbeam convert: error: {e}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    # With --archives a shard's objects come whole from its packs: nothing is fetched twice to cache.
    cache = None if dry_run or args.archives else object_cache(args.object_cache, plan.root, opts)
    if cache is not None:
        LOG.info("object cache for training patches: %s", cache.directory)
    runner = opts.get_all_options().get("runner") or "runner"
    results = []
    wlog: dict = {}
    quiet = None if args.verbose else progress.quiet_shard_lines()
    stats = pack_dir = objects = None
    try:
        if not args.stats:  # a complete statistics pass of an earlier, failed run is reused
            dest, key = storage.join(args.out, STATS_PASS_JSON), stats_pass_key(args, plan)
            stats = None if dry_run else load_stats_pass(args.out, key, st, raise_empty=False)
            if stats is not None:
                LOG.info("statistics from the complete statistics pass %s (delete it to recompute)", dest)
        # workers' tracebacks to a log file (--debug: here), then the progress lines
        with (
            worker_stderr(wlog),
            progress_watcher(args, plan, opts, dry_run, statistics=not args.stats and stats is None),
        ):
            if args.archives:  # job 0: the archives into per-shard packs
                from bigearthnet_beam.transforms import archive_packs

                pack_dir = archive_packs.new_pack_dir(args.out)
                objects = archive_packs.PackObjects(pack_dir, st)
                pa = new_pipeline(opts)
                build_packs(pa, opts.view_as(ConvertOptions), plan, pack_dir, st)
                results.append(("archives", pa.run()))
                if not dry_run:
                    results[-1][1].wait_until_finish()
            if not args.stats and stats is None:  # job 1: the statistics
                ps = new_pipeline(opts)
                build_stats(ps, opts.view_as(ConvertOptions), plan, key, cache, objects, st)
                results.append(("stats", ps.run()))
                results[-1][1].wait_until_finish()
                stats = (
                    (stats_document({}, {}, "dry run", args.clip, args.clip_percentiles), b"")
                    if dry_run
                    else load_stats_pass(args.out, key, st)
                )
                if stats is None:
                    raise RuntimeError(f"the statistics job finished without writing {dest}")
            p = new_pipeline(opts)  # job 2: the shards and the manifest
            build(p, opts.view_as(ConvertOptions), plan, cache, stats, objects, st)
            results.append(("write", p.run()))
            if dry_run:  # DataflowRunner --dry_run: the job graphs were built and every transform pickled
                print(
                    f"dry run: the {runner} job graphs of `convert` (statistics, then shards) were built; "
                    "nothing was submitted or written"
                )
                for name in staged_artifacts(results[-1][1]):
                    print(f"  staged: {name}")
                return 0
            results[-1][1].wait_until_finish()
    except Exception as e:  # noqa: BLE001 - a failed job: one clear line, no manifest, exit 1
        return _failed(e, args, plan, st, stats, wlog)
    finally:
        close_clients(results)
        if quiet is not None:
            progress.restore_shard_lines(quiet)
        if cache is not None:
            cache.remove()
            scratch.release(cache.directory)
        if pack_dir is not None and not dry_run:
            archive_packs.remove_packs(pack_dir, st)
    remove_stats_pass(args.out, st)
    dt = time.perf_counter() - t0
    counters = print_counters(results)
    man = summary(args.out, st)
    print_summary(man, dt)
    try:
        write_run_record(args.out, man, dt, opts, counters, st, metadata=plan.info())
        if args.report:
            from bigearthnet_beam.beam_pipeline.report import write_report

            print(f"  report: {write_report(args.out, st=st)}")
    except Exception as e:  # noqa: BLE001 - the dataset is complete; a failed report must not hide that
        print(
            f"benbeam convert: warning: the dataset is complete, but its report could not be written "
            f"({type(e).__name__}: {e}); `benbeam report {args.out}` tries again",
            file=sys.stderr,
        )
    total = sum(s["input"] for s in man["splits"].values())
    frac = man["failures"]["total"] / total if total else 0.0
    if frac > args.max_failure_fraction:
        from bigearthnet_beam.beam_pipeline.diagnose import top_reasons

        reasons = top_reasons([{"reason": r} for r, n in man["failures"]["by_reason"].items() for _ in range(n)])
        print(
            f"benbeam convert: error: {man['failures']['total']} of {total} patches ({frac:.1%}) failed, more "
            f"than --max_failure_fraction {args.max_failure_fraction:g} ({reasons}); the dataset was written, "
            f"see {storage.join(args.out, manifest_schema.FAILURES_JSONL)}",
            file=sys.stderr,
        )
        return 1
    return 0
