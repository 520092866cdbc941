"""The output manifest ``dataset.json``: file names, layout and validation.

``dataset.json`` is written last and atomically by ``benbeam convert``; its presence
means the dataset is complete. Its top-level layout (schema version 1)::

    schema_version, package_version, created_by, options,
    input:       {metadata: [{path, sha256, rows}], rows_selected}
    features:    [{name, kind, shape, dtype, description}]   (schemas.tfrecord)
    image_dtype, compression,
    bands:       {s2: [...], s1: [...]},  classes: [...], ignore_index
    statistics:  {source, clip, clip_percentiles, bands: {NAME: {...}}}
    splits:      {SPLIT: {input, written, failed, shards: [{path, records, sha256, bytes}],
                          class_pixel_counts, ignored_pixels, label_disagreements}}
    failures:    {total, by_stage: {...}, by_reason: {...}, file}
    files:       {stats, histograms, failures, tfmd_schema, report?}

Shard paths are relative to the dataset directory so that a dataset can be copied.
"""

from __future__ import annotations

import json

SCHEMA_VERSION = 1


def contract(image_dtype: str, compression: str) -> dict:
    """The part of ``dataset.json`` that readers rely on and this package fixes: the feature
    spec, image dtype, compression, band and class tables, ignore index."""
    from schemas import bands as B
    from schemas import classes as C
    from schemas import tfrecord as T

    return {
        "features": [{"name": f.name, "kind": f.kind, "shape": list(f.shape), "dtype": f.dtype,
                      "description": f.description} for f in T.features(image_dtype)],
        "image_dtype": image_dtype,
        "compression": compression,
        "bands": {"s2": list(B.S2_NAMES), "s1": list(B.S1_NAMES)},
        "classes": list(C.CLASS_NAMES),
        "class_colors": [list(c) for c in C.class_colors()],
        "ignore_index": C.IGNORE_INDEX,
    }
MANIFEST = "dataset.json"
STATS_JSON = "stats.json"
HISTOGRAMS_NPZ = "histograms.npz"
FAILURES_JSONL = "failures.jsonl"
TFMD_SCHEMA = "schema.pbtxt"
# Written after dataset.json, outside its contract: how the run went and what it did, for people.
RUN_JSON = "run.json"
REPORT_HTML = "report.html"
REPORT_DIR = "report"

SPLITS = ("train", "validation", "test")
SPLIT_ALIASES = {"val": "validation", "valid": "validation", "eval": "validation", "training": "train", "testing": "test"}

REQUIRED_KEYS = (
    "schema_version", "package_version", "options", "input", "features", "image_dtype",
    "compression", "bands", "classes", "ignore_index", "statistics", "splits", "failures", "files",
)


class ManifestError(ValueError):
    """The dataset has no complete, readable manifest."""


def check_split(name: str) -> str:
    """Return ``name`` if it is a reBEN split, else raise with the fix."""
    if name in SPLITS:
        return name
    hint = f"; the metadata uses {SPLIT_ALIASES[name]!r}" if name in SPLIT_ALIASES else ""
    raise ValueError(f"split {name!r} is unknown{hint} (splits: {', '.join(SPLITS)})")


def shard_extension(compression: str) -> str:
    return ".tfrecord.gz" if compression == "gzip" else ".tfrecord"


def shard_path(split: str, index: int, count: int, compression: str = "none") -> str:
    """Relative path of a shard: ``<split>/<split>-00000-of-000NN.tfrecord``."""
    return f"{split}/{split}-{index:05d}-of-{count:05d}{shard_extension(compression)}"


def validate(manifest: dict, where: str = "dataset.json") -> dict:
    """Check the manifest's shape; raise ManifestError saying what is missing."""
    if not isinstance(manifest, dict):
        raise ManifestError(f"{where} is not a JSON object")
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise ManifestError(f"{where} is incomplete: missing {', '.join(missing)}")
    if manifest["schema_version"] != SCHEMA_VERSION:
        raise ManifestError(
            f"{where} has schema_version {manifest['schema_version']!r}; this version of "
            f"bigearthnet-beam reads version {SCHEMA_VERSION}: re-run `benbeam convert`"
        )
    for split, info in manifest["splits"].items():
        if info["written"] + info["failed"] != info["input"]:
            raise ManifestError(f"{where}: split {split!r} breaks written + failed = input")
        if sum(s["records"] for s in info["shards"]) != info["written"]:
            raise ManifestError(f"{where}: split {split!r} shard record counts do not add up")
    return manifest


def dumps(manifest: dict) -> str:
    """Canonical JSON text (sorted keys) so equal manifests are equal bytes."""
    return json.dumps(manifest, indent=2, sort_keys=True, allow_nan=False) + "\n"
