"""Per-shard *packs*: where a conversion from the archives puts each shard's members, and the
object source that reads them back (plain Python, no Beam).

Format: records ``b"bbp1" | u32 name length | u64 data length | name (UTF-8) | data``
(little-endian), one after the other; a later record of the same name wins (as a later
member of a tar archive does when it is extracted). On local disk each (shard, archive,
attempt) is one file, appended to; in a bucket each flush is one more part object. Packs of
an archive's attempt are valid only once that attempt's commit marker exists, so a retried
read never mixes with the half-written packs of a failed one.
"""

from __future__ import annotations

import json
import os
import struct
import threading
import uuid
from dataclasses import dataclass, field
from typing import Iterator, Union

from bigearthnet_beam.schemas.naming import OBJECT_KEYS, relative_paths
from bigearthnet_beam.transforms import storage

PACK_BUFFER_BYTES = 64 << 20  # member bytes held in memory before the largest shard buffer is flushed
_REC = struct.Struct("<4sIQ")
_MAGIC = b"bbp1"
COMMITS = "_commits"


def new_pack_dir(out: str) -> str:
    """A fresh folder (or prefix) for a conversion's packs, below its output."""
    return storage.join(out, f".benbeam-packs-{uuid.uuid4().hex[:12]}")


def shard_dir(home) -> str:
    """Folder name of a shard key ``(split, index, count)``."""
    split, index, count = home
    return f"{split}-{index:05d}-of-{count:05d}"


def encode_record(name: str, data: bytes) -> bytes:
    """One pack record: header (magic, name and data lengths), name, data."""
    raw = name.encode()
    return _REC.pack(_MAGIC, len(raw), len(data)) + raw + data


def decode_records(blob: bytes, source: str = "pack") -> Iterator[tuple[str, bytes]]:
    """The (name, data) records of a pack file's bytes; ValueError on a damaged pack."""
    view = memoryview(blob)
    pos = 0
    while pos < len(blob):
        if pos + _REC.size > len(blob):
            raise ValueError(f"pack {source} is damaged at byte {pos}: a record header is cut off")
        magic, n, size = _REC.unpack_from(blob, pos)
        if magic != _MAGIC:
            raise ValueError(f"pack {source} is damaged at byte {pos}: bad record marker {magic!r}")
        start = pos + _REC.size
        end = start + n + size
        if end > len(blob):
            raise ValueError(f"pack {source} is damaged at byte {pos}: a record is cut off")
        yield bytes(view[start : start + n]).decode(), bytes(view[start + n : end])
        pos = end


@dataclass
class PackWriter:
    """Appends archive members to per-shard packs under ``pack_dir``, for one archive
    (``tag``) and one attempt. Member bytes are buffered up to ``buffer_bytes`` in all; then
    the largest shard buffer is written out (appended to the shard's local pack file, or
    PUT as the next part object in a bucket)."""

    pack_dir: str
    tag: str
    buffer_bytes: int = PACK_BUFFER_BYTES
    attempt: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    storage: storage.Storage = storage.Storage()

    def __post_init__(self):
        self._bufs: dict[tuple, list[bytes]] = {}
        self._sizes: dict[tuple, int] = {}
        self._held = 0
        self._parts: dict[tuple, int] = {}
        self.records = 0
        self.bytes = 0
        self.files_written = 0

    def _path(self, home, part: int) -> str:
        base = storage.join(self.pack_dir, shard_dir(home))
        if storage.is_remote(self.pack_dir):
            return storage.join(base, f"{self.tag}-{self.attempt}-{part:06d}.pack")
        return os.path.join(base, f"{self.tag}-{self.attempt}.pack")

    def add(self, home, name: str, data: bytes) -> None:
        """Buffer one member for shard ``home``; write out the largest buffers while over ``buffer_bytes``."""
        rec = encode_record(name, data)
        self._bufs.setdefault(home, []).append(rec)
        self._sizes[home] = self._sizes.get(home, 0) + len(rec)
        self._held += len(rec)
        self.records += 1
        self.bytes += len(data)
        while self._held > self.buffer_bytes:
            self._flush(max(self._sizes, key=self._sizes.get))

    def _flush(self, home) -> None:
        blob = b"".join(self._bufs.pop(home))
        self._held -= self._sizes.pop(home)
        part = self._parts.get(home, 0)
        self._parts[home] = part + 1
        path = self._path(home, part)
        if storage.is_remote(self.pack_dir):
            self.storage.write_bytes_atomic(path, blob)
        else:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "ab") as fh:
                fh.write(blob)
        self.files_written += 1

    def commit(self) -> dict:
        """Write every buffer out, then this attempt's commit marker; returns a summary."""
        for home in list(self._bufs):
            self._flush(home)
        summary = {
            "archive": self.tag,
            "attempt": self.attempt,
            "records": self.records,
            "bytes": self.bytes,
            "shards": len(self._parts),
            "writes": self.files_written,
        }
        self.storage.write_bytes_atomic(
            storage.join(self.pack_dir, COMMITS, f"{self.tag}.json"),
            (json.dumps(summary, sort_keys=True) + "\n").encode(),
        )
        return summary


