"""Reading the official reBEN archives (``BigEarthNet-S2.tar.zst``, ``BigEarthNet-S1.tar.zst``,
``Reference_Maps.tar.zst``) as streams, and the per-shard *packs* a conversion routes their
members into. Plain Python (no Beam).

An archive is read once, front to back, through one zstd decompression stream and
``tarfile``'s header parser: only the current member is ever in memory, nothing is
extracted. Each regular file is routed by its patch folder's name (a patch id, or an S1
name) to the shard(s) whose patches use it (the plan's rule, ``transforms.plan``) and
appended to that shard's pack. A shard's stages then read its objects from its packs.

The packs (their format, writer and reader) are ``transforms.archive_packs``.

Errors: a truncated or corrupt archive raises ``ArchiveError`` naming the archive and the
byte offset (in the compressed file, and in the tar stream) where reading failed.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from bigearthnet_beam.schemas import errors
from bigearthnet_beam.schemas.naming import MAP_DIR, S1_DIR, S2_DIR
from bigearthnet_beam.transforms import storage
from bigearthnet_beam.transforms.archive_packs import PACK_BUFFER_BYTES, PackWriter

# The archives of a reBEN release: the folder each holds (its members' first path component).
ARCHIVES: tuple[tuple[str, str], ...] = (
    (S2_DIR, f"{S2_DIR}.tar.zst"),
    (S1_DIR, f"{S1_DIR}.tar.zst"),
    (MAP_DIR, f"{MAP_DIR}.tar.zst"),
)
ARCHIVE_OF: dict[str, str] = dict(ARCHIVES)
READ_CHUNK = 1 << 20  # compressed bytes read per call (1 MiB)


class ArchiveError(errors.IntegrityError):
    """A truncated or corrupt archive: the message names the archive and the byte offset."""


def archive_urls(location: str) -> dict[str, str]:
    """The URL of each archive (by folder) in the folder or bucket prefix ``location``."""
    return {folder: storage.join(location, name) for folder, name in ARCHIVES}


def check_archives(location: str, st: storage.Storage | None = None) -> dict[str, str]:
    """The archives' URLs; ValueError naming those that do not exist (under ``st``)."""
    urls = archive_urls(location)
    st = st if st is not None else storage.Storage()
    absent = [u for u in urls.values() if not st.exists(u)]
    if absent:
        raise ValueError(
            f"archive(s) not found: {', '.join(absent)}; --archives names the folder or bucket prefix "
            f"holding {', '.join(n for _, n in ARCHIVES)}"
        )
    return urls


# --------------------------------------------------------------------------- streaming


class _ZstdStream(io.RawIOBase):
    """A read-only, forward-only file over the decompressed bytes of a (multi-frame) zstd
    file; raises ArchiveError on corrupt data and when the file ends inside a frame."""

    def __init__(self, fh, name: str):
        import zstandard

        self._zstd = zstandard
        self._fh = fh
        self.name = name
        self.compressed_pos = 0  # compressed bytes consumed
        self._pos = 0  # decompressed bytes returned
        self._buf = b""  # decompressed bytes, returned from ``_off`` on
        self._off = 0
        self._dobj = zstandard.ZstdDecompressor().decompressobj()
        self._frame_open = False  # some input of the current frame was fed
        self._eof = False

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def _fill(self) -> bool:
        """Decompress more; False at the clean end of the file."""
        while not self._buf:
            if self._eof:
                return False
            chunk = self._fh.read(READ_CHUNK)
            if not chunk:
                self._eof = True
                if self._frame_open:
                    raise ArchiveError(
                        f"archive {self.name} is truncated: it ends inside a zstd frame at byte "
                        f"{self.compressed_pos} of the compressed file (tar stream offset "
                        f"{self._pos}); download it again and compare its checksum"
                    )
                return False
            self._feed(chunk)
        return True

    def _feed(self, chunk: bytes) -> None:
        while chunk:
            try:
                out = self._dobj.decompress(chunk)
            except self._zstd.ZstdError as e:
                raise ArchiveError(
                    f"archive {self.name} is corrupt near byte {self.compressed_pos} of the compressed "
                    f"file (tar stream offset {self._pos}): zstd: {e}; download it again"
                ) from None
            self._frame_open = True
            if out:
                self._buf = self._buf + out if self._buf else out
            if self._dobj.eof:  # a frame ended: the rest of the chunk starts the next one
                rest = self._dobj.unused_data
                self.compressed_pos += len(chunk) - len(rest)
                self._dobj = self._zstd.ZstdDecompressor().decompressobj()
                self._frame_open = False
                chunk = rest
            else:
                self.compressed_pos += len(chunk)
                chunk = b""

    def read(self, size: int = -1) -> bytes:
        parts = []
        want = size if size is not None and size >= 0 else None
        while want is None or want > 0:
            if self._off == len(self._buf):
                self._buf, self._off = b"", 0
                if not self._fill():
                    break
            end = len(self._buf) if want is None else min(len(self._buf), self._off + want)
            parts.append(self._buf[self._off : end])  # copies only what is returned
            if want is not None:
                want -= end - self._off
            self._off = end
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        self._pos += len(data)
        return data

    def readinto(self, b) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)


@dataclass
class Member:
    """One regular file of an archive: its path (without a leading ``./``), size and bytes."""

    name: str
    size: int
    data: bytes | None  # None when read without data


def _open(url: str, st: storage.Storage | None = None):
    if storage.is_remote(url):
        fs = (st if st is not None else storage.Storage()).filesystem(url)
        return fs.open(url, "rb", block_size=8 << 20, cache_type="readahead")
    return open(url, "rb")


