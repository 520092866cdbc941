"""Containment: an object is read only if it lies under the dataset root (plain Python, no Beam).

Paths come from files the user did not write by hand (an index's ``url_*`` columns, a
manifest's shard list), so each is checked before anything is opened:

* its scheme is the root's (no ``http://`` from a table of local paths: no request forgery);
* it has no ``..`` / ``.`` segments;
* local: after resolving every symlink (``os.path.realpath``) it is under the resolved
  root, and it is a regular file (not a directory, FIFO, device or socket) — checked on
  the opened descriptor (``O_NOFOLLOW | O_NONBLOCK``: a FIFO never blocks the open), so a
  swap between check and open cannot slip through;
* it is at most ``MAX_OBJECT_BYTES`` (local: from ``fstat``, nothing read; remote: the
  read is capped), the largest legitimate object with generous room for encoding.

Each refusal is a ``PatchError`` with a reason of ``schemas.failures`` (stage ``fetch``).
"""

from __future__ import annotations

import os
import stat

import numpy as np

from bigearthnet_beam.schemas import errors, failures, manifest
from bigearthnet_beam.schemas.bands import ALL_BANDS, PATCH_SIZE, REFERENCE_MAP_DTYPE

# The largest reBEN object is a 120×120 float32 S1 band (57,600 bytes of pixels). A GeoTIFF
# written another way (tiled with 512×512 tiles, uncompressed, with overviews) may need many
# times that; anything above this cap is not a patch's layer and is never read whole.
LARGEST_RASTER_BYTES = max(
    [b.native_size**2 * np.dtype(b.dtype).itemsize for b in ALL_BANDS]
    + [PATCH_SIZE**2 * np.dtype(REFERENCE_MAP_DTYPE).itemsize]
)
MAX_OBJECT_BYTES = 16 * LARGEST_RASTER_BYTES + (1 << 20)  # 16 tiles' worth of pixels + 1 MiB of tags
REMOTE_SCHEMES = ("s3", "gs", "gcs")


LOCAL = ""  # the scheme of a plain path (a ``file://`` URL is not one: objects are plain paths or s3/gs URLs)


def scheme(url: str) -> str:
    """``s3`` / ``gs`` / ``http`` / ``file`` … of a URL, or ``LOCAL`` ('') for a plain path."""
    url = str(url)
    return url.split("://", 1)[0].lower() if "://" in url else LOCAL


def _segments(url: str) -> list[str]:
    rest = url.split("://", 1)[1] if "://" in url else url
    return rest.replace("\\", "/").split("/")


def _refuse(reason: str, detail: str) -> failures.PatchError:
    return failures.PatchError(failures.FETCH, reason, detail)


def check_url(url: str, root: str | None, what: str = "object") -> str:
    """The path to open for ``url`` (local: resolved) if it is contained in ``root``; raises
    PatchError (outside_root, unsupported_scheme, path_traversal) otherwise. No I/O on
    remote URLs; local ones are resolved (``realpath``), not opened, a relative one against
    ``root``. ``root`` None: no root to hold the path to (only the scheme and segment rules
    apply)."""
    url = str(url)
    got = scheme(url)
    want = scheme(root) if root is not None else got
    if got not in ((LOCAL,) + REMOTE_SCHEMES) or got != want:
        shown = f"scheme {got}://" if got else "a local path"
        raise _refuse(
            "unsupported_scheme",
            f"{what} {url[:200]} uses {shown}, but the dataset root "
            f"{root} is {'a local folder' if want == LOCAL else want + '://'}; objects are read only "
            "from under the dataset root",
        )
    if any(s in ("..", ".") for s in _segments(url)):
        raise _refuse(
            "path_traversal",
            f"{what} {url[:200]} holds a '..' or '.' segment; object paths must "
            "name files under the dataset root directly",
        )
    if root is None:
        return url if got != LOCAL else os.path.realpath(url)
    if got != LOCAL:
        prefix = str(root).rstrip("/") + "/"
        if not url.startswith(prefix):
            raise _refuse("outside_root", f"{what} {url[:200]} is not under the dataset root {root}")
        return url
    real_root = os.path.realpath(root)
    # A relative object path is relative to the dataset root (never to the working directory).
    full = url if os.path.isabs(url) else os.path.join(real_root, url)
    real = os.path.realpath(full)
    if os.path.commonpath([real_root, real]) != real_root:
        how = "" if os.path.abspath(full) == real else f" (it resolves to {real} through a symlink)"
        raise _refuse(
            "outside_root",
            f"{what} {url[:200]} lies outside the dataset root {root}{how}; pass the "
            "--root that holds the data, or fix the paths of the index",
        )
    return real


