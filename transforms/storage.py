"""Storage access through fsspec: local paths, ``s3://`` and ``gs://`` alike.

Plain Python (no Beam). Storage options (endpoint URL, anonymous access) are set once
per process with ``configure`` (the CLI does it from ``--s3_endpoint_url`` / ``--anon``;
workers do it in ``DoFn.setup``) and never contain credentials: those come from the
standard AWS / Google credential chains.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import posixpath
import random
import time
import uuid

import fsspec

LOG = logging.getLogger("benbeam.storage")

# Client timeouts: a stalled connection fails (and is retried) instead of hanging a worker.
CONNECT_TIMEOUT_S = 10
READ_TIMEOUT_S = 60
# Our retry layer above the clients' own (botocore "standard" mode, gcsfs's retries).
RETRY_ATTEMPTS = 6
RETRY_BASE_S = 0.25
RETRY_CAP_S = 10.0

_OPTIONS: dict[str, dict] = {}


def configure(s3_endpoint_url: str | None = None, anon: bool = False, gcs_endpoint_url: str | None = None) -> dict:
    """Set process-wide storage options; returns them (picklable, credential-free)."""
    s3: dict = {"config_kwargs": {"connect_timeout": CONNECT_TIMEOUT_S, "read_timeout": READ_TIMEOUT_S,
                                  "retries": {"max_attempts": 5, "mode": "standard"}}}
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
        # gcsfs probes a bucket's type over gRPC first, which an emulator never answers.
        os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
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
    if is_remote(url):
        return retry(filesystem(url).cat_file, url, what=f"read {url}")
    with open(url, "rb") as fh:
        return fh.read()


# --------------------------------------------------------------------------- retries

_PERMANENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError,
              ValueError, TypeError, KeyError)
_TRANSIENT_WORDS = ("slowdown", "slow down", "throttl", "toomanyrequests", "too many requests", "requesttimeout",
                    "internalerror", "internal error", "serviceunavailable", "service unavailable", "503", "500",
                    "502", "504", "429", "timeout", "timed out", "reset", "broken pipe", "connection",
                    "disconnected", "server closed", "payload", "incomplete", "eof")


def is_transient(exc: BaseException) -> bool:
    """Throttling, 5xx, resets and timeouts are worth retrying; 403/404 and bad requests are not."""
    if isinstance(exc, _PERMANENT):
        return False
    if isinstance(exc, (TimeoutError, ConnectionError)):
        return True
    if isinstance(exc, OSError) and exc.errno in (errno.ECONNRESET, errno.ECONNREFUSED, errno.EPIPE,
                                                  errno.ETIMEDOUT, errno.ECONNABORTED):
        return True
    code = getattr(exc, "code", None) or getattr(exc, "status", None)
    if isinstance(code, int):
        if code in (408, 429) or 500 <= code < 600:
            return True
        if 400 <= code < 500:
            return False
    text = f"{type(exc).__name__} {exc}".lower()
    if any(w in text for w in ("accessdenied", "forbidden", "nosuchkey", "nosuchbucket", "not found", "403", "404")):
        return False
    return any(w in text for w in _TRANSIENT_WORDS)


def backoff(attempt: int, base: float = RETRY_BASE_S, cap: float = RETRY_CAP_S, rng=random) -> float:
    """Capped exponential backoff with full jitter: uniform in [0, min(cap, base·2^attempt)]."""
    return rng.uniform(0.0, min(cap, base * (2 ** attempt)))


RETRIES = {"count": 0}  # retries made in this process (tests and progress lines read it)


def retry(fn, *args, what: str = "", attempts: int = RETRY_ATTEMPTS, sleep=time.sleep, **kwargs):
    """Call ``fn(*args, **kwargs)``; retry transient failures with capped exponential backoff
    and jitter; raise permanent ones (and the last transient one) at once."""
    for attempt in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - classified below
            if attempt == attempts - 1 or not is_transient(e):
                raise
            delay = backoff(attempt)
            RETRIES["count"] += 1
            LOG.warning("transient error (%s: %s) on %s; retry %d of %d in %.2f s", type(e).__name__,
                        str(e)[:200], what or getattr(fn, "__name__", "call"), attempt + 1, attempts - 1, delay)
            sleep(delay)
    raise AssertionError("unreachable")


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
        retry(filesystem(url).pipe_file, url, data, what=f"write {url}")
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


# --------------------------------------------------------------------------- whole files


def upload_file(local: str, url: str) -> None:
    """Copy a local file to ``url`` (one PUT, or a multipart upload completed at once), retried."""
    if is_remote(url):
        from transforms import fastget

        put = fastget.put_file if fastget.enabled(url) else filesystem(url).put_file
        retry(put, local, url, what=f"upload {url}")
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
            retry(filesystem(url).get_file, url, tmp, what=f"download {url}")
        else:
            with open(url, "rb") as src, open(tmp, "wb") as dst:
                dst.write(src.read())
        os.replace(tmp, local)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