# --------------------------------------------------------------------------- reading packs


class _PackFS:
    """The minimal filesystem ``transforms.patch.fetch_objects`` needs, over one patch's
    objects (``{url: bytes or None}``): a missing object is a FileNotFoundError."""

    def __init__(self, objects: dict[str, bytes | None]):
        self.objects = objects

    def cat_file(self, url: str, start: int | None = None, end: int | None = None) -> bytes:
        """One object's bytes ``[start:end]`` (fsspec's signature); FileNotFoundError when missing."""
        v = self.objects.get(url)
        if v is None:
            raise FileNotFoundError(url)
        return v[start:end]

    def cat(self, urls, on_error="return", start: int | None = None, end: int | None = None):
        """Several objects' bytes ``[start:end]`` by URL; a missing one maps to a FileNotFoundError."""
        return {
            u: (self.objects[u][start:end] if self.objects.get(u) is not None else FileNotFoundError(u)) for u in urls
        }


def committed_attempts(pack_dir: str, st: storage.Storage | None = None) -> dict[str, str]:
    """Archive tag -> the attempt whose packs are valid."""
    st = st if st is not None else storage.Storage()
    out = {}
    url = storage.join(pack_dir, COMMITS)
    try:
        names = sorted(str(p) for p in st.filesystem(url).ls(url, detail=False))
    except FileNotFoundError:
        return out
    for full in names:
        base = full.rstrip("/").rsplit("/", 1)[-1]
        if base.endswith(".json"):
            out[base[: -len(".json")]] = json.loads(st.read_bytes(storage.join(url, base)))["attempt"]
    return out


def _scan_local(path: str) -> Iterator[tuple[str, int, int]]:
    """(name, data offset, size) of each record of a local pack file, reading only the headers."""
    with open(path, "rb") as fh:
        end = os.fstat(fh.fileno()).st_size
        pos = 0
        while pos < end:
            head = fh.read(_REC.size)
            if len(head) < _REC.size:
                raise ValueError(f"pack {path} is damaged at byte {pos}: a record header is cut off")
            magic, n, size = _REC.unpack(head)
            if magic != _MAGIC:
                raise ValueError(f"pack {path} is damaged at byte {pos}: bad record marker {magic!r}")
            name = fh.read(n).decode()
            start = pos + _REC.size + n
            if start + size > end:
                raise ValueError(f"pack {path} is damaged at byte {pos}: a record is cut off")
            yield name, start, size
            pos = start + size
            fh.seek(pos)


Location = Union[bytes, tuple[str, int, int]]  # the bytes (remote packs), or (local pack file, offset, size)


