"""``benbeam verify DATASET``: re-read a converted dataset and check it against its manifest.

Checks every shard's sha256, byte size and record count, every record's TFRecord CRCs,
and parses every record with the ``schemas/`` feature spec (shapes, dtypes, finite
values, labels in range); the TFDS files, where present, must equal what the manifest
derives. Exits 1 on any mismatch, listing each problem.
"""

from __future__ import annotations

import argparse
import hashlib
import sys

import numpy as np

from beam_pipeline.options import add_storage_args
from schemas import manifest as M
from schemas import tfrecord as T
from schemas.classes import IGNORE_INDEX, NUM_CLASSES
from transforms import containment, storage, tfds_meta


def load_manifest(dataset: str) -> dict:
    """The dataset's checked manifest (``schemas.manifest.load``), as its JSON dict."""
    return M.load(dataset, storage.read_bytes)[0].to_dict()


def check_example(ex: dict, split: str, dtype: str) -> list[str]:
    """What is wrong with one decoded example of a ``split`` shard (shapes, finite values, labels)."""
    problems = []
    feats = T.feature_by_name(dtype)
    for name in (T.S2, T.S1, T.LABEL, T.MULTI_HOT):
        arr = np.asarray(ex[name])
        if tuple(arr.shape) != feats[name].shape:
            problems.append(f"{name} has shape {arr.shape}, expected {feats[name].shape}")
    for name in (T.S2, T.S1):
        if not np.isfinite(np.asarray(ex[name], dtype=np.float32)).all():
            problems.append(f"{name} holds non-finite values")
    label = np.asarray(ex[T.LABEL])
    bad = (label >= NUM_CLASSES) & (label != IGNORE_INDEX)
    if bad.any():
        problems.append(f"label holds values outside 0..{NUM_CLASSES - 1} and {IGNORE_INDEX}")
    if ex[T.SPLIT] != split:
        problems.append(f"split feature {ex[T.SPLIT]!r} in a {split!r} shard")
    return problems


def verify(dataset: str, parse: bool = True) -> list[str]:
    """All problems found (empty list = the dataset matches its manifest)."""
    from transforms.encode import decode_example, iter_records

    man = load_manifest(dataset)
    problems: list[str] = []
    for split, entry in man["splits"].items():
        for sh in entry["shards"]:
            try:  # a path from a file benbeam wrote, but one anyone can edit: it must stay inside the dataset
                url = containment.check_relative(sh["path"], dataset, what="shard")
            except ValueError as e:
                problems.append(f"{str(sh['path'])[:200]}: refused, not read: {e}")
                continue
            if not storage.exists(url):
                problems.append(f"{sh['path']}: missing")
                continue
            data = storage.read_bytes(url)
            if len(data) != sh["bytes"]:
                problems.append(f"{sh['path']}: {len(data)} bytes, manifest says {sh['bytes']}")
            digest = hashlib.sha256(data).hexdigest()
            if digest != sh["sha256"]:
                problems.append(f"{sh['path']}: sha256 {digest[:16]}… differs from the manifest's {sh['sha256'][:16]}…")
            n = 0
            try:
                for rec in iter_records(url, man["compression"]):
                    n += 1
                    if parse:
                        ex = decode_example(rec, man["image_dtype"])
                        for p in check_example(ex, split, man["image_dtype"]):
                            problems.append(f"{sh['path']} record {n - 1} ({ex.get(T.PATCH_ID)}): {p}")
            except Exception as e:  # noqa: BLE001 - every failure is a finding
                problems.append(f"{sh['path']}: unreadable after {n} records: {e}")
                continue
            if n != sh["records"]:
                problems.append(f"{sh['path']}: {n} records, manifest says {sh['records']}")
    return problems + tfds_meta.check(dataset, man)


def run(argv: list[str] | None = None) -> int:
    """``benbeam verify DATASET``: 0 if it matches its manifest, 1 on mismatches, 2 without a manifest."""
    ap = argparse.ArgumentParser(prog="benbeam verify", allow_abbrev=False, description=__doc__.splitlines()[0])
    ap.add_argument("dataset", help="dataset directory or URL holding dataset.json")
    ap.add_argument("--no_parse", dest="parse", action="store_false", help="check hashes and counts only")
    add_storage_args(ap)
    args = ap.parse_args(argv)
    storage.configure(args.s3_endpoint_url, args.anon, args.gcs_endpoint_url)
    try:
        problems = verify(args.dataset, parse=args.parse)
    except M.ManifestError as e:
        print(f"benbeam verify: error: {e}", file=sys.stderr)
        return 2
    if problems:
        for p in problems:
            print(f"MISMATCH {p}", file=sys.stderr)
        print(f"benbeam verify: {len(problems)} problem(s) in {args.dataset}", file=sys.stderr)
        return 1
    man = load_manifest(args.dataset)
    n = sum(e["written"] for e in man["splits"].values())
    k = sum(len(e["shards"]) for e in man["splits"].values())
    print(f"ok: {args.dataset}: {k} shards, {n} records match dataset.json")
    return 0
