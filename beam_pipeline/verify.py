"""``benbeam verify DATASET``: re-read a converted dataset and check it against its manifest.

Checks every shard's sha256, byte size and record count, every record's TFRecord CRCs,
and parses every record with the ``schemas/`` feature spec (shapes, dtypes, finite
values, labels in range); the TFDS files, where present, must equal what the manifest
derives. With tfx-bsl installed (the ``[tfx]`` extra) every record is also decoded a
second, independent way: by tfx-bsl's schema-driven C++ Example decoder against the TFMD
schema of ``schemas/tfrecord.py`` (what ``schema.pbtxt`` holds), and both decodings must
agree value for value (``--tfx auto|on|off``, default auto: on when tfx-bsl is importable).
Exits 1 on any mismatch, listing each problem.
"""

from __future__ import annotations

import hashlib
import sys

import numpy as np

from bigearthnet_beam.beam_pipeline.options import add_storage_args
from bigearthnet_beam.schemas import manifest, tfrecord
from bigearthnet_beam.schemas.classes import IGNORE_INDEX, NUM_CLASSES
from bigearthnet_beam.transforms import containment, flagtypes, storage, tfds_meta
from bigearthnet_beam.transforms.cli_args import storage_from_args


def load_manifest(dataset: str, st: storage.Storage | None = None) -> dict:
    """The dataset's checked manifest (``schemas.manifest.load``, read under ``st``), as its JSON dict."""
    return manifest.load(dataset, (st or storage.Storage()).read_bytes)[0].to_dict()


def check_example(ex: dict, split: str, dtype: str) -> list[str]:
    """What is wrong with one decoded example of a ``split`` shard (shapes, finite values, labels)."""
    problems = []
    feats = tfrecord.feature_by_name(dtype)
    images = tfrecord.RAW_IMAGE_FEATURES if dtype == tfrecord.RAW else tfrecord.IMAGE_FEATURES
    for name in (*images, tfrecord.LABEL, tfrecord.MULTI_HOT):
        arr = np.asarray(ex[name])
        if tuple(arr.shape) != feats[name].shape:
            problems.append(f"{name} has shape {arr.shape}, expected {feats[name].shape}")
    for name in images:
        arr = np.asarray(ex[name])
        if arr.dtype.kind == "u":  # raw S2 digital numbers: reBEN has no S2 nodata (convert refuses it)
            if not arr.all():
                problems.append(f"{name} holds nodata (0) values")
        elif not np.isfinite(np.asarray(arr, dtype=np.float32)).all():
            problems.append(f"{name} holds non-finite values")
    label = np.asarray(ex[tfrecord.LABEL])
    bad = (label >= NUM_CLASSES) & (label != IGNORE_INDEX)
    if bad.any():
        problems.append(f"label holds values outside 0..{NUM_CLASSES - 1} and {IGNORE_INDEX}")
    if ex[tfrecord.SPLIT] != split:
        problems.append(f"split feature {ex[tfrecord.SPLIT]!r} in a {split!r} shard")
    return problems


class TfxDecoder:
    """tfx-bsl's ``ExamplesToRecordBatchDecoder`` for the dataset's TFMD schema."""

    def __init__(self, image_dtype: str):
        from tfx_bsl.coders import example_coder

        self.features = tfrecord.features(image_dtype)
        self.decoder = example_coder.ExamplesToRecordBatchDecoder(tfrecord.tfmd_schema(image_dtype).SerializeToString())

    def compare(self, records: list[bytes], examples: list[dict]) -> list[tuple[int, str]]:
        """(record number, problem) wherever tfx-bsl's decoding differs from ``examples``."""
        batch = self.decoder.DecodeBatch(records)
        problems = []
        for f in self.features:
            if f.name not in batch.schema.names:
                return [(0, f"tfx-bsl decoded no feature {f.name!r}")]
            column = batch.column(f.name)
            for i, ex in enumerate(examples):
                ours = np.asarray(ex[f.name])
                if f.kind in ("float", "int64"):
                    theirs = column[i].values.to_numpy(zero_copy_only=False)
                    same = theirs.shape == (ours.size,) and np.array_equal(
                        theirs.view(np.uint8), np.ascontiguousarray(ours, theirs.dtype).ravel().view(np.uint8)
                    )
                else:
                    values = column[i].values.to_pylist()
                    want = ours.tobytes() if f.kind == "raw" else str(ex[f.name]).encode()
                    same = values == [want]
                if not same:
                    problems.append((i, f"tfx-bsl decodes {f.name} differently"))
        return problems


