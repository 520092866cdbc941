"""``benbeam validate``: check that every patch's 15 objects exist and are non-empty
(``--deep``: also decode them and check sizes, dtypes and grids).

A Beam pipeline. Patches are grouped by the folder that holds them (the S2 tile), and
each folder is listed once instead of probing objects one by one. The report lists
totals, counts per reason and every failing patch with its reasons.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from beam_pipeline.options import (
    BEAM_PASSTHROUGH,
    add_decode_timeout_arg,
    add_storage_args,
    add_workers_arg,
    description,
    local_runner_args,
)
from schemas import failures as F
from schemas import manifest as M
from schemas.naming import OBJECT_KEYS
from transforms import metadata as md
from transforms import progress, storage
from transforms.ptransforms import CheckRows, ReadMetadata, _count


def _prefix(url: str) -> str:
    """The listing prefix of an object: its patch folder's parent (tile / scene folder)."""
    return url.rsplit("/", 2)[0] if "://" in url else os.path.dirname(os.path.dirname(url))


def _norm(url: str) -> str:
    return url.split("://", 1)[1] if "://" in url else os.path.abspath(url)


def list_sizes(prefix: str) -> dict[str, int]:
    """Every object below ``prefix`` with its size (one recursive listing)."""
    fs = storage.filesystem(prefix)
    try:
        found = fs.find(prefix, detail=True)
    except FileNotFoundError:
        return {}
    if storage.is_remote(prefix):  # fsspec lists remote keys without their protocol
        return {str(k).split("://", 1)[-1]: int(v.get("size") or 0) for k, v in found.items()}
    return {_norm(str(k)): int(v.get("size") or 0) for k, v in found.items()}


def check_objects(rec: dict, listing) -> list[F.PatchError]:
    """Missing / empty objects of a patch according to folder listings."""
    errs = []
    urls = md.record_urls(rec)
    for key in OBJECT_KEYS:
        url = urls[key]
        size = listing(_prefix(url)).get(_norm(url))
        if size is None:
            errs.append(F.PatchError(F.FETCH, "missing_object", f"{key} object {url} does not exist"))
        elif size == 0:
            errs.append(F.PatchError(F.FETCH, "empty_object", f"{key} object {url} is 0 bytes"))
    return errs


class ValidateGroupFn(beam.DoFn):
    def __init__(self, deep: bool, storage_options: dict, decode_timeout: float | None = None):
        self.deep = deep
        self.decode_timeout = decode_timeout
        self.storage_options = storage_options

    def setup(self):
        storage.set_options(self.storage_options)

    def process(self, element):
        _, recs = element
        cache: dict[str, dict] = {}

        def listing(prefix):
            if prefix not in cache:
                cache[prefix] = list_sizes(prefix)
                _count("folders_listed")
            return cache[prefix]

        done = 0
        for rec in sorted(recs, key=lambda r: r["patch_id"]):
            done += 1
            errs = check_objects(rec, listing)
            if not errs and self.deep:
                from transforms.shard_reader import load_patch

                try:
                    load_patch(rec, "nearest", self.decode_timeout)
                except F.PatchError as e:
                    errs = [e]
            yield _result(rec, errs)
        progress.shard_done("validate", done)


def _result(rec: dict, errs: list) -> dict:
    _count("patches_ok" if not errs else "patches_failed")
    return {"patch_id": rec["patch_id"], "split": rec["split"],
            "reasons": [{"stage": e.stage, "reason": e.reason, "detail": e.detail} for e in errs]}


def build(p, args, root, splits):
    sopts = storage.options()
    metas = [args.meta] + ([args.include_snow_cloud] if args.include_snow_cloud else [])
    read = p | "ReadMetadata" >> ReadMetadata(tuple(metas), sopts)
    checked = read["rows"] | "CheckRows" >> CheckRows(root, splits, args.frac)
    if getattr(args, "archives", None):  # each archive's member list, streamed once, against the metadata
        from transforms.archive_inventory import check_archived
        from transforms.archive_ptransforms import ArchiveInventory

        lacking = p | "ArchiveInventory" >> ArchiveInventory(args.archives, tuple(metas), splits, args.frac, sopts)
        results = checked["patches"] | "CheckArchived" >> beam.Map(
            lambda r, lk: _result(r, check_archived(r, lk)), beam.pvalue.AsDict(lacking))
    else:
        results = (
            checked["patches"]
            | "ByFolder" >> beam.Map(lambda r: (_prefix(md.record_urls(r)[OBJECT_KEYS[0]]), r))
            | "Group" >> beam.GroupByKey()
            | "Check" >> beam.ParDo(ValidateGroupFn(args.deep, sopts, args.decode_timeout))
        )
    meta_fail = checked["dead"] | "MetaDead" >> beam.Map(
        lambda d: {"patch_id": d["patch_id"], "split": d["split"],
                   "reasons": [{"stage": d["stage"], "reason": d["reason"], "detail": d["detail"]}]})
    allres = (results, meta_fail) | "All" >> beam.Flatten()
    _ = (
        p | "Once" >> beam.Create([None])
        | "Report" >> beam.Map(lambda _, res, info: (storage.set_options(sopts), write_report(args, res, info))[1],
                               beam.pvalue.AsList(allres), beam.pvalue.AsList(read["info"]))
    )


