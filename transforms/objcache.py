"""A local copy of the objects a conversion fetches twice from an object store.

Training patches are read by two passes: the statistics pass, then (once the statistics
are known) the writer. From an object store that is 15 more GETs per training patch. With
a cache, the statistics pass keeps each training patch's 15 objects, as fetched, in one
local file; the writer reads that file instead of the store and deletes it. The bytes are
the fetched bytes, so the output is byte-identical with or without a cache; a patch not in
the cache (not cached, or cached on another worker's disk) is simply fetched again.

The cache never fills a disk: it stops adding files while the free space of its file
system is below a reserve. Files appear atomically (written under a temporary name, then
renamed). Plain Python (no Beam).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading

RESERVE_FRACTION = 0.05  # of the file system's size, and
RESERVE_BYTES = 2 << 30  # at least this much, is left free
_HEADER = b"benbeam-objects-v1\n"


class PatchCache:
    """One file per patch id under ``directory`` holding the patch's objects."""

    def __init__(self, directory: str, reserve_bytes: int | None = None):
        self.directory = directory
        self.reserve_bytes = reserve_bytes
        self._made = False
        self._lock = threading.Lock()

    def __getstate__(self):
        return {"directory": self.directory, "reserve_bytes": self.reserve_bytes}

    def __setstate__(self, state):
        self.__init__(state["directory"], state["reserve_bytes"])

    def _path(self, patch_id: str) -> str:
        # Clean records' ids match the reBEN pattern (letters, digits, '_'): safe file names.
        return os.path.join(self.directory, patch_id + ".objs")

    def _room(self) -> bool:
        usage = shutil.disk_usage(self.directory)
        reserve = (
            self.reserve_bytes
            if self.reserve_bytes is not None
            else max(RESERVE_BYTES, int(RESERVE_FRACTION * usage.total))
        )
        return usage.free > reserve

    def put(self, patch_id: str, objects: dict[str, bytes]) -> bool:
        """Keep ``objects``; False (nothing written) when the disk is near full or unwritable."""
        try:
            with self._lock:
                if not self._made:
                    os.makedirs(self.directory, exist_ok=True)
                    self._made = True
            if not self._room():
                return False
            keys = sorted(objects)
            header = json.dumps([[k, len(objects[k])] for k in keys]).encode() + b"\n"
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(_HEADER)
                    fh.write(header)
                    for k in keys:
                        fh.write(objects[k])
                os.replace(tmp, self._path(patch_id))
            except BaseException:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
                raise
            return True
        except OSError:
            return False  # a cache that cannot write only costs a second fetch

    def take(self, patch_id: str) -> dict[str, bytes] | None:
        """The objects kept for ``patch_id`` (the file is deleted), or None."""
        path = self._path(patch_id)
        try:
            with open(path, "rb") as fh:
                data = fh.read()
            os.unlink(path)
        except OSError:
            return None
        if not data.startswith(_HEADER):
            return None
        nl = data.index(b"\n", len(_HEADER))
        pos, out = nl + 1, {}
        for k, n in json.loads(data[len(_HEADER) : nl]):
            out[k] = data[pos : pos + n]
            pos += n
        return out if pos == len(data) else None

    def remove(self) -> None:
        """Delete the cache folder."""
        shutil.rmtree(self.directory, ignore_errors=True)
