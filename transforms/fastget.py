"""Fast whole-object GETs from ``s3://`` with obstore (Rust ``object_store`` bindings).

The hot path of a conversion from a bucket is 15 small GETs per patch. Through
s3fs/aiobotocore each costs ~4 ms of client CPU (request signing, hooks, parsing in
Python) — more than decoding the patch. obstore does the same request in ~0.3 ms of CPU.
Whole-file uploads (TFRecord shards, a trainer's files) go through obstore too (``put_file``);
everything else (listing, metadata, small writes) stays on fsspec.

Every function takes the ``storage.Storage`` value whose endpoint, anonymous access and
credentials it uses: explicit keys when the value has them, else botocore's standard chain
(environment, shared config / the value's profile, SSO, container and instance roles),
re-read when they expire. ``Storage(fast_get=False)`` (``BENBEAM_FAST_GET=0`` on the command
line) reads through s3fs instead. Plain Python (no Beam); one store per (value, bucket,
process), one thread pool per (value, process), both in caches keyed by the value.
"""

from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import TYPE_CHECKING

from bigearthnet_beam.transforms import storeconfig

if TYPE_CHECKING:  # pragma: no cover - typing only
    from bigearthnet_beam.transforms.storage import Storage

CONCURRENCY = 16


def enabled(st: Storage, url: str) -> bool:
    """True when ``url`` is an S3 object the fast reader can get under ``st`` (obstore, known region, not disabled)."""
    if not str(url).startswith("s3://") or not st.fast_get:
        return False
    try:
        import obstore  # noqa: F401
    except ImportError:
        return False
    return _region(st) is not None


@functools.lru_cache(maxsize=64)
def _region(st: Storage) -> str | None:
    """The value's region, else its profile's (botocore's chain: environment, ~/.aws/config)."""
    region = st.s3_region
    if not region:
        try:
            import botocore.session

            region = botocore.session.Session(profile=st.s3_profile).get_config_variable("region")
        except Exception:  # noqa: BLE001 - no botocore config: decided below
            region = None
    if not region and st.s3_endpoint_url:
        region = "us-east-1"  # custom endpoints (MinIO, SeaweedFS, Ceph) ignore the region
    return region  # None on AWS without a configured region: s3fs finds the bucket's region itself


class _BotocoreCredentials:
    """obstore credential provider backed by botocore's refreshable credential chain."""

    def __init__(self, profile: str | None = None):
        import botocore.session

        self._creds = botocore.session.Session(profile=profile).get_credentials()
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


@functools.lru_cache(maxsize=256)
def _store(st: Storage, bucket: str, pid: int):
    """One obstore S3Store per (value, bucket, process)."""
    from obstore.store import S3Store

    endpoint = st.s3_endpoint_url
    region = _region(st)
    # The endpoint is always given, so obstore never takes $AWS_ENDPOINT_URL behind the value's back.
    kwargs: dict = {"region": region, "endpoint": endpoint or f"https://s3.{region}.amazonaws.com"}
    if endpoint:
        kwargs["virtual_hosted_style_request"] = False
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
    if st.anon:
        return S3Store(bucket, skip_signature=True, client_options=client, **kwargs)
    if st.s3_key:
        keys = {"access_key_id": st.s3_key, "secret_access_key": st.s3_secret}
        if st.s3_session_token:
            keys["session_token"] = st.s3_session_token
        return S3Store(bucket, client_options=client, **keys, **kwargs)
    return S3Store(bucket, credential_provider=_BotocoreCredentials(st.s3_profile), client_options=client, **kwargs)


@functools.lru_cache(maxsize=16)
def _pool(st: Storage, pid: int) -> ThreadPoolExecutor:
    """The fetch threads of one value in one process."""
    return ThreadPoolExecutor(CONCURRENCY, thread_name_prefix="benbeam-get")


def _translate(st: Storage, e: BaseException) -> BaseException:
    """obstore errors as the builtin exceptions the rest of the code classifies (secrets redacted)."""
    from obstore import exceptions as obstore_errors

    first = st.redact(str(e).splitlines()[0]) if str(e) else ""
    if isinstance(e, obstore_errors.NotFoundError):
        return FileNotFoundError(first or "not found")
    if isinstance(e, (obstore_errors.PermissionDeniedError, obstore_errors.UnauthenticatedError)):
        return PermissionError(first or "access denied")
    return e


def _call(st: Storage, fn, url: str, *args):
    """``fn(store, key, *args)`` for an ``s3://`` URL under ``st``, obstore errors as builtin exceptions."""
    bucket, _, key = url[len("s3://") :].partition("/")
    try:
        return fn(_store(st, bucket, os.getpid()), key, *args)
    except Exception as e:
        t = _translate(st, e)
        if t is e:
            raise
        raise t from None


def get_one(st: Storage, url: str, max_bytes: int | None = None) -> bytes:
    """The whole object at ``url``; ``OverflowError`` (nothing read) if it is larger than ``max_bytes``."""
    import obstore

    res = _call(st, obstore.get, url)
    size = (res.meta or {}).get("size")
    if max_bytes is not None and isinstance(size, int) and size > max_bytes:
        raise OverflowError(f"{url} is {size:,} bytes, more than the {max_bytes:,} a reBEN object can be")
    return bytes(res.bytes())


def put_file(st: Storage, local: str, url: str) -> None:
    """Upload a local file to ``s3://`` whole (obstore: a single PUT, or a multipart upload
    completed at once, so the object appears whole or not at all). ~4x less client CPU than
    s3fs, which hashes and sends the body from Python."""
    import pathlib

    import obstore

    _call(st, obstore.put, url, pathlib.Path(local))


def get_many(st: Storage, urls: list[str], max_bytes: int | None = None) -> dict[str, bytes | BaseException]:
    """Fetch every URL concurrently; per URL its bytes or the exception (after obstore's retries)."""

    def one(u):
        try:
            return get_one(st, u, max_bytes)
        except Exception as e:  # noqa: BLE001 - returned to the caller, who dead-letters it
            return e

    return dict(zip(urls, _pool(st, os.getpid()).map(one, urls), strict=True))