def write_report(args, results, meta_info) -> None:
    results = sorted(results, key=lambda r: r["patch_id"])
    failing = [r for r in results if r["reasons"]]
    by_reason = Counter(x["reason"] for r in failing for x in r["reasons"])
    report = {
        "command": "benbeam validate",
        "options": {"meta": args.meta, "include_snow_cloud": args.include_snow_cloud, "root": args.root,
                    "frac": args.frac, "deep": args.deep, "splits": args.splits,
                    "archives": getattr(args, "archives", None)},
        "metadata": sorted(meta_info, key=lambda m: m["source"]),
        "totals": {"patches": len(results), "ok": len(results) - len(failing), "failed": len(failing)},
        "by_split": {s: {"patches": n, "failed": sum(1 for r in failing if r["split"] == s)}
                     for s, n in sorted(Counter(r["split"] for r in results).items())},
        "by_reason": dict(sorted(by_reason.items())),
        "failures": failing,
    }
    storage.write_bytes_atomic(args.out, (json.dumps(report, indent=2, sort_keys=True) + "\n").encode())


def run(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="benbeam validate", description=description(__doc__), epilog=BEAM_PASSTHROUGH)
    ap.add_argument("--meta", required=True, help="metadata.parquet or `benbeam index` output")
    ap.add_argument("--include_snow_cloud", default=None, metavar="PARQUET",
                    help="also check the patches of this parquet (the snow/cloud/shadow metadata)")
    ap.add_argument("--root", default=None, help="dataset root (default: the folder of --meta)")
    ap.add_argument("--out", required=True, help="report JSON (local, s3:// or gs://)")
    ap.add_argument("--frac", type=float, default=1.0, help="deterministic hash sample of patch ids")
    ap.add_argument("--splits", default="train,validation,test",
                    help="comma-separated splits to check (default: all three)")
    ap.add_argument("--deep", action="store_true", help="also decode every object and check size/dtype/grid")
    ap.add_argument("--archives", default=None, metavar="DIR_OR_URL",
                    help="check the official .tar.zst archives in this folder or bucket prefix instead of the "
                         "extracted folders (their member lists, each streamed once)")
    add_decode_timeout_arg(ap)
    add_workers_arg(ap)
    add_storage_args(ap)
    args, rest = ap.parse_known_args(argv)
    storage.configure(args.s3_endpoint_url, args.anon, args.gcs_endpoint_url)
    try:
        splits = tuple(M.check_split(s.strip()) for s in args.splits.split(",") if s.strip())
        if not 0 < args.frac <= 1:
            raise ValueError(f"--frac must be in (0, 1], got {args.frac}")
        metas = [args.meta] + ([args.include_snow_cloud] if args.include_snow_cloud else [])
        tables = [md.read_table(m) for m in metas]
        if args.archives:
            if args.deep:
                raise ValueError("--deep decodes objects, which --archives does not extract: run "
                                 "`benbeam convert --archives` (it reports every undecodable patch) instead")
            from transforms.archives import check_archives

            check_archives(args.archives)
    except (ValueError, md.MetadataError) as e:
        print(f"benbeam validate: error: {e}", file=sys.stderr)
        return 2
    root = args.root or storage.parent(args.meta)
    t0 = time.perf_counter()
    opts = PipelineOptions(local_runner_args(rest, args.workers))
    total = sum(md.split_counts([t for t, _ in tables], splits, args.frac).values())
    with progress.watch([progress.Pass("validate", "validate", total)], opts.get_all_options().get("runner")):
        with beam.Pipeline(options=opts) as p:
            build(p, args, root, splits)
    dt = time.perf_counter() - t0
    rep = json.loads(storage.read_bytes(args.out))
    t = rep["totals"]
    print(f"validated {t['patches']} patches in {dt:.1f} s: {t['ok']} ok, {t['failed']} failed -> {args.out}")
    for reason, n in rep["by_reason"].items():
        print(f"  {reason}: {n}")
    return 0