def _verdict(st: os.stat_result, url: str, what: str, max_bytes: int) -> None:
    """The one object check on a local file's status: a regular file of 1..``max_bytes`` bytes."""
    if not stat.S_ISREG(st.st_mode):
        raise _refuse("not_a_file", f"{what} {url[:200]} is a {_kind(st.st_mode)}, not a regular file; it was not read")
    if st.st_size == 0:
        raise _refuse("empty_object", f"{what} {url} is 0 bytes")
    if st.st_size > max_bytes:
        raise _refuse(
            "object_too_large",
            f"{what} {url[:200]} is {st.st_size:,} bytes; no reBEN object exceeds "
            f"{max_bytes:,} bytes, so it was not read",
        )


def _missing(url: str, what: str) -> failures.PatchError:
    return _refuse("missing_object", f"{what} {url} does not exist")


def check_local_object(url: str, root: str | None, what: str = "object", max_bytes: int = MAX_OBJECT_BYTES) -> int:
    """The size of a contained local object that ``read_local`` would read; PatchError
    otherwise (outside_root …, missing_object, not_a_file, empty_object, object_too_large,
    read_error). ``benbeam validate`` checks with it, ``convert`` reads with ``read_local``:
    one verdict for a symlinked folder, a FIFO or a directory in place of a band file."""
    path = check_url(url, root, what)
    try:
        st = os.stat(path)  # the path is resolved: no symlink left to follow
    except (FileNotFoundError, NotADirectoryError):
        raise _missing(url, what) from None
    except OSError as e:
        raise _refuse("read_error", f"{what} {url[:200]}: {e}") from None
    _verdict(st, url, what, max_bytes)
    return st.st_size


def read_local(url: str, root: str | None, what: str = "object", max_bytes: int = MAX_OBJECT_BYTES) -> bytes:
    """Read a contained local regular file of 1..``max_bytes`` bytes; PatchError otherwise (the
    verdicts of ``check_local_object``, taken on the opened descriptor)."""
    path = check_url(url, root, what)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    except (FileNotFoundError, NotADirectoryError):
        raise _missing(url, what) from None
    except OSError as e:
        if os.path.isdir(path):  # O_RDONLY opens a directory on some systems, refuses it on others
            raise _refuse(
                "not_a_file", f"{what} {url[:200]} is a directory, not a regular file; it was not read"
            ) from None
        raise _refuse("read_error", f"{what} {url[:200]}: {e}") from None
    try:
        _verdict(os.fstat(fd), url, what, max_bytes)
        chunks, left = [], max_bytes + 1
        while left > 0:  # bounded even if the file grows while it is read
            b = os.read(fd, min(left, 1 << 20))
            if not b:
                break
            chunks.append(b)
            left -= len(b)
        data = b"".join(chunks)
        if len(data) > max_bytes:
            raise _refuse("object_too_large", f"{what} {url[:200]} grew past {max_bytes:,} bytes while read")
        return data
    finally:
        os.close(fd)


def check_size(url: str, data: bytes, what: str = "object", max_bytes: int = MAX_OBJECT_BYTES) -> bytes:
    """``data`` if at most ``max_bytes`` (a remote read capped at ``max_bytes + 1``), else PatchError."""
    if len(data) > max_bytes:
        raise _refuse(
            "object_too_large",
            f"{what} {url[:200]} is larger than {max_bytes:,} bytes; no reBEN object is, so it was not used",
        )
    return data


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "directory"),
        (stat.S_ISFIFO, "FIFO (named pipe)"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISLNK, "symlink"),
    ):
        if test(mode):
            return name
    return "special file"


def check_relative(rel: str, base: str, what: str = "file") -> str:
    """``base/rel`` for a relative path taken from a manifest, if it stays under ``base``
    (``schemas.manifest.path_problem``: no scheme, no absolute path, no ``..``; local: no
    symlink out of it); raises ManifestError / ContainmentError (both ValueErrors) otherwise."""
    problem = manifest.path_problem(rel)
    rel = str(rel)
    if problem:
        raise manifest.ManifestError(
            f"{what} path {rel[:200]!r} is not a plain relative path inside {base}; the manifest "
            "was not written by benbeam or was altered"
        )
    full = (base.rstrip("/") + "/" + rel) if scheme(base) != LOCAL else os.path.join(base, rel)
    if scheme(base) == LOCAL:
        real_base, real = os.path.realpath(base), os.path.realpath(full)
        if os.path.commonpath([real_base, real]) != real_base:
            raise errors.ContainmentError(f"{what} path {rel!r} resolves to {real}, outside {base} (a symlink)")
    return full
