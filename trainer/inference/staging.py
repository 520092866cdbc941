"""Where tiles come from and maps go: local folders, or ``s3://`` / ``gs://`` through a local
temporary folder (GDAL reads local files here, and the GeoTIFF writer writes them).

A remote tile is fetched into a folder that mirrors its layout, but only the files the
model's channels need: a GeoTIFF tile whole, from a ``.SAFE`` product its ``MTD_MSIL*.xml``
and the band files of the requested bands (the folders of the others are recreated empty,
so the product reads exactly as the full one would). A tile's maps are written locally and
uploaded when all are complete, the summary last, so a bucket never holds a
finished-looking but partial output. Every function takes the ``transforms.storage.Storage``
(``st``; default ``Storage()``) whose endpoints and credentials it uses.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import re
import shutil
import tempfile
from dataclasses import dataclass

from bigearthnet_beam.schemas.bands import S2_NAMES
from bigearthnet_beam.schemas.tiles import MTD_FILES, S1_SIDECAR
from bigearthnet_beam.trainer.inference.settings import SUMMARY, PredictEnvironmentError, PredictError
from bigearthnet_beam.trainer.tiles import BAND_EXTENSIONS, TILE_EXTENSIONS, find_tiles, is_tile_file
from bigearthnet_beam.transforms import storage

_SAFE_NAME = re.compile(r"S2[A-D]_MSI(?:L2A|L1C)_(\d{8}T\d{6})_N\d{4}_R\d{3}_(T\d{2}[A-Z]{3})_", re.ASCII)


def _store_call(url: str, fn, *args):
    """``fn(*args)`` on the store holding ``url``, its failures as one clear error: a missing
    object or access denied is the user's to fix (exit 2), anything else the environment's (3)."""
    try:
        return fn(*args)
    except FileNotFoundError:
        raise PredictError(f"{url} does not exist") from None
    except PermissionError as e:
        raise PredictError(f"access to {url} denied ({e}); check the credentials and the bucket policy") from None
    except Exception as e:  # noqa: BLE001 - an unreachable or failing store: the environment
        raise PredictEnvironmentError(
            f"cannot reach the object store for {url}: {type(e).__name__}: {str(e)[:300]}"
        ) from None


def _st(st: storage.Storage | None) -> storage.Storage:
    return st if st is not None else storage.Storage()


def exists(path: str, st: storage.Storage | None = None) -> bool:
    """Whether a local path or a URL exists (a URL: an object or a prefix holding objects)."""
    if not storage.is_remote(path):
        return os.path.exists(path)
    return bool(_store_call(path, _st(st).filesystem(path).exists, path))


def _name(url: str) -> str:
    return posixpath.basename(str(url).rstrip("/"))


def tiles_in(input_dir: str, st: storage.Storage | None = None) -> list[str]:
    """The tiles directly in a local folder or a bucket prefix, sorted by name (``.SAFE``
    products or folders holding ``GRANULE/``, and GeoTIFFs except ``*_s1`` / ``*_truth``
    sidecars); a path that is itself a tile gives [path]."""
    if not storage.is_remote(input_dir):
        if not os.path.isdir(input_dir):
            raise PredictError(f"--input_dir {input_dir} is not a folder")
        return find_tiles(input_dir)
    proto = storage.protocol(input_dir)
    fs = _st(st).filesystem(input_dir)
    root = input_dir.rstrip("/")
    if _name(root).upper().endswith(".SAFE") or _name(root).lower().endswith(TILE_EXTENSIONS):
        return [root] if exists(root) else []
    if not _store_call(input_dir, fs.isdir, root):
        raise PredictError(f"--input_dir {input_dir} is not a folder (no object below it)")
    out = []
    for e in sorted(_store_call(input_dir, fs.ls, root, True), key=lambda e: _name(e["name"])):
        name, url = _name(e["name"]), f"{proto}://{e['name'].rstrip('/')}"
        if e.get("type") == "directory":
            if name.upper().endswith(".SAFE") or _store_call(url, fs.exists, f"{url}/GRANULE"):
                out.append(url)
        elif is_tile_file(name):
            out.append(url)
    return out


def s1_sidecar(path: str, st: storage.Storage | None = None) -> str | None:
    """The S1 raster beside a tile, ``<dir>/T<tile>_<date>_s1.tif`` (the synth-tile layout),
    for a ``.SAFE`` folder (name parsed from the product name) or ``<stem>_s1.tif``."""
    base = _name(path)
    d = storage.parent(path) if storage.is_remote(path) else os.path.dirname(path.rstrip("/"))
    cands = []
    m = _SAFE_NAME.match(base)
    if m:
        cands.append(f"{m.group(2)}_{m.group(1)}{S1_SIDECAR}.tif")
    cands.append(f"{os.path.splitext(base)[0]}{S1_SIDECAR}.tif")
    for c in cands:
        p = storage.join(d, c)
        if (storage.is_remote(p) and exists(p, st)) or os.path.isfile(p):
            return p
    return None


def _band_file(rel: str, bands) -> bool:
    """Whether a file of a .SAFE product is the metadata or one of ``bands``' image files."""
    if rel in MTD_FILES:
        return True
    parts = rel.split("/")
    if len(parts) < 4 or parts[0] != "GRANULE" or parts[2] != "IMG_DATA":
        return False
    name = parts[-1]
    return name.lower().endswith(BAND_EXTENSIONS) and any(re.search(rf"_{b}(_\d+m)?\.", name, re.ASCII) for b in bands)


