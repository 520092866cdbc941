"""``benbeam validate``: check that every patch's 15 objects exist and are non-empty
(``--deep``: also decode them and check sizes, dtypes and grids).

A Beam pipeline. Patches are grouped by the folder that holds them (the S2 tile), and
each folder is listed once instead of probing objects one by one. The report lists
totals, counts per reason and every failing patch with its reasons.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from bigearthnet_beam.beam_pipeline import quiet
from bigearthnet_beam.beam_pipeline.options import (
    BEAM_PASSTHROUGH,
    add_decode_timeout_arg,
    add_max_failure_arg,
    add_storage_args,
    add_workers_arg,
    description,
    local_runner_args,
    sample_fraction,
    strict_parser,
    suggest,
    unknown_pipeline_args,
)
from bigearthnet_beam.schemas import failures, manifest
from bigearthnet_beam.schemas.naming import OBJECT_KEYS
from bigearthnet_beam.transforms import containment, flagtypes, outdir, progress, storage
from bigearthnet_beam.transforms import metadata as md
from bigearthnet_beam.transforms.cli_args import storage_from_args
from bigearthnet_beam.transforms.ptransforms import CheckRows, ReadMetadata, _count

COMMAND = "benbeam validate"


def _prefix(url: str) -> str:
    """The listing prefix of an object: its patch folder's parent (tile / scene folder)."""
    return url.rsplit("/", 2)[0] if "://" in url else os.path.dirname(os.path.dirname(url))


def _norm(url: str) -> str:
    return url.split("://", 1)[1] if "://" in url else os.path.abspath(url)


def list_sizes(prefix: str, st: storage.Storage | None = None) -> dict[str, int]:
    """Every object below ``prefix`` with its size (one recursive listing, under ``st``)."""
    fs = (st or storage.Storage()).filesystem(prefix)
    try:
        found = fs.find(prefix, detail=True)
    except FileNotFoundError:
        return {}
    if storage.is_remote(prefix):  # fsspec lists remote keys without their protocol
        return {str(k).split("://", 1)[-1]: int(v.get("size") or 0) for k, v in found.items()}
    return {_norm(str(k)): int(v.get("size") or 0) for k, v in found.items()}


def check_objects(rec: dict, listing) -> list[failures.PatchError]:
    """Missing / empty / oversized objects of a patch: local ones by ``containment.check_local_object``
    (convert's own check), remote ones by folder listings; a path outside the dataset root
    is refused before anything is listed or opened (``transforms.containment``)."""
    errs = []
    urls = md.record_urls(rec)
    for key in OBJECT_KEYS:
        url = urls[key]
        try:
            containment.check_url(url, rec.get("root"), what=f"{key} object")
            if not storage.is_remote(url):  # local: the one object check convert's reads make
                containment.check_local_object(url, rec.get("root"), what=f"{key} object")
                continue
        except failures.PatchError as e:
            errs.append(e)
            continue
        size = listing(_prefix(url)).get(_norm(url))
        if size is None:
            errs.append(failures.PatchError(failures.FETCH, "missing_object", f"{key} object {url} does not exist"))
        elif size == 0:
            errs.append(failures.PatchError(failures.FETCH, "empty_object", f"{key} object {url} is 0 bytes"))
        elif size > containment.MAX_OBJECT_BYTES:
            errs.append(
                failures.PatchError(
                    failures.FETCH,
                    "object_too_large",
                    f"{key} object {url} is {size:,} bytes; no reBEN object exceeds {containment.MAX_OBJECT_BYTES:,}",
                )
            )
    return errs


class ValidateGroupFn(beam.DoFn):
    """Per object folder's ``(prefix, records)``: check each patch's objects (and decode them with ``deep``)."""

    def __init__(self, deep: bool, st: storage.Storage | None = None, decode_timeout: float | None = None):
        self.deep = deep
        self.decode_timeout = decode_timeout
        self.storage = st if st is not None else storage.Storage()

    def setup(self):
        """The decode watchdog of this DoFn instance (``--deep``)."""
        from bigearthnet_beam.transforms.patch import Watchdog

        self.watchdog = Watchdog()

    def process(self, element):
        """One result dict (patch id, split, failing reasons) per record, in patch-id order."""
        _, recs = element
        cache: dict[str, dict] = {}

        def listing(prefix):
            if prefix not in cache:
                cache[prefix] = list_sizes(prefix, self.storage)
                _count("folders_listed")
            return cache[prefix]

        done = 0
        for rec in sorted(recs, key=lambda r: r["patch_id"]):
            done += 1
            errs = check_objects(rec, listing)
            if not errs and self.deep:
                from bigearthnet_beam.transforms.shard_reader import load_patch

                try:
                    load_patch(rec, "nearest", self.decode_timeout, self.storage, self.watchdog)
                except failures.PatchError as e:
                    errs = [e, *e.also]
            yield _result(rec, errs)
        progress.shard_done("validate", done)


