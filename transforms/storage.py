"""Storage access through fsspec: local paths, ``s3://`` and ``gs://`` alike.

Plain Python (no Beam). Options and the retry policy live in ``transforms.storeconfig``
(re-exported here: ``storage.configure``, ``storage.retry`` …); whole-object ``s3://``
reads and uploads go through ``transforms.fastget`` (obstore). Both import only
``storeconfig``, so there is no import cycle.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import uuid

import fsspec

from bigearthnet_beam.transforms import fastget
from bigearthnet_beam.transforms.storeconfig import (  # noqa: F401 - the storage API: options and retries
    _OPTIONS,
    CONNECT_TIMEOUT_S,
    READ_TIMEOUT_S,
    RETRIES,
    RETRY_ATTEMPTS,
    RETRY_BASE_S,
    RETRY_CAP_S,
    backoff,
    configure,
    is_transient,
    options,
    retry,
    set_options,
)


def protocol(url: str) -> str:
    """The fsspec protocol of ``url`` (``file`` for a local path)."""
    url = str(url)
    return url.split("://", 1)[0] if "://" in url else "file"


def is_remote(url: str) -> bool:
    """True unless ``url`` is a local path."""
    return protocol(url) not in ("file", "local")


def filesystem(url: str) -> fsspec.AbstractFileSystem:
    """The fsspec filesystem of ``url`` with this process's options."""
    proto = protocol(url)
    opts = dict(_OPTIONS.get(proto, {}))
    client_retries = opts.pop("retries", None)
    fs = fsspec.filesystem(proto, **opts)
    if client_retries is not None and hasattr(fs, "retries"):
        fs.retries = client_retries  # s3fs: botocore retries; s3fs's own loop would multiply them
    return fs


def join(root: str, *parts: str) -> str:
    """``root`` joined with ``parts`` (``/`` for URLs, the OS separator for paths)."""
    root = str(root)
    if is_remote(root):
        return "/".join([root.rstrip("/")] + [p.strip("/") for p in parts])
    return os.path.join(root, *parts)


def parent(url: str) -> str:
    """The folder holding ``url`` (absolute for a local path)."""
    url = str(url)
    if is_remote(url):
        proto, rest = url.split("://", 1)
        return f"{proto}://{posixpath.dirname(rest.rstrip('/'))}"
    return os.path.dirname(os.path.abspath(url))


CLIENT_RETRIES = ("s3", "gs", "gcs")  # clients that retry transient failures themselves (configured)


def call(url: str, fn, *args, what: str = ""):
    """``fn(*args)`` on ``url``'s client with one retry layer: the client's own where it has
    one (botocore / gcsfs, configured in ``storeconfig``), else ``retry``."""
    if protocol(url) in CLIENT_RETRIES:
        return fn(*args)
    return retry(fn, *args, what=what or url)


def exists(url: str) -> bool:
    """True when ``url`` exists."""
    return filesystem(url).exists(url)


def read_bytes(url: str) -> bytes:
    """The bytes of ``url``."""
    if is_remote(url):
        return call(url, filesystem(url).cat_file, url, what=f"read {url}")
    with open(url, "rb") as fh:
        return fh.read()


def makedirs(url: str) -> None:
    """Create a local folder and its parents (no-op for URLs)."""
    if not is_remote(url):
        os.makedirs(url, exist_ok=True)


def write_bytes_atomic(url: str, data: bytes) -> None:
    """Write ``data`` so that ``url`` never exists half-written.

    Local: write a temp file beside it, fsync, ``os.replace``. Object stores: a single
    PUT is already atomic (the object appears whole or not at all).
    """
    url = str(url)
    if is_remote(url):
        call(url, filesystem(url).pipe_file, url, data, what=f"write {url}")
        return
    d = os.path.dirname(os.path.abspath(url))
    os.makedirs(d, exist_ok=True)
    tmp = os.path.join(d, f".tmp-{os.path.basename(url)}-{uuid.uuid4().hex}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, url)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(url: str, chunk: int = 8 << 20) -> str:
    """Hex SHA-256 of the object at ``url``, read in chunks."""
    h = hashlib.sha256()
    with filesystem(url).open(url, "rb") as fh:
        while True:
            b = fh.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


# --------------------------------------------------------------------------- whole files


def upload_file(local: str, url: str) -> None:
    """Copy a local file to ``url`` (one PUT, or a multipart upload completed at once), retried."""
    if is_remote(url):
        put = fastget.put_file if fastget.enabled(url) else filesystem(url).put_file
        call(url, put, local, url, what=f"upload {url}")
    else:
        write_bytes_atomic(url, open(local, "rb").read())


def upload_tree(local_dir: str, url: str) -> int:
    """Copy every file below ``local_dir`` to the same relative paths below ``url``; returns the count."""
    n = 0
    for d, _, files in os.walk(local_dir):
        for f in sorted(files):
            full = os.path.join(d, f)
            rel = os.path.relpath(full, local_dir).replace(os.sep, "/")
            upload_file(full, join(url, rel))
            n += 1
    return n


def download_file(url: str, local: str) -> None:
    """Copy ``url`` to a local path (written whole, then renamed), retried; FileNotFoundError if absent."""
    os.makedirs(os.path.dirname(os.path.abspath(local)) or ".", exist_ok=True)
    tmp = f"{local}.part-{uuid.uuid4().hex}"
    try:
        if is_remote(url):
            call(url, filesystem(url).get_file, url, tmp, what=f"download {url}")
        else:
            with open(url, "rb") as src, open(tmp, "wb") as dst:
                dst.write(src.read())
        os.replace(tmp, local)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
