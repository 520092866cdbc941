"""Storage access through fsspec: local paths, ``s3://`` and ``gs://`` alike.

Plain Python (no Beam). Storage options (endpoint URL, anonymous access) are set once
per process with ``configure`` (the CLI does it from ``--s3_endpoint_url`` / ``--anon``;
workers do it in ``DoFn.setup``) and never contain credentials: those come from the
standard AWS / Google credential chains.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import uuid

import fsspec

_OPTIONS: dict[str, dict] = {}


def configure(s3_endpoint_url: str | None = None, anon: bool = False, gcs_endpoint_url: str | None = None) -> dict:
    """Set process-wide storage options; returns them (picklable, credential-free)."""
    s3: dict = {}
    if s3_endpoint_url:
        s3["client_kwargs"] = {"endpoint_url": s3_endpoint_url}
    if anon:
        s3["anon"] = True
    gcs: dict = {}
    endpoint = gcs_endpoint_url or os.environ.get("STORAGE_EMULATOR_HOST")
    if endpoint:
        if not endpoint.startswith("http"):
            endpoint = "http://" + endpoint
        gcs["endpoint_url"] = endpoint
        gcs["token"] = "anon"
    elif anon:
        gcs["token"] = "anon"
    _OPTIONS.clear()
    _OPTIONS.update({"s3": s3, "gs": gcs, "gcs": gcs})
    return dict(_OPTIONS)


def options() -> dict:
    return dict(_OPTIONS)


def set_options(opts: dict) -> None:
    _OPTIONS.clear()
    _OPTIONS.update(opts or {})


def protocol(url: str) -> str:
    url = str(url)
    return url.split("://", 1)[0] if "://" in url else "file"


def is_remote(url: str) -> bool:
    return protocol(url) not in ("file", "local")


def filesystem(url: str) -> fsspec.AbstractFileSystem:
    proto = protocol(url)
    return fsspec.filesystem(proto, **_OPTIONS.get(proto, {}))


def join(root: str, *parts: str) -> str:
    root = str(root)
    if is_remote(root):
        return "/".join([root.rstrip("/")] + [p.strip("/") for p in parts])
    return os.path.join(root, *parts)


def parent(url: str) -> str:
    url = str(url)
    if is_remote(url):
        proto, rest = url.split("://", 1)
        return f"{proto}://{posixpath.dirname(rest.rstrip('/'))}"
    return os.path.dirname(os.path.abspath(url))


def exists(url: str) -> bool:
    return filesystem(url).exists(url)


def read_bytes(url: str) -> bytes:
    with filesystem(url).open(url, "rb") as fh:
        return fh.read()


def makedirs(url: str) -> None:
    if not is_remote(url):
        os.makedirs(url, exist_ok=True)


def write_bytes_atomic(url: str, data: bytes) -> None:
    """Write ``data`` so that ``url`` never exists half-written.

    Local: write a temp file beside it, fsync, ``os.replace``. Object stores: a single
    PUT is already atomic (the object appears whole or not at all).
    """
    url = str(url)
    if is_remote(url):
        filesystem(url).pipe_file(url, data)
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
    return hashlib.sha256(data).hexdigest()


def sha256_file(url: str, chunk: int = 8 << 20) -> str:
    h = hashlib.sha256()
    with filesystem(url).open(url, "rb") as fh:
        while True:
            b = fh.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()