def tfx_decoder(mode: str, image_dtype: str) -> TfxDecoder | None:
    """The tfx-bsl cross-check for ``--tfx`` ``mode`` (None when off, or auto without tfx-bsl)."""
    if mode == "off":
        return None
    try:
        return TfxDecoder(image_dtype)
    except ImportError:
        if mode == "on":
            raise
        return None


def verify(dataset: str, parse: bool = True, tfx: str = "auto", st: storage.Storage | None = None) -> list[str]:
    """All problems found (empty list = the dataset matches its manifest), read under ``st`` (default ``Storage()``)."""
    from bigearthnet_beam.transforms.encode import decode_example, iter_records

    st = st if st is not None else storage.Storage()
    man = load_manifest(dataset, st)
    cross = tfx_decoder(tfx, man["image_dtype"]) if parse else None
    problems: list[str] = []
    for split, entry in man["splits"].items():
        for sh in entry["shards"]:
            # a path from a file anyone can edit: one that leaves the dataset is refused (exit 2),
            # as by every reader of a manifest (report, train, evaluate)
            url = containment.check_relative(sh["path"], dataset, what="shard")
            if not st.exists(url):
                problems.append(f"{sh['path']}: missing")
                continue
            data = st.read_bytes(url)
            if len(data) != sh["bytes"]:
                problems.append(f"{sh['path']}: {len(data)} bytes, manifest says {sh['bytes']}")
            digest = hashlib.sha256(data).hexdigest()
            if digest != sh["sha256"]:
                problems.append(f"{sh['path']}: sha256 {digest[:16]}… differs from the manifest's {sh['sha256'][:16]}…")
            n = 0
            records, examples = [], []
            try:
                for rec in iter_records(url, man["compression"], st=st):
                    n += 1
                    if parse:
                        ex = decode_example(rec, man["image_dtype"])
                        for p in check_example(ex, split, man["image_dtype"]):
                            problems.append(f"{sh['path']} record {n - 1} ({ex.get(tfrecord.PATCH_ID)}): {p}")
                        if cross is not None:
                            records.append(rec)
                            examples.append(ex)
                if records:
                    for i, p in cross.compare(records, examples):
                        problems.append(f"{sh['path']} record {i} ({examples[i].get(tfrecord.PATCH_ID)}): {p}")
            except Exception as e:  # noqa: BLE001 - every failure is a finding
                problems.append(f"{sh['path']}: unreadable after {n} records: {e}")
                continue
            if n != sh["records"]:
                problems.append(f"{sh['path']}: {n} records, manifest says {sh['records']}")
    return problems + tfds_meta.check(dataset, man, st)


def run(argv: list[str] | None = None) -> int:
    """``benbeam verify DATASET``: 0 if it matches its manifest, 1 on mismatches, 2 without a manifest."""
    ap = flagtypes.Parser(prog="benbeam verify", allow_abbrev=False, description=__doc__.splitlines()[0])
    ap.add_argument("dataset", help="dataset directory or URL holding dataset.json")
    ap.add_argument("--no_parse", dest="parse", action="store_false", help="check hashes and counts only")
    ap.add_argument(
        "--tfx",
        choices=("auto", "on", "off"),
        default="auto",
        help="also decode every record with tfx-bsl against the TFMD schema (auto: when installed)",
    )
    add_storage_args(ap)
    args = ap.parse_args(argv)
    st = storage_from_args(args)
    try:
        problems = verify(args.dataset, parse=args.parse, tfx=args.tfx, st=st)
    except manifest.ManifestError as e:
        print(f"benbeam verify: error: {e}", file=sys.stderr)
        return 2
    except ImportError:
        print("benbeam verify: error: --tfx on needs tfx-bsl; pip install 'bigearthnet-beam[tfx]'", file=sys.stderr)
        return 3
    if problems:
        for p in problems:
            print(f"MISMATCH {p}", file=sys.stderr)
        print(f"benbeam verify: {len(problems)} problem(s) in {args.dataset}", file=sys.stderr)
        return 1
    man = load_manifest(args.dataset, st)
    n = sum(e["written"] for e in man["splits"].values())
    k = sum(len(e["shards"]) for e in man["splits"].values())
    how = (
        ""
        if not args.parse
        else (", cross-decoded by tfx-bsl" if tfx_decoder(args.tfx, man["image_dtype"]) else ", tfx-bsl not installed")
    )
    print(f"ok: {args.dataset}: {k} shards, {n} records match dataset.json{how}")
    return 0
