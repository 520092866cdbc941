"""The last step of ``convert``: dead letters, statistics, TFMD schema and the manifest.

Runs once, inside the pipeline, after every shard is written. ``dataset.json`` is
written last and atomically, so its presence means a complete dataset.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import Counter

from beam_pipeline import __version__
from schemas import bands as B
from schemas import classes as C
from schemas import manifest as M
from schemas import tfrecord as T
from transforms import storage, tfds_meta

LOG = logging.getLogger("benbeam")


def stats_document(extracted: dict, norm: dict, source: str, clip: bool, clip_percentiles) -> dict:
    return {
        "schema_version": M.SCHEMA_VERSION,
        "source": source,
        "split": "train",
        "clip": bool(clip),
        "clip_percentiles": [float(p) for p in clip_percentiles],
        "bands": extracted,
        "normalization": norm,
        "band_order": list(B.ALL_NAMES),
        "pixels": "values on the 10 m grid after resampling (what is normalised)",
    }


def load_stats_document(url: str) -> dict:
    try:
        doc = json.loads(storage.read_bytes(url))
    except FileNotFoundError:
        raise ValueError(f"--stats {url} does not exist") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"--stats {url} is not JSON: {e}") from None
    if "bands" in doc and isinstance(doc["bands"], dict):
        pass
    elif "statistics" in doc:  # a dataset.json
        doc = doc["statistics"]
    missing = [b for b in B.ALL_NAMES if b not in doc.get("bands", {})]
    if missing:
        raise ValueError(f"--stats {url} lacks statistics for band(s) {', '.join(missing)}; "
                         "pass the stats.json written by `benbeam convert`")
    return doc


_SHARD_RE = re.compile(r"^(?P<split>[a-z]+)-\d{5}-of-\d{5}\.tfrecord(\.gz)?$")


def _cleanup(out: str, keep: set[str], splits) -> None:
    """Remove temp files and shards of earlier runs that are not part of this dataset, and
    the temporary files a killed run left at the top (its write probe, half-written JSON)."""
    fs = storage.filesystem(out)
    try:
        top = fs.ls(out, detail=False)
    except FileNotFoundError:
        top = []
    for full in top:
        name = os.path.basename(str(full).rstrip("/"))
        if name.startswith(".tmp-") or name == ".benbeam-write-test":
            try:
                fs.rm(full)
            except (FileNotFoundError, IsADirectoryError):
                pass
    for split in splits:
        d = storage.join(out, split)
        try:
            names = fs.ls(d, detail=False)
        except FileNotFoundError:
            continue
        for full in names:
            name = os.path.basename(str(full).rstrip("/"))
            rel = f"{split}/{name}"
            if name.startswith(".tmp-") or (_SHARD_RE.match(name) and rel not in keep):
                try:
                    fs.rm(full)
                except FileNotFoundError:
                    pass


def _fsync_local(out: str, rels: list[str]) -> None:
    """Flush our files (and their folders) to disk before the manifest that vouches for
    them: shards are not fsynced one by one while written, only here, once."""
    dirs = {out}
    for rel in rels:
        path = os.path.join(out, rel)
        if os.path.exists(path):
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            dirs.add(os.path.dirname(path))
    for d in sorted(dirs):
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def finalize(_, *, out, options, shards, dead, selected, stats_doc, histogram_npz, meta_info, compression,
             image_dtype):
    """Write failures.jsonl, stats.json, histograms.npz, schema.pbtxt, then dataset.json."""
    from transforms.encode import ShardWriter

    shards = sorted(shards, key=lambda s: (s["split"], s["index"]))
    dead = sorted(dead, key=lambda d: (d["patch_id"], d["stage"], d["reason"], d["detail"]))

    # Shards that received no patch at all still exist (empty), so names stay of-N complete.
    by_split: dict[str, list] = {}
    for s in shards:
        by_split.setdefault(s["split"], []).append(s)
    for split, lst in list(by_split.items()):
        count = lst[0]["count"]
        have = {s["index"] for s in lst}
        for i in range(count):
            if i not in have:
                rel = M.shard_path(split, i, count, compression)
                with ShardWriter(storage.join(out, rel), compression) as w:
                    info = w.close()
                lst.append({"split": split, "index": i, "count": count, "path": rel, "records": 0,
                            "bytes": info["bytes"], "sha256": info["sha256"],
                            "class_pixel_counts": [0] * C.NUM_CLASSES, "ignored_pixels": 0,
                            "label_disagreements": 0, "seconds": 0.0})
        lst.sort(key=lambda s: s["index"])

    failed_by_split = Counter(d["split"] for d in dead)
    splits = {}
    for split in sorted(set(selected) | set(by_split) | set(failed_by_split)):
        lst = by_split.get(split, [])
        pix = [sum(s["class_pixel_counts"][c] for s in lst) for c in range(C.NUM_CLASSES)]
        entry = {
            "input": int(selected.get(split, 0)),
            "written": sum(s["records"] for s in lst),
            "failed": int(failed_by_split.get(split, 0)),
            "shards": [{"path": s["path"], "records": s["records"], "sha256": s["sha256"], "bytes": s["bytes"]}
                       for s in lst],
            "class_pixel_counts": pix,
            "ignored_pixels": sum(s["ignored_pixels"] for s in lst),
            "label_disagreements": sum(s["label_disagreements"] for s in lst),
        }
        total_pix = sum(pix) + entry["ignored_pixels"]
        entry["class_pixel_frequencies"] = [p / total_pix if total_pix else 0.0 for p in pix]
        if entry["written"] + entry["failed"] != entry["input"]:
            raise RuntimeError(f"accounting broken for split {split!r}: written {entry['written']} + failed "
                               f"{entry['failed']} != input {entry['input']}")
        splits[split] = entry

    lines = "".join(json.dumps(d, sort_keys=True, ensure_ascii=True) + "\n" for d in dead)
    storage.write_bytes_atomic(storage.join(out, M.FAILURES_JSONL), lines.encode())
    storage.write_bytes_atomic(storage.join(out, M.STATS_JSON), (json.dumps(stats_doc, indent=2, sort_keys=True) + "\n").encode())
    files = {"stats": M.STATS_JSON, "failures": M.FAILURES_JSONL, "tfmd_schema": M.TFMD_SCHEMA}
    if histogram_npz:
        storage.write_bytes_atomic(storage.join(out, M.HISTOGRAMS_NPZ), histogram_npz)
        files["histograms"] = M.HISTOGRAMS_NPZ
    try:
        from google.protobuf import text_format

        storage.write_bytes_atomic(storage.join(out, M.TFMD_SCHEMA),
                                   text_format.MessageToString(T.tfmd_schema(image_dtype)).encode())
    except ImportError:  # tensorflow-metadata missing on a worker: the manifest still describes the features
        files.pop("tfmd_schema")

    keep = {sh["path"] for e in splits.values() for sh in e["shards"]}
    _cleanup(out, keep, [s for s in splits if s in M.SPLITS])

    manifest = {
        "schema_version": M.SCHEMA_VERSION,
        "package_version": __version__,
        "created_by": "benbeam convert",
        "options": options,
        "input": {"metadata": sorted(meta_info, key=lambda m: m["source"]),
                  "rows_selected": int(sum(selected.values()))},
        **M.contract(image_dtype, compression),
        "statistics": stats_doc,
        "splits": splits,
        "failures": {
            "total": len(dead),
            "by_stage": dict(sorted(Counter(d["stage"] for d in dead).items())),
            "by_reason": dict(sorted(Counter(d["reason"] for d in dead).items())),
            "file": M.FAILURES_JSONL,
        },
        "files": files,
    }
    M.validate(manifest)
    tfds_files = tfds_meta.write(out, manifest)  # derived from the manifest, written before it
    if not storage.is_remote(out):
        _fsync_local(out, sorted(keep) + [M.FAILURES_JSONL, M.STATS_JSON] + tfds_files)
    storage.write_bytes_atomic(storage.join(out, M.MANIFEST), M.dumps(manifest).encode())
    LOG.info("wrote %s", storage.join(out, M.MANIFEST))
    return manifest["failures"]["total"]
