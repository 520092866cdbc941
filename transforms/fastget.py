"""Fast whole-object GETs from ``s3://`` with obstore (Rust ``object_store`` bindings).

The hot path of a conversion from a bucket is 15 small GETs per patch. Through
s3fs/aiobotocore each costs ~4 ms of client CPU (request signing, hooks, parsing in
Python) — more than decoding the patch. obstore does the same request in ~0.3 ms of CPU.
Whole-file uploads (TFRecord shards, a trainer's files) go through obstore too (``put_file``);
everything else (listing, metadata, small writes) stays on fsspec.

Credentials come from botocore's standard chain (environment, shared config / profiles,
SSO, container and instance roles), re-read when they expire; the endpoint and anonymous
access from ``transforms.storage`` options. Set ``BENBEAM_FAST_GET=0`` to read through
s3fs instead (reads and uploads). Plain Python (no Beam); one store per bucket per process.
"""

from __future__ import annotations

import functools
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from bigearthnet_beam.transforms import storeconfig

_LOCK = threading.Lock()
_STORES: dict[tuple, object] = {}
_POOL: ThreadPoolExecutor | None = None
CONCURRENCY = 16


def enabled(url: str) -> bool:
    """True when ``url`` is an S3 object the fast reader can get (obstore, known region, not disabled)."""
    if not str(url).startswith("s3://") or os.environ.get("BENBEAM_FAST_GET", "1") == "0":
        return False
    try:
        import obstore  # noqa: F401
    except ImportError:
        return False
    return _region(_endpoint()) is not None


def _endpoint() -> str | None:
    return (storeconfig.options().get("s3", {}).get("client_kwargs") or {}).get("endpoint_url")


def _anon() -> bool:
    return bool(storeconfig.options().get("s3", {}).get("anon"))


@functools.lru_cache(maxsize=None)
def _region(endpoint: str | None) -> str | None:
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if not region:
        try:
            import botocore.session

            region = botocore.session.get_session().get_config_variable("region")
        except Exception:  # noqa: BLE001 - no botocore config: decided below
            region = None
    if not region and endpoint:
        region = "us-east-1"  # custom endpoints (MinIO, SeaweedFS, Ceph) ignore the region
    return region  # None on AWS without a configured region: s3fs finds the bucket's region itself


class _BotocoreCredentials:
    """obstore credential provider backed by botocore's refreshable credential chain."""

    def __init__(self):
        import botocore.session

        self._creds = botocore.session.get_session().get_credentials()
        if self._creds is None:
            raise PermissionError(
                "no AWS credentials found (environment, ~/.aws, SSO or instance role); pass --anon for a public bucket"
            )

    def __call__(self):
        import datetime

        f = self._creds.get_frozen_credentials()
        # obstore caches a credential until it expires: ask again every 5 minutes, so that
        # botocore can refresh temporary credentials well before they lapse.
        expires = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(minutes=5)
        return {
            "access_key_id": f.access_key,
            "secret_access_key": f.secret_key,
            "token": f.token,
            "expires_at": expires,
        }


def _store(bucket: str):
    endpoint, anon = _endpoint(), _anon()
    key = (bucket, endpoint, anon)
    with _LOCK:
        st = _STORES.get(key)
        if st is None:
            from obstore.store import S3Store

            kwargs = {"region": _region(endpoint)}
            if endpoint:
                kwargs.update(endpoint=endpoint, virtual_hosted_style_request=False)
            client = {
                "allow_http": bool(endpoint and endpoint.startswith("http://")),
                "timeout": f"{storeconfig.READ_TIMEOUT_S}s",
                "connect_timeout": f"{storeconfig.CONNECT_TIMEOUT_S}s",
            }
            # obstore's own retries are the only layer (5xx, connection errors, timeouts).
            kwargs["retry_config"] = {
                "max_retries": storeconfig.RETRY_ATTEMPTS - 1,
                "backoff": {
                    "init_backoff": timedelta(seconds=storeconfig.RETRY_BASE_S),
                    "max_backoff": timedelta(seconds=storeconfig.RETRY_CAP_S),
                    "base": 2,
                },
                "retry_timeout": timedelta(seconds=2 * storeconfig.READ_TIMEOUT_S),
            }
            if anon:
                st = S3Store(bucket, skip_signature=True, client_options=client, **kwargs)
            else:
                st = S3Store(bucket, credential_provider=_BotocoreCredentials(), client_options=client, **kwargs)
            _STORES[key] = st
        return st


def _pool() -> ThreadPoolExecutor:
    global _POOL
    with _LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(CONCURRENCY, thread_name_prefix="benbeam-get")
        return _POOL


def _translate(e: BaseException) -> BaseException:
    """obstore errors as the builtin exceptions the rest of the code classifies."""
    from obstore import exceptions as obstore_errors

    if isinstance(e, obstore_errors.NotFoundError):
        return FileNotFoundError(str(e).splitlines()[0] if str(e) else "not found")
    if isinstance(e, (obstore_errors.PermissionDeniedError, obstore_errors.UnauthenticatedError)):
        return PermissionError(str(e).splitlines()[0] if str(e) else "access denied")
    return e


def _call(fn, url: str, *args):
    """``fn(store, key, *args)`` for an ``s3://`` URL, obstore errors as builtin exceptions."""
    bucket, _, key = url[len("s3://") :].partition("/")
    try:
        return fn(_store(bucket), key, *args)
    except Exception as e:
        t = _translate(e)
        if t is e:
            raise
        raise t from None


def get_one(url: str, max_bytes: int | None = None) -> bytes:
    """The whole object at ``url``; ``OverflowError`` (nothing read) if it is larger than ``max_bytes``."""
    import obstore

    res = _call(obstore.get, url)
    size = (res.meta or {}).get("size")
    if max_bytes is not None and isinstance(size, int) and size > max_bytes:
        raise OverflowError(f"{url} is {size:,} bytes, more than the {max_bytes:,} a reBEN object can be")
    return bytes(res.bytes())


def put_file(local: str, url: str) -> None:
    """Upload a local file to ``s3://`` whole (obstore: a single PUT, or a multipart upload
    completed at once, so the object appears whole or not at all). ~4x less client CPU than
    s3fs, which hashes and sends the body from Python."""
    import pathlib

    import obstore

    _call(obstore.put, url, pathlib.Path(local))


def get_many(urls: list[str], max_bytes: int | None = None) -> dict[str, bytes | BaseException]:
    """Fetch every URL concurrently; per URL its bytes or the exception (after obstore's retries)."""

    def one(u):
        try:
            return get_one(u, max_bytes)
        except Exception as e:  # noqa: BLE001 - returned to the caller, who dead-letters it
            return e

    return dict(zip(urls, _pool().map(one, urls), strict=True))