def shard_index(
    pack_dir: str, home, attempts: dict[str, str], st: storage.Storage | None = None
) -> dict[str, Location]:
    """Member path -> where its bytes are, for every member routed to shard ``home`` (committed
    attempts only; a later record of a name wins). Local packs are indexed by their headers
    (their data is read when needed); remote pack parts are read whole."""
    st = st if st is not None else storage.Storage()
    d = storage.join(pack_dir, shard_dir(home))
    fs = st.filesystem(d)
    try:
        names = sorted(str(p) for p in fs.ls(d, detail=False))
    except FileNotFoundError:
        return {}
    wanted = tuple(f"{tag}-{att}" for tag, att in attempts.items())
    out: dict[str, Location] = {}
    for full in names:
        base = full.rstrip("/").rsplit("/", 1)[-1]
        if not base.endswith(".pack") or not base.startswith(wanted):
            continue
        if storage.is_remote(d):
            url = full if "://" in full else f"{storage.protocol(d)}://{full}"
            out.update(decode_records(st.read_bytes(url), url))
        else:
            out.update((name, (full, off, size)) for name, off, size in _scan_local(full))
    return out


def _resolve(loc: Location) -> bytes:
    if isinstance(loc, bytes):
        return loc
    path, off, size = loc
    with open(path, "rb") as fh:
        fh.seek(off)
        return fh.read(size)


def read_shard_objects(
    pack_dir: str, home, attempts: dict[str, str], st: storage.Storage | None = None
) -> dict[str, bytes]:
    """Member path -> bytes, for every member routed to shard ``home`` (committed attempts only)."""
    return {k: _resolve(v) for k, v in shard_index(pack_dir, home, attempts, st).items()}


@dataclass(frozen=True)
class PackObjects:
    """The object source of a conversion from archives: a shard's objects come from its packs."""

    pack_dir: str
    storage: storage.Storage = storage.Storage()

    def shard(self, home) -> ShardObjects:
        """The object source of shard ``home``."""
        return ShardObjects(self.pack_dir, tuple(home), self.storage)


class ShardObjects:
    """``fetch(rec)`` -> the 15 objects of one record of this shard, from its packs (indexed on
    first use); missing or empty objects raise PatchError exactly as for files."""

    def __init__(self, pack_dir: str, home: tuple, st: storage.Storage | None = None):
        self.pack_dir = pack_dir
        self.home = home
        self.storage = st if st is not None else storage.Storage()
        self._index: dict[str, Location] | None = None
        self._lock = threading.Lock()

    def _load(self) -> dict[str, Location]:
        with self._lock:
            if self._index is None:
                attempts = committed_attempts(self.pack_dir, self.storage)
                self._index = shard_index(self.pack_dir, self.home, attempts, self.storage)
            return self._index

    def __call__(self, rec: dict) -> dict[str, bytes]:
        """The 15 objects of ``rec``, by URL, from this shard's packs; PatchError when missing or empty."""
        from bigearthnet_beam.transforms import metadata as md
        from bigearthnet_beam.transforms.patch import fetch_objects

        index = self._load()
        urls = md.record_urls(rec)
        rel = relative_paths(rec["patch_id"], rec["s1_name"])
        found = {urls[k]: (_resolve(index[rel[k]]) if rel[k] in index else None) for k in OBJECT_KEYS}
        return fetch_objects(urls, fs=_PackFS(found))


def remove_packs(pack_dir: str, st: storage.Storage | None = None) -> None:
    """Delete a conversion's packs (a missing folder is fine; a failure is logged, not raised)."""
    import logging
    import shutil

    try:
        if storage.is_remote(pack_dir):
            fs = (st if st is not None else storage.Storage()).filesystem(pack_dir)
            fs.invalidate_cache()
            files = fs.find(pack_dir)
            if files:
                fs.rm(files)
        else:
            shutil.rmtree(pack_dir, ignore_errors=True)
    except Exception as e:  # noqa: BLE001 - the dataset is complete (or the run failed already)
        logging.getLogger("benbeam").warning(
            "could not remove the archive packs %s (%s: %s); delete them by hand", pack_dir, type(e).__name__, e
        )
