"""The output manifest ``dataset.json`` and the shard record: file names, typed layout, one
``build`` and one ``load``.

``dataset.json`` is written last and atomically by ``benbeam convert``; its presence
means the dataset is complete. Its top-level layout (schema version 1) is ``Manifest``::

    schema_version, package_version, created_by, options,
    input:       {metadata: [{path, sha256, rows, source}], rows_selected}
    features:    [{name, kind, shape, dtype, description}]   (schemas.tfrecord)
    image_dtype, compression,   [encoding: "raw" only for the raw encoding, whose image_dtype is "raw"]
    bands:       {s2: [...], s1: [...]},  classes: [...], class_colors: [...], ignore_index
    statistics:  {source, clip, clip_percentiles, bands: {NAME: {...}}, ...}
    splits:      {SPLIT: SplitEntry {input, written, failed, shards: [ShardEntry {path, records, sha256, bytes}],
                          class_pixel_counts, ignored_pixels, label_disagreements, class_pixel_frequencies}}
    failures:    {total, by_stage: {...}, by_reason: {...}, file}
    files:       {stats, histograms, failures, tfmd_schema}

A ``ShardRecord`` is what the writer reports for one shard (``ShardEntry`` plus its key and
the sums ``build`` adds up). Shard paths are relative to the dataset directory so that a
dataset can be copied. Plain Python: the caller passes the function that reads bytes
(``Storage.read_bytes`` of a ``transforms.storage.Storage`` for URLs).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, fields
from typing import Any, Callable, Iterable, Mapping

from bigearthnet_beam.schemas import bands as band_table
from bigearthnet_beam.schemas import classes as class_table
from bigearthnet_beam.schemas import errors, tfrecord

SCHEMA_VERSION = 1

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
SPLIT_ALIASES = {
    "val": "validation",
    "valid": "validation",
    "eval": "validation",
    "training": "train",
    "testing": "test",
}
COMPRESSIONS = ("none", "gzip")

REQUIRED_KEYS = (
    "schema_version",
    "package_version",
    "options",
    "input",
    "features",
    "image_dtype",
    "compression",
    "bands",
    "classes",
    "ignore_index",
    "statistics",
    "splits",
    "failures",
    "files",
)


class ManifestError(errors.InputError):
    """The dataset has no complete, readable manifest."""


def check_split(name: str) -> str:
    """Return ``name`` if it is a reBEN split, else raise with the fix."""
    if name in SPLITS:
        return name
    hint = f"; the metadata uses {SPLIT_ALIASES[name]!r}" if name in SPLIT_ALIASES else ""
    raise ValueError(f"split {name!r} is unknown{hint} (splits: {', '.join(SPLITS)})")


def shard_extension(compression: str) -> str:
    """File name ending of a shard: ``.tfrecord`` or ``.tfrecord.gz``."""
    return ".tfrecord.gz" if compression == "gzip" else ".tfrecord"


def shard_path(split: str, index: int, count: int, compression: str = "none") -> str:
    """Relative path of a shard: ``<split>/<split>-00000-of-000NN.tfrecord``."""
    return f"{split}/{split}-{index:05d}-of-{count:05d}{shard_extension(compression)}"


def contract(image_dtype: str, compression: str) -> dict:
    """The part of ``dataset.json`` that readers rely on and this package fixes: the feature
    spec, image dtype, compression, band and class tables, ignore index (and, for the raw
    encoding only, ``encoding``: the normalised datasets' manifests stay as they were)."""
    extra = {"encoding": tfrecord.RAW} if image_dtype == tfrecord.RAW else {}
    return {
        **extra,
        "features": [
            {"name": f.name, "kind": f.kind, "shape": list(f.shape), "dtype": f.dtype, "description": f.description}
            for f in tfrecord.features(image_dtype)
        ],
        "image_dtype": image_dtype,
        "compression": compression,
        "bands": {"s2": list(band_table.S2_NAMES), "s1": list(band_table.S1_NAMES)},
        "classes": list(class_table.CLASS_NAMES),
        "class_colors": [list(c) for c in class_table.class_colors()],
        "ignore_index": class_table.IGNORE_INDEX,
    }


# --------------------------------------------------------------------------- the typed layout


@dataclass(frozen=True)
class ShardEntry:
    """One shard as the manifest lists it."""

    path: str
    records: int
    sha256: str
    bytes: int

    def to_dict(self) -> dict:
        """The JSON form."""
        return {"path": self.path, "records": self.records, "sha256": self.sha256, "bytes": self.bytes}


@dataclass(frozen=True)
class ShardRecord:
    """One written shard as the writer reports it: its key, its manifest entry and its sums."""

    split: str
    index: int
    count: int
    path: str
    records: int
    bytes: int
    sha256: str
    class_pixel_counts: tuple[int, ...]
    ignored_pixels: int
    label_disagreements: int
    seconds: float = 0.0

    @classmethod
    def build(
        cls,
        key: tuple[str, int, int],
        compression: str,
        written: Mapping[str, Any],
        label_values: Iterable[int] | None = None,
        label_disagreements: int = 0,
        seconds: float = 0.0,
    ) -> ShardRecord:
        """The record of shard ``key`` = (split, index, count): ``written`` is what
        ``ShardWriter.close`` returns ({records, bytes, sha256}); ``label_values`` the pixel
        count of every label value 0..255 over the shard (``None``: no pixels)."""
        split, index, count = key
        counts = [int(v) for v in label_values] if label_values is not None else [0] * 256
        return cls(
            split,
            index,
            count,
            shard_path(split, index, count, compression),
            int(written["records"]),
            int(written["bytes"]),
            str(written["sha256"]),
            tuple(counts[: class_table.NUM_CLASSES]),
            counts[class_table.IGNORE_INDEX],
            int(label_disagreements),
            float(seconds),
        )

    def entry(self) -> ShardEntry:
        """This shard's entry in the manifest."""
        return ShardEntry(self.path, self.records, self.sha256, self.bytes)


@dataclass(frozen=True)
class SplitEntry:
    """One split's accounting and label sums in the manifest."""

    input: int
    written: int
    failed: int
    shards: tuple[ShardEntry, ...]
    class_pixel_counts: tuple[int, ...]
    ignored_pixels: int
    label_disagreements: int
    class_pixel_frequencies: tuple[float, ...]

    @classmethod
    def build(cls, split: str, selected: int, failed: int, shards: list[ShardRecord]) -> SplitEntry:
        """Sum a split's shard records (sorted by index); raise if written + failed != input."""
        pix = tuple(sum(s.class_pixel_counts[c] for s in shards) for c in range(class_table.NUM_CLASSES))
        ignored = sum(s.ignored_pixels for s in shards)
        total_pix = sum(pix) + ignored
        entry = cls(
            int(selected),
            sum(s.records for s in shards),
            int(failed),
            tuple(s.entry() for s in shards),
            pix,
            ignored,
            sum(s.label_disagreements for s in shards),
            tuple(p / total_pix if total_pix else 0.0 for p in pix),
        )
        if entry.written + entry.failed != entry.input:
            raise RuntimeError(
                f"accounting broken for split {split!r}: written {entry.written} + failed "
                f"{entry.failed} != input {entry.input}"
            )
        return entry

    def to_dict(self) -> dict:
        """The JSON form."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["shards"] = [s.to_dict() for s in self.shards]
        for k in ("class_pixel_counts", "class_pixel_frequencies"):
            d[k] = list(d[k])
        return d


@dataclass(frozen=True)
class Manifest:
    """``dataset.json``, typed: what went in, what came out, what failed, the statistics."""

    schema_version: int
    package_version: str
    created_by: str
    options: dict
    input: dict
    features: list
    image_dtype: str
    compression: str
    bands: dict
    classes: list
    class_colors: list
    ignore_index: int
    statistics: dict
    splits: dict[str, SplitEntry]
    failures: dict
    files: dict
    encoding: str = "normalized"  # written to dataset.json only when it is not the default

    def to_dict(self) -> dict:
        """The JSON form."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["splits"] = {k: v.to_dict() for k, v in self.splits.items()}
        if d["encoding"] == "normalized":
            del d["encoding"]
        return d

    def dumps(self) -> str:
        """Canonical JSON text: what ``dataset.json`` holds."""
        return dumps(self.to_dict())


def split_entries(selected: Mapping[str, int], shards: list[ShardRecord], dead: list[dict]) -> dict[str, SplitEntry]:
    """Every split's entry from the selected-row counts, the shard records (all of them, empty
    ones included) and the dead letters; raises if a split's accounting does not add up."""
    by_split: dict[str, list[ShardRecord]] = {}
    for s in sorted(shards, key=lambda s: (s.split, s.index)):
        by_split.setdefault(s.split, []).append(s)
    failed = Counter(d["split"] for d in dead)
    return {
        split: SplitEntry.build(split, selected.get(split, 0), failed.get(split, 0), by_split.get(split, []))
        for split in sorted(set(selected) | set(by_split) | set(failed))
    }


def build(
    *,
    package_version: str,
    options: dict,
    meta_info: list[dict],
    selected: Mapping[str, int],
    splits: dict[str, SplitEntry],
    dead: list[dict],
    statistics: dict,
    files: dict,
    image_dtype: str,
    compression: str,
    created_by: str = "benbeam convert",
) -> Manifest:
    """The manifest of a conversion from its parts (``splits``: from ``split_entries``)."""
    return Manifest(
        schema_version=SCHEMA_VERSION,
        package_version=package_version,
        created_by=created_by,
        options=options,
        input={"metadata": sorted(meta_info, key=lambda m: m["source"]), "rows_selected": int(sum(selected.values()))},
        **contract(image_dtype, compression),
        statistics=statistics,
        splits=splits,
        failures={
            "total": len(dead),
            "by_stage": dict(sorted(Counter(d["stage"] for d in dead).items())),
            "by_reason": dict(sorted(Counter(d["reason"] for d in dead).items())),
            "file": FAILURES_JSONL,
        },
        files=files,
    )


# --------------------------------------------------------------------------- validation and loading

_NUMBER = (int, float)
_TOP_TYPES = {
    "schema_version": int,
    "package_version": str,
    "created_by": str,
    "options": dict,
    "input": dict,
    "features": list,
    "image_dtype": str,
    "compression": str,
    "bands": dict,
    "classes": list,
    "class_colors": list,
    "ignore_index": int,
    "statistics": dict,
    "splits": dict,
    "failures": dict,
    "files": dict,
}
_SPLIT_TYPES = {
    "input": int,
    "written": int,
    "failed": int,
    "shards": list,
    "class_pixel_counts": list,
    "ignored_pixels": int,
    "label_disagreements": int,
    "class_pixel_frequencies": list,
}
_SHARD_TYPES = {"path": str, "records": int, "sha256": str, "bytes": int}
_TYPE_NAMES = {int: "an integer", str: "a string", dict: "an object", list: "a list", _NUMBER: "a number"}


def _is(value, kind) -> bool:
    return isinstance(value, kind) and not (isinstance(value, bool) and kind in (int, _NUMBER))


def _check_types(obj: dict, types: dict, what: str) -> list[str]:
    return [
        f"{what}{k} is {type(obj[k]).__name__}, not {_TYPE_NAMES[t]}"
        for k, t in types.items()
        if k in obj and not _is(obj[k], t)
    ]


def _check_contract(man: dict) -> list[str]:
    """The parts of the manifest every reader relies on must match this code's schemas."""
    problems = []
    if man["compression"] not in COMPRESSIONS:
        problems.append(f"compression {man['compression']!r} is not one of {COMPRESSIONS}")
    if man["image_dtype"] not in tfrecord.STORED_DTYPES:
        problems.append(f"image_dtype {man['image_dtype']!r} is not one of {tfrecord.STORED_DTYPES}")
    elif tfrecord.encoding_of(man["image_dtype"]) != man.get("encoding", "normalized"):
        problems.append(f"image_dtype {man['image_dtype']!r} contradicts encoding {man.get('encoding')!r}")
    want_bands = {m: list(names) for m, names in band_table.MODALITIES.items()}
    if man["bands"] != want_bands:
        problems.append(f"bands {man['bands']!r} differ from {want_bands!r}")
    if list(man["classes"]) != list(class_table.CLASS_NAMES):
        problems.append("classes differ from the 19 canonical classes (schemas.classes.CLASS_NAMES)")
    if man["ignore_index"] != class_table.IGNORE_INDEX:
        problems.append(f"ignore_index {man['ignore_index']!r} is not {class_table.IGNORE_INDEX}")
    return problems


def path_problem(rel: Any) -> str | None:
    """Why ``rel`` is not a plain relative path inside the dataset folder (None: it is one).
    Every path a manifest lists passes this; readers then resolve it with
    ``transforms.containment.check_relative`` (which also refuses symlinks out of the folder)."""
    if not isinstance(rel, str) or not rel:
        return "is not a non-empty string"
    parts = rel.replace("\\", "/").split("/")
    if "://" in rel or rel.startswith(("/", "\\")) or ":" in parts[0] or "\x00" in rel:
        return f"{rel[:200]!r} is not a relative path inside the dataset"
    if any(s in ("..", ".", "") for s in parts):
        return f"{rel[:200]!r} holds a '..', '.' or empty segment"
    return None


def _path_problems(man: dict) -> list[str]:
    """The paths of shards and files a manifest lists that are not plain relative paths."""
    listed = [
        (f"split {split!r} shard {i} path", sh["path"])
        for split, info in man["splits"].items()
        for i, sh in enumerate(info["shards"])
    ]
    listed.append(("failures.file", man["failures"].get("file", FAILURES_JSONL)))
    listed += [(f"files.{k}", v) for k, v in sorted(man["files"].items()) if v is not None]
    return [f"{what} {p}" for what, rel in listed if (p := path_problem(rel))]


def from_dict(man: Any, where: str = MANIFEST) -> Manifest:
    """Check a parsed ``dataset.json`` (version, required fields, types, accounting, contract)
    and type it; raise ManifestError naming ``where`` and saying what is wrong."""
    if not isinstance(man, dict):
        raise ManifestError(f"{where} is not a JSON object")
    missing = [k for k in REQUIRED_KEYS if k not in man]
    if missing:
        raise ManifestError(f"{where} is incomplete: missing {', '.join(missing)}")
    if man["schema_version"] != SCHEMA_VERSION:
        raise ManifestError(
            f"{where} has schema_version {man['schema_version']!r}; this version of "
            f"bigearthnet-beam reads version {SCHEMA_VERSION}: re-run `benbeam convert`"
        )
    problems = _check_types(man, _TOP_TYPES, "")
    for split, info in man["splits"].items() if isinstance(man["splits"], dict) else ():
        if not isinstance(info, dict):
            problems.append(f"split {split!r} is not an object")
            continue
        gone = [k for k in _SPLIT_TYPES if k not in info]
        if gone:
            problems.append(f"split {split!r} lacks {', '.join(gone)}")
            continue
        problems += _check_types(info, _SPLIT_TYPES, f"split {split!r}: ")
        for i, sh in enumerate(info["shards"] if isinstance(info["shards"], list) else ()):
            if not isinstance(sh, dict) or any(k not in sh for k in _SHARD_TYPES):
                problems.append(f"split {split!r} shard {i} lacks one of {', '.join(_SHARD_TYPES)}")
                break
            problems += _check_types(sh, _SHARD_TYPES, f"split {split!r} shard {i}: ")
    if not problems:
        problems = _path_problems(man)
    if problems:
        raise ManifestError(f"{where} is malformed: " + "; ".join(problems) + " (re-run `benbeam convert`)")
    for split, info in man["splits"].items():
        if info["written"] + info["failed"] != info["input"]:
            raise ManifestError(f"{where}: split {split!r} breaks written + failed = input")
        if sum(s["records"] for s in info["shards"]) != info["written"]:
            raise ManifestError(f"{where}: split {split!r} shard record counts do not add up")
    encoding = man.get("encoding", "normalized")
    if encoding not in tfrecord.ENCODINGS:
        raise ManifestError(
            f"{where} holds records of encoding {encoding!r}, which this version of bigearthnet-beam cannot read "
            f"(it reads {', '.join(tfrecord.ENCODINGS)}): install the version that wrote it "
            f"({man.get('package_version')}) or a newer one"
        )
    problems = _check_contract(man)
    if problems:
        raise ManifestError(
            f"{where} does not match this version of bigearthnet-beam: "
            + "; ".join(problems)
            + ". Re-run `benbeam convert` with this version of bigearthnet-beam"
        )
    splits = {
        name: SplitEntry(
            info["input"],
            info["written"],
            info["failed"],
            tuple(ShardEntry(s["path"], s["records"], s["sha256"], s["bytes"]) for s in info["shards"]),
            tuple(info["class_pixel_counts"]),
            info["ignored_pixels"],
            info["label_disagreements"],
            tuple(info["class_pixel_frequencies"]),
        )
        for name, info in man["splits"].items()
    }
    optional = {"created_by": "", "class_colors": []}  # not required by version 1
    return Manifest(**dict({k: man.get(k, optional.get(k)) for k in _TOP_TYPES}, splits=splits, encoding=encoding))


def validate(manifest: dict, where: str = MANIFEST) -> dict:
    """Check a manifest dict like ``load`` does; return it unchanged (raise ManifestError)."""
    from_dict(manifest, where)
    return manifest


def loads(data: bytes | str, where: str = MANIFEST) -> Manifest:
    """Parse and check the text of a ``dataset.json``; raise ManifestError naming ``where``."""
    try:
        man = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ManifestError(f"{where} is not valid JSON ({e}); re-run `benbeam convert`") from None
    return from_dict(man, where)


def manifest_url(dataset: str) -> str:
    """``<dataset>/dataset.json`` for a local folder or a URL."""
    return f"{str(dataset).rstrip('/')}/{MANIFEST}"


def load(dataset: str, read_bytes: Callable[[str], bytes], hint: str = "") -> tuple[Manifest, bytes]:
    """Read and check ``<dataset>/dataset.json`` with ``read_bytes``; the manifest and its raw
    bytes. Raises ManifestError saying what is wrong (``hint``: what the caller's user does next)."""
    url = manifest_url(dataset)
    try:
        raw = read_bytes(url)
    except FileNotFoundError:
        if "://" not in str(dataset) and not os.path.exists(dataset):
            raise ManifestError(
                f"{dataset} does not exist (no dataset folder there, so no {MANIFEST}){'; ' + hint if hint else ''}"
            ) from None
        raise ManifestError(
            f"{dataset} has no {MANIFEST}, so it is not a complete dataset (`benbeam convert` writes the manifest "
            f"last: an interrupted or still-running conversion has none){'; ' + hint if hint else ''}"
        ) from None
    except IsADirectoryError:
        raise ManifestError(f"{url} is a folder, not the manifest") from None
    return loads(raw, url), raw


def dumps(manifest: dict) -> str:
    """Canonical JSON text (sorted keys) so equal manifests are equal bytes."""
    return json.dumps(manifest, indent=2, sort_keys=True, allow_nan=False) + "\n"
