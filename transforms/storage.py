"""Storage access through fsspec — local paths, ``s3://`` and ``gs://`` alike — under a ``Storage`` value.

A ``Storage`` holds the endpoints, the anonymous-access switch and the credential options of
the object stores (S3 and S3-compatible servers, GCS and its emulator). It is passed to every
function, reader and DoFn that touches a bucket — never set process-wide — so two pipelines
in one process can use two endpoints or two sets of credentials side by side. Its caches
(fsspec filesystems here, obstore stores and the fetch pool in ``fastget``) are keyed by the
value itself: equal values share a client, different values never do.

``Storage()`` is the standard AWS and Google credential chains with the default endpoints;
it reads no environment variable of its own (the clients' credential chains still do).
``Storage.from_env()`` reads ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``,
``STORAGE_EMULATOR_HOST`` and ``BENBEAM_FAST_GET`` once; the command line builds its value
with ``transforms.cli_args.storage_from_args``.

Secrets (keys, secret keys, session tokens, GCS tokens, the ``user:password@`` part of an
endpoint URL) are never shown: ``repr``/``str`` print ``***`` in their place, and messages
about a store go through ``Storage.redact``. They do travel inside the pickled value to Beam
workers (which need them); prefer a named profile or the runner's service account.

Plain Python (no Beam). The retry policy and timeouts are constants in
``transforms.storeconfig`` (re-exported here); whole-object ``s3://`` reads and uploads go
through ``transforms.fastget`` (obstore).
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import hashlib
import os
import posixpath
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import fsspec

from bigearthnet_beam.schemas.errors import InputError, StorageError
from bigearthnet_beam.transforms import fastget
from bigearthnet_beam.transforms.storeconfig import (  # noqa: F401 - the storage API: retry policy
    CONNECT_TIMEOUT_S,
    READ_TIMEOUT_S,
    RETRY_ATTEMPTS,
    RETRY_BASE_S,
    RETRY_CAP_S,
    backoff,
    is_transient,
    probe_endpoint,
    retry,
)

HIDDEN = "***"
_SECRET_FIELDS = ("s3_key", "s3_secret", "s3_session_token", "gcs_token")
_NOT_SECRET_TOKENS = ("anon", "cloud", "google_default", "browser")  # gcsfs token modes, not secrets
GCS_DEFAULT_ENDPOINT = "https://storage.googleapis.com"
CLIENT_RETRIES = ("s3", "gs", "gcs")  # clients that retry transient failures themselves (configured)


class AccessDenied(StorageError, PermissionError):
    """An object store refused this ``Storage``'s credentials for a URL (exit 3; also a ``PermissionError``)."""


class EndpointRefused(ConnectionRefusedError):
    """Nothing answers at a custom endpoint of a ``Storage``; ``flag`` names the option that set it."""

    def __init__(self, code: int, message: str, flag: str):
        super().__init__(code, message)
        self.flag = flag


def redact_url(url: str | None) -> str | None:
    """``url`` with any ``user:password@`` replaced by ``***@`` (None stays None)."""
    if not url:
        return url
    parts = urlsplit(url if "://" in url else "http://" + url)
    if "@" not in parts.netloc:
        return url
    shown = urlunsplit(parts._replace(netloc=f"{HIDDEN}@{parts.netloc.rsplit('@', 1)[1]}"))
    return shown if "://" in url else shown.split("://", 1)[1]


def _normal_gcs(endpoint: str | None) -> str | None:
    if endpoint and "://" not in endpoint:
        return "http://" + endpoint  # STORAGE_EMULATOR_HOST is often host:port
    return endpoint or None