def _result(rec: dict, errs: list) -> dict:
    _count("patches_ok" if not errs else "patches_failed")
    return {
        "patch_id": rec["patch_id"],
        "split": rec["split"],
        "reasons": [{"stage": e.stage, "reason": e.reason, "detail": e.detail} for e in errs],
    }


def build(p, args, root, splits, st: storage.Storage | None = None):
    """Add the validation pipeline (metadata, objects or archives, report) to ``p``; every
    step reads and writes under ``st`` (default ``Storage()``)."""
    sopts = st if st is not None else storage.Storage()
    metas = [args.meta] + ([args.include_snow_cloud] if args.include_snow_cloud else [])
    read = p | "ReadMetadata" >> ReadMetadata(tuple(metas), storage=sopts, with_info=True)
    checked = read["rows"] | "CheckRows" >> CheckRows(root, splits, args.frac)
    if getattr(args, "archives", None):  # each archive's member list, streamed once, against the metadata
        from bigearthnet_beam.transforms.archive_inventory import check_archived
        from bigearthnet_beam.transforms.archive_ptransforms import ArchiveInventory

        lacking = p | "ArchiveInventory" >> ArchiveInventory(args.archives, tuple(metas), splits, args.frac, sopts)
        results = checked["patches"] | "CheckArchived" >> beam.Map(
            lambda r, lk: _result(r, check_archived(r, lk)), beam.pvalue.AsDict(lacking)
        )
    else:
        results = (
            checked["patches"]
            | "ByFolder" >> beam.Map(lambda r: (_prefix(md.record_urls(r)[OBJECT_KEYS[0]]), r))
            | "Group" >> beam.GroupByKey()
            | "Check" >> beam.ParDo(ValidateGroupFn(args.deep, sopts, args.decode_timeout))
        )
    meta_fail = checked["dead"] | "MetaDead" >> beam.Map(
        lambda d: {
            "patch_id": d["patch_id"],
            "split": d["split"],
            "reasons": [{"stage": d["stage"], "reason": d["reason"], "detail": d["detail"]}],
        }
    )
    allres = (results, meta_fail) | "All" >> beam.Flatten()
    _ = (
        p
        | "Once" >> beam.Create([None])
        | "Report"
        >> beam.Map(
            lambda _, res, info: write_report(args, res, info, sopts),
            beam.pvalue.AsList(allres),
            beam.pvalue.AsList(read["info"]),
        )
    )


def write_report(args, results, meta_info, st: storage.Storage | None = None) -> None:
    """Write the validation report (totals, per split and reason, failures) as JSON to ``args.out``."""
    results = sorted(results, key=lambda r: r["patch_id"])
    failing = [r for r in results if r["reasons"]]
    by_reason = Counter(x["reason"] for r in failing for x in r["reasons"])
    report = {
        "command": "benbeam validate",
        "options": {
            "meta": args.meta,
            "include_snow_cloud": args.include_snow_cloud,
            "root": args.root,
            "frac": args.frac,
            "deep": args.deep,
            "splits": args.splits,
            "archives": getattr(args, "archives", None),
        },
        "metadata": sorted(meta_info, key=lambda m: m["source"]),
        "totals": {"patches": len(results), "ok": len(results) - len(failing), "failed": len(failing)},
        "by_split": {
            s: {"patches": n, "failed": sum(1 for r in failing if r["split"] == s)}
            for s, n in sorted(Counter(r["split"] for r in results).items())
        },
        "by_reason": dict(sorted(by_reason.items())),
        "failures": failing,
    }
    (st or storage.Storage()).write_bytes_atomic(
        args.out, (json.dumps(report, indent=2, sort_keys=True) + "\n").encode()
    )


def check_out(out: str, st: storage.Storage | None = None) -> None:
    """``--out`` is a report file: refuse a folder, a file that is not an earlier report, and a
    place that cannot be written (``outdir.check_writable``, exit 3)."""
    st = st if st is not None else storage.Storage()
    outdir.check_writable(out)
    if storage.is_remote(out):
        if st.exists(out) and not _is_report(out, st):
            raise ValueError(
                f"--out {out} exists and is not a report of `{COMMAND}`; it is not overwritten — choose another name"
            )
        return
    if os.path.isdir(out):
        raise ValueError(
            f"--out {out} is a folder; give the report's file name, e.g. {os.path.join(out, 'validation.json')}"
        )
    if os.path.lexists(out) and not _is_report(out, st):
        raise ValueError(
            f"--out {out} exists and is not a report of `{COMMAND}`; it is not overwritten — choose another name"
        )


def _is_report(url: str, st: storage.Storage | None = None) -> bool:
    try:
        doc = json.loads((st or storage.Storage()).read_bytes(url))
    except Exception:  # noqa: BLE001 - unreadable or not JSON: not ours
        return False
    return isinstance(doc, dict) and doc.get("command") == COMMAND