def fetch_tile(url: str, channels, dest_dir: str, st: storage.Storage | None = None) -> str:
    """Copy the parts of a remote tile that ``channels`` need into ``dest_dir``; returns the local path."""
    st = _st(st)
    fs = st.filesystem(url)
    root = url.rstrip("/")
    local = os.path.join(dest_dir, _name(root))
    if _name(root).lower().endswith(TILE_EXTENSIONS):
        _store_call(url, st.download_file, root, local)
        return local
    if not _store_call(url, fs.isdir, root):
        raise PredictError(f"tile {url} does not exist")
    bands = [c for c in channels if c in S2_NAMES]
    prefix = root.split("://", 1)[1] + "/"
    for obj in sorted(_store_call(url, fs.find, root)):
        rel = obj[len(prefix) :] if obj.startswith(prefix) else None
        if not rel:
            continue
        target = os.path.join(local, *rel.split("/"))
        os.makedirs(os.path.dirname(target), exist_ok=True)  # every folder, the unfetched bands' too
        if _band_file(rel, bands):
            _store_call(url, st.download_file, f"{root}/{rel}", target)
    return local


@dataclass
class Staged:
    """A tile as local files: ``path`` and ``s1`` to open; ``restore`` puts the URLs back into a message."""

    path: str
    s1: str | None
    urls: dict

    def restore(self, text: str) -> str:
        """``text`` with the local copies' paths replaced by the URLs they came from."""
        for local, url in self.urls.items():
            text = text.replace(local, url)
        return text


@contextlib.contextmanager
def local_tile(path: str, channels, s1: str | None = None, st: storage.Storage | None = None):
    """Yield a ``Staged`` tile: local paths as they are; a URL's needed files fetched into a
    temporary folder, removed on exit."""
    if not storage.is_remote(path) and not (s1 and storage.is_remote(s1)):
        yield Staged(path, s1, {})
        return
    stage = tempfile.mkdtemp(prefix="benbeam-tile-")
    try:
        urls = {}
        lpath = path
        if storage.is_remote(path):
            lpath = fetch_tile(path, channels, stage, st)
            urls[lpath] = path.rstrip("/")
        ls1 = s1
        if s1 and storage.is_remote(s1):
            ls1 = os.path.join(stage, "s1", _name(s1))
            _store_call(s1, _st(st).download_file, s1, ls1)
            urls[ls1] = s1
        yield Staged(lpath, ls1, urls)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def publish(local_dir: str, url: str, st: storage.Storage | None = None) -> list[str]:
    """Upload every file of ``local_dir`` below ``url`` (summaries last); returns the URLs."""
    files = sorted(
        os.path.relpath(os.path.join(d, f), local_dir).replace(os.sep, "/")
        for d, _, fs in os.walk(local_dir)
        for f in fs
    )
    files.sort(key=lambda rel: rel.endswith(("_summary.json", SUMMARY)))  # stable: summaries at the end
    out = []
    for rel in files:
        target = storage.join(url, rel)
        _store_call(target, _st(st).upload_file, os.path.join(local_dir, rel), target)
        out.append(target)
    return out


@contextlib.contextmanager
def local_folder(out: str, st: storage.Storage | None = None):
    """Yield a local folder to write into: ``out`` itself, or for a URL a temporary folder that
    is uploaded to ``out`` when the block completes (and removed either way)."""
    if not storage.is_remote(out):
        yield out
        return
    stage = tempfile.mkdtemp(prefix="benbeam-maps-")
    try:
        yield stage
        publish(stage, out, st)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def check_writable(out: str, st: storage.Storage | None = None) -> None:
    """Refuse an output folder or bucket prefix that cannot be written, before any work."""
    if storage.is_remote(out):
        probe = storage.join(out, f".benbeam-probe-{os.getpid()}")
        fs = _st(st).filesystem(out)
        _store_call(out, fs.pipe_file, probe, b"")
        _store_call(out, fs.rm_file, probe)
        return
    try:
        os.makedirs(out, exist_ok=True)
        probe = os.path.join(out, f".tmp-{os.getpid()}-probe")
        with open(probe, "w") as fh:
            fh.write("")
        os.remove(probe)
    except OSError as e:
        raise PredictError(f"cannot write to --out {out}: {e.strerror or e}") from None