@dataclass(frozen=True, repr=False)
class Storage:
    """Endpoints, anonymous access and credential options of the object stores (frozen, picklable).

    Fields (all optional; the default is the standard credential chains and endpoints):

    - ``s3_endpoint_url``: an S3-compatible server (MinIO, SeaweedFS, Ceph); None: AWS.
    - ``gcs_endpoint_url``: a GCS emulator (fake-gcs-server); None: Google.
    - ``anon``: unsigned requests (public buckets), S3 and GCS.
    - ``s3_key`` / ``s3_secret`` / ``s3_session_token``: explicit S3 credentials (secret).
    - ``s3_profile``: a named profile of ``~/.aws/config``; ``s3_region``: the bucket region.
    - ``gcs_token``: gcsfs's ``token`` — a service-account JSON path, ``"google_default"``,
      ``"cloud"`` or ``"anon"`` (a path is shown as ``***``); ``gcs_project``: the billing project.
    - ``fast_get``: whole-object ``s3://`` reads and uploads through obstore (default) or s3fs.
    """

    s3_endpoint_url: str | None = None
    gcs_endpoint_url: str | None = None
    anon: bool = False
    s3_key: str | None = None
    s3_secret: str | None = None
    s3_session_token: str | None = None
    s3_profile: str | None = None
    s3_region: str | None = None
    gcs_token: str | None = None
    gcs_project: str | None = None
    fast_get: bool = True

    def __post_init__(self) -> None:
        """Normalise (empty strings: not set) and refuse contradictory options (InputError)."""
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.type in ("bool",) and not isinstance(v, bool):
                raise InputError(f"Storage.{f.name} must be True or False, not {type(v).__name__}")
            if f.type != "bool" and v is not None and not isinstance(v, str):
                raise InputError(f"Storage.{f.name} must be a string or None, not {type(v).__name__}")
            if f.type != "bool" and v == "":
                object.__setattr__(self, f.name, None)  # an empty flag or variable means "not set"
        object.__setattr__(self, "gcs_endpoint_url", _normal_gcs(self.gcs_endpoint_url))
        if bool(self.s3_key) != bool(self.s3_secret):
            raise InputError("Storage: s3_key and s3_secret go together (give both or neither)")
        if self.s3_session_token and not self.s3_key:
            raise InputError("Storage: s3_session_token needs s3_key and s3_secret")
        if self.s3_key and self.s3_profile:
            raise InputError("Storage: give either s3_key/s3_secret or s3_profile, not both")
        if self.anon and (self.s3_key or self.s3_profile or self.gcs_token):
            raise InputError("Storage: anon=True takes no credentials (drop s3_key/s3_profile/gcs_token)")
        for name in ("s3_endpoint_url", "gcs_endpoint_url"):
            url = getattr(self, name)
            if url and urlsplit(url).scheme not in ("http", "https"):
                raise InputError(f"Storage.{name} must be an http:// or https:// URL, got {redact_url(url)}")

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: Any) -> Storage:
        """The value the environment describes, read once: ``AWS_ENDPOINT_URL_S3`` (or
        ``AWS_ENDPOINT_URL``), ``STORAGE_EMULATOR_HOST``, ``BENBEAM_FAST_GET=0``; ``overrides``
        (field=value, None = keep the environment's) win."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {
            "s3_endpoint_url": env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None,
            "gcs_endpoint_url": _normal_gcs(env.get("STORAGE_EMULATOR_HOST") or None),
            "fast_get": env.get("BENBEAM_FAST_GET", "1") != "0",
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        if values.get("gcs_endpoint_url") and not values.get("gcs_token") and not values.get("anon"):
            values["gcs_token"] = "anon"  # an emulator checks no credentials
        return cls(**values)

    def replace(self, **changes: Any) -> Storage:
        """A copy with ``changes`` applied (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ never print secrets

    def __repr__(self) -> str:
        shown = []
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if v == f.default:
                continue
            if f.name in _SECRET_FIELDS and v not in _NOT_SECRET_TOKENS:
                shown.append(f"{f.name}={HIDDEN!r}")
            elif f.name.endswith("_url"):
                shown.append(f"{f.name}={redact_url(v)!r}")
            else:
                shown.append(f"{f.name}={v!r}")
        return f"Storage({', '.join(shown)})"

    __str__ = __repr__

    def redact(self, text: str) -> str:
        """``text`` with every secret of this value (and the endpoints' passwords) replaced by ``***``."""
        text = str(text)
        for url in (self.s3_endpoint_url, self.gcs_endpoint_url):
            if url and redact_url(url) != url:
                text = text.replace(url, redact_url(url) or "")
                user_info = urlsplit(url).netloc.rsplit("@", 1)[0]
                text = text.replace(user_info, HIDDEN)
        for name in _SECRET_FIELDS:
            v = getattr(self, name)
            if v and len(v) >= 4 and v not in _NOT_SECRET_TOKENS:
                text = text.replace(v, HIDDEN)
        return text

    # ------------------------------------------------------------------ client options

    def fsspec_options(self, protocol: str) -> dict:
        """The keyword arguments of fsspec's filesystem for ``protocol`` under this value
        (contains secrets: never log it)."""
        if protocol == "s3":
            config: dict = {
                "connect_timeout": CONNECT_TIMEOUT_S,
                "read_timeout": READ_TIMEOUT_S,
                # botocore retries (standard mode: throttling, 5xx, connection errors); s3fs's
                # own loop is turned off (see ``filesystem``), so the two do not multiply.
                "retries": {"max_attempts": RETRY_ATTEMPTS, "mode": "standard"},
                # the endpoint is this value's, never $AWS_ENDPOINT_URL read behind its back
                "ignore_configured_endpoint_urls": True,
            }
            opts: dict = {"config_kwargs": config}
            client: dict = {}
            if self.s3_endpoint_url:
                client["endpoint_url"] = self.s3_endpoint_url
            if self.s3_region:
                client["region_name"] = self.s3_region
            if client:
                opts["client_kwargs"] = client
            if self.anon:
                opts["anon"] = True
            if self.s3_key:
                opts.update(key=self.s3_key, secret=self.s3_secret)
                if self.s3_session_token:
                    opts["token"] = self.s3_session_token
            if self.s3_profile:
                opts["profile"] = self.s3_profile
            return opts
        if protocol in ("gs", "gcs"):
            opts = {"endpoint_url": self.gcs_endpoint_url or GCS_DEFAULT_ENDPOINT}
            token = "anon" if self.anon else self.gcs_token
            if token:
                opts["token"] = token
            if self.gcs_project:
                opts["project"] = self.gcs_project
            return opts
        return {}

    # ------------------------------------------------------------------ operations

    def filesystem(self, url: str) -> fsspec.AbstractFileSystem:
        """The fsspec filesystem of ``url`` under this value (cached per value and protocol)."""
        return _filesystem(self, protocol(url), os.getpid())

    def _call(self, url: str, fn, *args, what: str = ""):
        """``call`` on ``url``'s client; a refused access as ``AccessDenied`` naming the URL, the
        endpoint and whose credentials were refused (never the credentials themselves)."""
        try:
            return call(url, fn, *args, what=what)
        except PermissionError as e:
            if isinstance(e, AccessDenied):
                raise
            raise AccessDenied(errno.EACCES, self.denied_message(url, e)) from None

    def denied_message(self, url: str, exc: BaseException) -> str:
        """One line on a refused access to ``url``: where, whose credentials, the store's words (redacted)."""
        endpoint = self.s3_endpoint_url if protocol(url) == "s3" else self.gcs_endpoint_url
        if self.anon:
            who = "anonymous access"
        elif self.s3_key and protocol(url) == "s3":
            who = f"the S3 key {HIDDEN}"
        elif self.s3_profile and protocol(url) == "s3":
            who = f"the AWS profile {self.s3_profile!r}"
        elif self.gcs_token and protocol(url) in ("gs", "gcs"):
            who = "the configured GCS token"
        else:
            who = "the default credential chain"
        said = self.redact(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)[:200]
        at = f" at {redact_url(endpoint)}" if endpoint else ""
        return f"access to {url}{at} denied ({said}) with {who}: check the credentials and the bucket policy"

    def exists(self, url: str) -> bool:
        """True when ``url`` exists."""
        return self.filesystem(url).exists(url)

    def read_bytes(self, url: str) -> bytes:
        """The bytes of ``url``."""
        if is_remote(url):
            return self._call(url, self.filesystem(url).cat_file, url, what=f"read {url}")
        with open(url, "rb") as fh:
            return fh.read()

    def makedirs(self, url: str) -> None:
        """Create a local folder and its parents (no-op for URLs: object stores have no folders)."""
        if not is_remote(url):
            os.makedirs(url, exist_ok=True)

    def write_bytes_atomic(self, url: str, data: bytes) -> None:
        """Write ``data`` so that ``url`` never exists half-written.

        Local: a temp file beside it, fsync, ``os.replace``. Object stores: a single PUT is
        already atomic (the object appears whole or not at all).
        """
        url = str(url)
        if is_remote(url):
            self._call(url, self.filesystem(url).pipe_file, url, data, what=f"write {url}")
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

    def sha256_file(self, url: str, chunk: int = 8 << 20) -> str:
        """Hex SHA-256 of the object at ``url``, read in chunks."""
        h = hashlib.sha256()
        with self.filesystem(url).open(url, "rb") as fh:
            while True:
                b = fh.read(chunk)
                if not b:
                    break
                h.update(b)
        return h.hexdigest()

    def upload_file(self, local: str, url: str) -> None:
        """Copy a local file to ``url`` (one PUT, or a multipart upload completed at once), retried."""
        if is_remote(url):
            if fastget.enabled(self, url):
                self._call(url, fastget.put_file, self, local, url, what=f"upload {url}")
            else:
                self._call(url, self.filesystem(url).put_file, local, url, what=f"upload {url}")
        else:
            with open(local, "rb") as fh:
                self.write_bytes_atomic(url, fh.read())

    def upload_tree(self, local_dir: str, url: str) -> int:
        """Copy every file below ``local_dir`` to the same relative paths below ``url``; returns the count."""
        n = 0
        for d, _, files in os.walk(local_dir):
            for f in sorted(files):
                full = os.path.join(d, f)
                rel = os.path.relpath(full, local_dir).replace(os.sep, "/")
                self.upload_file(full, join(url, rel))
                n += 1
        return n

    def download_file(self, url: str, local: str) -> None:
        """Copy ``url`` to a local path (written whole, then renamed), retried; FileNotFoundError if absent."""
        os.makedirs(os.path.dirname(os.path.abspath(local)) or ".", exist_ok=True)
        tmp = f"{local}.part-{uuid.uuid4().hex}"
        try:
            if is_remote(url):
                self._call(url, self.filesystem(url).get_file, url, tmp, what=f"download {url}")
            else:
                with open(url, "rb") as src, open(tmp, "wb") as dst:
                    dst.write(src.read())
            os.replace(tmp, local)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def fast_get_enabled(self, url: str) -> bool:
        """True when whole-object reads of ``url`` go through obstore (``s3://``, enabled, region known)."""
        return fastget.enabled(self, url)

    def get_many(self, urls: list[str], max_bytes: int | None = None) -> dict[str, bytes | BaseException]:
        """Fetch ``s3://`` URLs concurrently through obstore; per URL its bytes or the exception."""
        return fastget.get_many(self, urls, max_bytes)

    def probe(self) -> Storage:
        """Fail in seconds when nothing answers at a custom endpoint (one TCP connect each); returns self."""
        for url, flag in ((self.s3_endpoint_url, "--s3_endpoint_url"), (self.gcs_endpoint_url, "--gcs_endpoint_url")):
            if url:
                try:
                    probe_endpoint(url)
                except ConnectionRefusedError as e:
                    raise EndpointRefused(
                        e.errno or errno.ECONNREFUSED, self.redact(e.strerror or str(e)), flag
                    ) from None
        return self


@functools.lru_cache(maxsize=64)
def _filesystem(st: Storage, proto: str, pid: int) -> fsspec.AbstractFileSystem:
    """One filesystem per (value, protocol, process): equal values share it, different ones never do."""
    opts = st.fsspec_options(proto)
    if proto in ("gs", "gcs"):
        # The plain GCS client: gcsfs's experimental one probes a bucket's type over gRPC,
        # which an emulator never answers (and it is chosen by an environment variable).
        from gcsfs.core import GCSFileSystem

        return GCSFileSystem(skip_instance_cache=True, **opts)
    fs = fsspec.filesystem(proto, skip_instance_cache=True, **opts)
    if proto == "s3":
        fs.retries = 1  # s3fs: botocore retries (configured); s3fs's own loop would multiply them
    return fs


# --------------------------------------------------------------------------- paths


def protocol(url: str) -> str:
    """The fsspec protocol of ``url`` (``file`` for a local path)."""
    url = str(url)
    return url.split("://", 1)[0] if "://" in url else "file"


def is_remote(url: str) -> bool:
    """True unless ``url`` is a local path."""
    return protocol(url) not in ("file", "local")


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


def call(url: str, fn, *args, what: str = ""):
    """``fn(*args)`` on ``url``'s client with one retry layer: the client's own where it has
    one (botocore / gcsfs, configured by ``Storage.fsspec_options``), else ``retry``."""
    if protocol(url) in CLIENT_RETRIES:
        return fn(*args)
    return retry(fn, *args, what=what or url)


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()