def iter_members(url: str, read_data: bool = True, fh=None, st: storage.Storage | None = None) -> Iterator[Member]:
    """Every regular file of the ``.tar.zst`` at ``url``, in archive order, streamed; raises
    ArchiveError (archive and byte offset) on truncation or corruption. Directories, links
    and other member types are skipped."""
    own = fh is None
    fh = _open(url, st) if own else fh
    try:
        z = _ZstdStream(fh, url)
        yield from _members(z, url, read_data)
    finally:
        if own:
            fh.close()


def _where(z: _ZstdStream, tar_offset: int) -> str:
    return f"at tar offset {tar_offset} (byte {z.compressed_pos} of the compressed file)"


def _members(z: _ZstdStream, url: str, read_data: bool) -> Iterator[Member]:
    try:
        tf = tarfile.open(fileobj=z, mode="r|")
    except tarfile.ReadError as e:
        raise ArchiveError(f"archive {url} is not a tar archive {_where(z, 0)}: {e}") from None
    info = tf.firstmember
    if info is None:
        raise ArchiveError(f"archive {url} holds no members {_where(z, 0)}")
    stream = tf.fileobj  # tarfile's forward-only stream over ``z``
    while True:
        if info.isreg():
            stream.seek(info.offset_data)
            name = info.name.removeprefix("./")
            if read_data:
                data = stream.read(info.size)
                if len(data) != info.size:
                    raise ArchiveError(
                        f"archive {url} is truncated {_where(z, info.offset_data + len(data))}: member "
                        f"{info.name} has {len(data)} of its {info.size} bytes; download it again"
                    )
                yield Member(name, info.size, data)
            else:
                yield Member(name, info.size, None)
        stream.seek(tf.offset)
        header_at = tf.offset
        try:
            info = tarfile.TarInfo.fromtarfile(tf)
        except tarfile.EOFHeaderError:
            # End of archive: a zero block, then (GNU and POSIX) a second one and zero padding.
            rest = stream.read(tarfile.BLOCKSIZE)
            if len(rest) < tarfile.BLOCKSIZE or rest.count(0) != len(rest):
                raise ArchiveError(
                    f"archive {url} is truncated or corrupt {_where(z, header_at)}: the end-of-archive "
                    "marker is incomplete; download it again"
                ) from None
            while True:
                tail = stream.read(READ_CHUNK)
                if not tail:
                    return
                if tail.count(0) != len(tail):
                    raise ArchiveError(
                        f"archive {url} is corrupt {_where(z, header_at)}: data after the end-of-archive marker"
                    ) from None
        except (tarfile.EmptyHeaderError, tarfile.TruncatedHeaderError):
            raise ArchiveError(
                f"archive {url} is truncated {_where(z, header_at)}: it ends where a member header "
                "or the end-of-archive marker should be; download it again"
            ) from None
        except tarfile.HeaderError as e:  # a bad checksum, or a cut-off GNU/pax extended header
            raise ArchiveError(
                f"archive {url} is truncated or corrupt {_where(z, header_at)}: {e}; download it again"
            ) from None


# --------------------------------------------------------------------------- routing


def patch_folder(name: str) -> str | None:
    """The patch folder (patch id or S1 name) of a member ``<dir>/<tile or scene>/<folder>/<file>``."""
    parts = name.split("/")
    return parts[2] if len(parts) == 4 else None


@dataclass
class Router:
    """Patch folder name -> the shards (indices into ``homes``) whose patches read it."""

    homes: list[tuple]
    names: np.ndarray  # sorted bytes
    targets: np.ndarray  # int32, aligned with names

    @classmethod
    def from_plan(cls, plan, folder: str) -> Router:
        """The router of an archive (its ``folder``: S2, S1 or reference maps) over ``plan``'s rows."""
        from bigearthnet_beam.transforms.plan import INVALID

        column = "s1_name" if folder == S1_DIR else "patch_id"
        homes = [h for h in plan.homes() if h != INVALID]
        names, targets = [], []
        for i, home in enumerate(homes):
            for row in plan.rows_of(home):
                v = row.get(column)
                if isinstance(v, str):
                    names.append(v.encode())
                    targets.append(i)
        arr = np.array(names, dtype=bytes) if names else np.array([], dtype="S1")
        order = np.argsort(arr, kind="stable")
        return cls(homes, arr[order], np.array(targets, dtype=np.int32)[order])

    def route(self, folder_name: str) -> list[int]:
        """Indices of the shards whose patches read the folder ``folder_name`` (sorted; empty if none)."""
        raw = folder_name.encode()
        if not self.names.size or len(raw) > self.names.dtype.itemsize:  # longer than every known name
            return []
        lo = int(np.searchsorted(self.names, raw, side="left"))
        hi = int(np.searchsorted(self.names, raw, side="right"))
        return sorted(set(self.targets[lo:hi].tolist()))


def split_archive(
    url: str,
    folder: str,
    router: Router,
    pack_dir: str,
    buffer_bytes: int = PACK_BUFFER_BYTES,
    st: storage.Storage | None = None,
) -> dict:
    """Stream one archive into per-shard packs; returns counts (members, routed, unrouted)."""
    st = st if st is not None else storage.Storage()
    writer = PackWriter(pack_dir, folder, buffer_bytes, storage=st)
    members = unrouted = 0
    last, targets = None, []
    for m in iter_members(url, st=st):
        members += 1
        pf = patch_folder(m.name)
        if pf is None or not m.name.startswith(folder + "/"):
            unrouted += 1
            continue
        if pf != last:  # the members of a patch folder are contiguous in a tar archive
            last, targets = pf, router.route(pf)
        if not targets:
            unrouted += 1
            continue
        for t in targets:
            writer.add(router.homes[t], m.name, m.data)
    summary = writer.commit()
    summary.update(members=members, unrouted=unrouted, url=url)
    return summary
