"""The retry policy and timeouts, shared by ``storage`` (fsspec) and ``fastget`` (obstore).

Plain Python (no Beam), importing neither of them, so that both can import it. Constants
only: where objects live and the credentials to reach them are a ``storage.Storage`` value
passed to each caller, never process-wide state.

Retries are one layer per client: botocore (s3fs) and obstore retry themselves, configured
with these constants; ``retry`` is the layer for the fsspec calls of other clients. What is transient is
decided by exception type, errno and HTTP status only — never by words in a message.
"""

from __future__ import annotations

import errno
import functools
import logging
import random
import time

LOG = logging.getLogger("benbeam.storage")

# A refused or unreachable endpoint fails in seconds; a stalled read fails after READ_TIMEOUT_S.
CONNECT_TIMEOUT_S = 5
READ_TIMEOUT_S = 60
RETRY_ATTEMPTS = 5  # attempts in all (the first included), for every client
RETRY_BASE_S = 0.25
RETRY_CAP_S = 10.0
REFUSED_ATTEMPTS = 2  # a refused connection (nothing listens there) is tried twice, not five times


def probe_endpoint(url: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Fail in seconds, not after a minute of client retries, when nothing answers at a
    custom endpoint: one TCP connect; ``ConnectionRefusedError`` naming the endpoint."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(url if "://" in url else "http://" + url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname or "localhost", port), timeout=timeout).close()
    except OSError as e:
        shown = f"{parts.scheme or 'http'}://{parts.hostname}:{port}"  # never the URL's user:password@
        raise ConnectionRefusedError(
            errno.ECONNREFUSED, f"nothing answers at the storage endpoint {shown} ({type(e).__name__}: {e})"
        ) from None


# --------------------------------------------------------------------------- retries

_PERMANENT = (
    FileNotFoundError,
    PermissionError,
    IsADirectoryError,
    NotADirectoryError,
    FileExistsError,
    ValueError,
    TypeError,
    KeyError,
)
_TRANSIENT_ERRNO = frozenset(
    {
        errno.ECONNRESET,
        errno.ECONNREFUSED,
        errno.EPIPE,
        errno.ETIMEDOUT,
        errno.ECONNABORTED,
        errno.EBUSY,
        errno.EAGAIN,
        errno.EREMOTEIO,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
    }
)


@functools.cache
def _transport_errors() -> tuple[type, ...]:
    """Connection/timeout exception classes of the HTTP stacks underneath fsspec (those installed)."""
    found: list[type] = []
    for mod, names in (
        ("aiohttp", ("ClientConnectionError", "ClientPayloadError", "ServerTimeoutError")),
        ("botocore.exceptions", ("ConnectionError", "HTTPClientError", "ReadTimeoutError", "ConnectTimeoutError")),
        ("urllib3.exceptions", ("ProtocolError", "TimeoutError")),
        ("requests.exceptions", ("ConnectionError", "Timeout", "ChunkedEncodingError")),
    ):
        try:
            m = __import__(mod, fromlist=list(names))
        except ImportError:
            continue
        found.extend(getattr(m, n) for n in names if isinstance(getattr(m, n, None), type))
    return tuple(found)


def http_status(exc: BaseException) -> int | None:
    """The HTTP status an exception carries (``code``/``status``/``status_code`` or a botocore response)."""
    for attr in ("status_code", "status", "code"):
        v = getattr(exc, attr, None)
        if isinstance(v, int) and 100 <= v < 600:
            return v
    resp = getattr(exc, "response", None)
    if isinstance(resp, dict):
        v = (resp.get("ResponseMetadata") or {}).get("HTTPStatusCode")
        if isinstance(v, int):
            return v
    return None


def exception_chain(exc: BaseException):
    """``exc`` and the exceptions it was raised from or during, each once."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def is_transient(exc: BaseException) -> bool:
    """Throttling, 5xx, resets, refused connections and timeouts are worth retrying; 4xx,
    missing objects and refused access are not. Decided by type, errno and HTTP status
    (of the exception or one it was raised from), never by the message's words."""
    transport = _transport_errors()
    for e in exception_chain(exc):
        status = http_status(e)
        if status is not None:
            return status in (408, 429) or 500 <= status < 600
        if isinstance(e, _PERMANENT):
            return False
        if isinstance(e, (TimeoutError, ConnectionError)) or (transport and isinstance(e, transport)):
            return True
        if isinstance(e, OSError) and e.errno in _TRANSIENT_ERRNO:
            return True
    return False


def is_refused(exc: BaseException) -> bool:
    """A connection refused (nothing listens at the endpoint), anywhere in the chain."""
    for e in exception_chain(exc):
        if isinstance(e, ConnectionRefusedError) or (isinstance(e, OSError) and e.errno == errno.ECONNREFUSED):
            return True
        if type(e).__name__ in ("EndpointConnectionError", "ClientConnectorError") and "refused" in str(e).lower():
            return True
    return False


def backoff(attempt: int, base: float = RETRY_BASE_S, cap: float = RETRY_CAP_S, rng=random) -> float:
    """Capped exponential backoff with full jitter: uniform in [0, min(cap, base·2^attempt)]."""
    return rng.uniform(0.0, min(cap, base * (2**attempt)))


def retry(fn, *args, what: str = "", attempts: int = RETRY_ATTEMPTS, sleep=time.sleep, **kwargs):
    """Call ``fn(*args, **kwargs)``; retry transient failures with capped exponential backoff
    and jitter (a refused connection only ``REFUSED_ATTEMPTS`` times in all); raise
    permanent ones (and the last transient one) at once."""
    for attempt in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            last = attempt == attempts - 1 or (is_refused(e) and attempt + 1 >= REFUSED_ATTEMPTS)
            if last or not is_transient(e):
                raise
            delay = backoff(attempt)
            LOG.warning(
                "transient error (%s: %s) on %s; retry %d of %d in %.2f s",
                type(e).__name__,
                str(e)[:200],
                what or getattr(fn, "__name__", "call"),
                attempt + 1,
                attempts - 1,
                delay,
            )
            sleep(delay)
    raise AssertionError("unreachable")
