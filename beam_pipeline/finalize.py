"""The last step of ``convert``: dead letters, statistics, TFMD schema and the manifest.

Runs once, inside the pipeline, after every shard is written. ``dataset.json`` is
written last and atomically, so its presence means a complete dataset.
"""

from __future__ import annotations

import json
import logging
import os
import re

from bigearthnet_beam.beam_pipeline import __version__
from bigearthnet_beam.schemas import bands as band_table
from bigearthnet_beam.schemas import manifest as manifest_schema
from bigearthnet_beam.schemas import tfrecord
from bigearthnet_beam.transforms import storage, tfds_meta

LOG = logging.getLogger("benbeam")


def load_stats_document(url: str, st: storage.Storage | None = None) -> dict:
    """The statistics ``--stats`` names: a ``stats.json``, or the ``dataset.json`` of an earlier
    run (checked like every manifest). Raises ValueError saying what is wrong."""
    try:
        doc = json.loads((st or storage.Storage()).read_bytes(url))
    except FileNotFoundError:
        raise ValueError(f"--stats {url} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"--stats {url} is not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise ValueError(f"--stats {url} is not a JSON object; pass the stats.json written by `benbeam convert`")
    if "splits" in doc and "statistics" in doc:  # a dataset.json
        try:
            doc = manifest_schema.from_dict(doc, url).statistics
        except manifest_schema.ManifestError as e:
            raise ValueError(f"--stats: {e}") from None
    bands = doc.get("bands")
    missing = [b for b in band_table.ALL_NAMES if not isinstance(bands, dict) or b not in bands]
    if missing:
        raise ValueError(
            f"--stats {url} lacks statistics for band(s) {', '.join(missing)}; "
            "pass the stats.json written by `benbeam convert`"
        )
    return doc


_SHARD_RE = re.compile(r"^(?P<split>[a-z]+)-\d{5}-of-\d{5}\.tfrecord(\.gz)?$")


def _cleanup(out: str, keep: set[str], splits, st: storage.Storage) -> None:
    """Remove temp files and shards of earlier runs that are not part of this dataset, and
    the temporary files a killed run left at the top (its write probe, half-written JSON)."""
    fs = st.filesystem(out)
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


def _with_empty_shards(
    out: str, shards: list[manifest_schema.ShardRecord], compression: str, st: storage.Storage
) -> list[manifest_schema.ShardRecord]:
    """Shards that received no patch at all still exist (empty), so names stay of-N complete."""
    from bigearthnet_beam.transforms.encode import ShardWriter

    have = {(s.split, s.index) for s in shards}
    counts = {s.split: s.count for s in shards}  # the same for every shard of a split
    complete = list(shards)
    for split, count in sorted(counts.items()):
        for i in range(count):
            if (split, i) not in have:
                with ShardWriter(
                    storage.join(out, manifest_schema.shard_path(split, i, count, compression)), compression, st
                ) as w:
                    info = w.close()
                complete.append(manifest_schema.ShardRecord.build((split, i, count), compression, info))
    return sorted(complete, key=lambda s: (s.split, s.index))


def finalize(
    _, *, out, options, shards, dead, selected, stats_doc, histogram_npz, meta_info, compression, image_dtype, st=None
):
    """Write failures.jsonl, stats.json, histograms.npz, schema.pbtxt, then dataset.json (under
    ``st``); returns the manifest dict."""
    st = st if st is not None else storage.Storage()
    shards = _with_empty_shards(out, list(shards), compression, st)
    dead = sorted(dead, key=lambda d: (d["patch_id"], d["stage"], d["reason"], d["detail"]))
    splits = manifest_schema.split_entries(
        selected, shards, dead
    )  # raises if the accounting is broken, before any write

    lines = "".join(json.dumps(d, sort_keys=True, ensure_ascii=True) + "\n" for d in dead)
    st.write_bytes_atomic(storage.join(out, manifest_schema.FAILURES_JSONL), lines.encode())
    st.write_bytes_atomic(
        storage.join(out, manifest_schema.STATS_JSON), (json.dumps(stats_doc, indent=2, sort_keys=True) + "\n").encode()
    )
    files = {
        "stats": manifest_schema.STATS_JSON,
        "failures": manifest_schema.FAILURES_JSONL,
        "tfmd_schema": manifest_schema.TFMD_SCHEMA,
    }
    if histogram_npz:
        st.write_bytes_atomic(storage.join(out, manifest_schema.HISTOGRAMS_NPZ), histogram_npz)
        files["histograms"] = manifest_schema.HISTOGRAMS_NPZ
    try:
        from google.protobuf import text_format

        st.write_bytes_atomic(
            storage.join(out, manifest_schema.TFMD_SCHEMA),
            text_format.MessageToString(tfrecord.tfmd_schema(image_dtype)).encode(),
        )
    except ImportError:  # tensorflow-metadata missing on a worker: the manifest still describes the features
        files.pop("tfmd_schema")

    keep = {sh.path for e in splits.values() for sh in e.shards}
    _cleanup(out, keep, [s for s in splits if s in manifest_schema.SPLITS], st)

    manifest = manifest_schema.build(
        package_version=__version__,
        options=options,
        meta_info=meta_info,
        selected=selected,
        splits=splits,
        dead=dead,
        statistics=stats_doc,
        files=files,
        image_dtype=image_dtype,
        compression=compression,
    )
    text = manifest.dumps()
    manifest_schema.loads(text)  # what is written passes what every reader checks
    tfds_files = tfds_meta.write(out, json.loads(text), st)  # derived from the manifest, written before it
    if not storage.is_remote(out):
        _fsync_local(out, sorted(keep) + [manifest_schema.FAILURES_JSONL, manifest_schema.STATS_JSON] + tfds_files)
    st.write_bytes_atomic(storage.join(out, manifest_schema.MANIFEST), text.encode())
    LOG.info("wrote %s", storage.join(out, manifest_schema.MANIFEST))
    return json.loads(text)
