"""Write a replica's folders additionally as official-style reBEN archives:
``BigEarthNet-S2.tar.zst``, ``BigEarthNet-S1.tar.zst`` and ``Reference_Maps.tar.zst`` beside
the folders (the test input of ``benbeam convert --archives``).

What is known of the official archives: one ``.tar.zst`` per top folder, whose members
carry the folder itself as first path component (``BigEarthNet-S2/<tile>/<patch>/<file>``).
What is assumed (not documented by the release): the archives were made like
``tar -cf - BigEarthNet-S2 | zstd``, i.e. members in depth-first order, folder by folder,
each directory's entry before its contents; we sort names within a directory (GNU tar
``--sort=name``; plain tar uses the file system's order, which is also folder by folder).
GNU tar format (GNU tar's default), regular files and directories only, one zstd frame. Owner, group and
times are fixed so that the archives are byte-reproducible. The reader
(``transforms.archives``) depends on none of these assumptions except the folder prefix:
it accepts any member order, with or without directory entries or a ``./`` prefix, and
several zstd frames.
"""

from __future__ import annotations

import io
import tarfile

from bigearthnet_beam.transforms import storage
from bigearthnet_beam.transforms.archives import ARCHIVES

MTIME = 1_700_000_000  # fixed modification time of every member (2023-11-14)
LEVEL = 3  # zstd's default level


def _entries(out: str, folder: str, st: storage.Storage) -> list[tuple[str, bool]]:
    """(relative path, is_dir) below ``out`` for ``folder``, depth-first, names sorted per directory."""
    top = storage.join(out, folder)
    fs = st.filesystem(top)
    prefix = top.split("://", 1)[-1].rstrip("/") if storage.is_remote(top) else top.rstrip("/")
    files = []
    for full in fs.find(top, detail=False):
        full = str(full)
        if not storage.is_remote(top):
            import os

            full = os.path.abspath(full)
            prefix = os.path.abspath(prefix)
        files.append(folder + full[len(prefix) :].replace("\\", "/"))
    dirs = {folder}
    for f in files:
        parts = f.split("/")
        for i in range(1, len(parts)):
            dirs.add("/".join(parts[:i]))
    entries = [(d, True) for d in dirs] + [(f, False) for f in files]
    # Sorting by path components puts each directory right before its contents, folder by folder.
    return sorted(entries, key=lambda e: e[0].split("/"))


def _info(name: str, is_dir: bool, size: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name + ("/" if is_dir else ""))
    info.type = tarfile.DIRTYPE if is_dir else tarfile.REGTYPE
    info.mode = 0o755 if is_dir else 0o644
    info.size = size
    info.mtime = MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def write_archive(out: str, folder: str, name: str, st: storage.Storage | None = None) -> dict:
    """Archive ``out/folder`` as ``out/name`` (streamed: one member in memory at a time), under ``st``."""
    import zstandard

    st = st if st is not None else storage.Storage()
    url = storage.join(out, name)
    entries = _entries(out, folder, st)
    files = 0
    with (
        st.filesystem(url).open(url, "wb") as raw,
        zstandard.ZstdCompressor(level=LEVEL).stream_writer(raw, closefd=False) as z,
        tarfile.open(fileobj=z, mode="w|", format=tarfile.GNU_FORMAT) as tar,
    ):
        for rel, is_dir in entries:
            if is_dir:
                tar.addfile(_info(rel, True))
                continue
            data = st.read_bytes(storage.join(out, rel))
            tar.addfile(_info(rel, False, len(data)), io.BytesIO(data))
            files += 1
    return {"archive": url, "files": files, "bytes": st.filesystem(url).size(url)}


def write_archives(out: str, st: storage.Storage | None = None) -> list[dict]:
    """Write the three archives of the replica under ``out``; one summary per archive."""
    return [write_archive(out, folder, name, st) for folder, name in ARCHIVES]