def run(argv: list[str] | None = None) -> int:
    """``benbeam validate``; returns the exit code (README: exit codes)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = strict_parser(prog=COMMAND, description=description(__doc__), epilog=BEAM_PASSTHROUGH)
    ap.add_argument("--meta", required=True, help="metadata.parquet or `benbeam index` output")
    ap.add_argument(
        "--include_snow_cloud",
        default=None,
        metavar="PARQUET",
        help="also check the patches of this parquet (the snow/cloud/shadow metadata)",
    )
    ap.add_argument(
        "--root",
        default=None,
        help="dataset root (default: the folder of --meta); objects outside it are refused",
    )
    ap.add_argument(
        "--out", type=flagtypes.output, required=True, help="report JSON (local, s3:// or gs://); not a folder"
    )
    ap.add_argument("--frac", type=sample_fraction, default=1.0, help="deterministic hash sample of patch ids")
    ap.add_argument(
        "--splits", default="train,validation,test", help="comma-separated splits to check (default: all three)"
    )
    ap.add_argument("--deep", action="store_true", help="also decode every object and check size/dtype/grid")
    ap.add_argument(
        "--archives",
        default=None,
        metavar="DIR_OR_URL",
        help="check the official .tar.zst archives in this folder or bucket prefix instead of the "
        "extracted folders (their member lists, each streamed once)",
    )
    add_decode_timeout_arg(ap)
    add_max_failure_arg(ap)
    add_workers_arg(ap)
    add_storage_args(ap)
    args, rest = ap.parse_known_args(argv)
    unknown = unknown_pipeline_args(rest)
    if unknown:
        ap.error(
            f"unrecognized arguments: {' '.join(unknown)} (neither a {COMMAND} flag nor an Apache Beam "
            f"pipeline option{suggest(unknown, ap)}; flags are never abbreviated; see --help)"
        )
    st = storage_from_args(args)
    try:
        splits = tuple(manifest.check_split(s.strip()) for s in args.splits.split(",") if s.strip())
        metas = [args.meta] + ([args.include_snow_cloud] if args.include_snow_cloud else [])
        tables = [md.read_table(m, st) for m in metas]
        if args.archives:
            if args.deep:
                raise ValueError(
                    "--deep decodes objects, which --archives does not extract: run "
                    "`benbeam convert --archives` (it reports every undecodable patch) instead"
                )
            from bigearthnet_beam.transforms.archives import check_archives

            check_archives(args.archives, st)
        check_out(args.out, st)
        root = md.dataset_root(args.root, args.meta, tables)
        total = sum(md.split_counts([t for t, _ in tables], splits, args.frac).values())
        rows = [t.num_rows for t, _ in tables]
        md.check_selection(
            root, bool(args.root) and not args.archives, total, rows, args.splits, args.frac, "validate", st
        )
    except (ValueError, md.MetadataError) as e:
        print(f"{COMMAND}: error: {e}", file=sys.stderr)
        return 2
    except outdir.OutputUnwritable as e:
        print(f"{COMMAND}: error: {e}", file=sys.stderr)
        return e.exit_code
    t0 = time.perf_counter()
    wlog: dict = {}
    try:
        opts = PipelineOptions(local_runner_args(rest, args.workers, COMMAND))
        with (
            quiet.worker_stderr(wlog),
            progress.watch([progress.Pass("validate", "validate", total)], opts.get_all_options().get("runner")),
        ):
            with quiet.new_pipeline(opts) as p:
                build(p, args, root, splits, st)
    except Exception as e:  # noqa: BLE001 - a failed job: one clear line
        msg = str(e).strip().splitlines()[-1][:500] if str(e).strip() else ""
        print(f"{COMMAND}: error: the validation failed: {type(e).__name__}: {msg}", file=sys.stderr)
        if wlog.get("log"):
            print(f"{COMMAND}: the workers' output is in {wlog['log']} (--debug shows it here)", file=sys.stderr)
        return 1
    dt = time.perf_counter() - t0
    rep = json.loads(st.read_bytes(args.out))
    t = rep["totals"]
    print(f"validated {t['patches']} patches in {dt:.1f} s: {t['ok']} ok, {t['failed']} failed -> {args.out}")
    for reason, n in rep["by_reason"].items():
        print(f"  {reason}: {n}")
    frac = t["failed"] / t["patches"] if t["patches"] else 0.0
    if frac > args.max_failure_fraction:
        print(
            f"{COMMAND}: error: {t['failed']} of {t['patches']} patches ({frac:.1%}) failed, more than "
            f"--max_failure_fraction {args.max_failure_fraction:g}; see {args.out}",
            file=sys.stderr,
        )
        return 1
    return 0
