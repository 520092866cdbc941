"""One patch: fetch its 15 objects, decode, check against the reBEN format, resample to
the 10 m grid and map the reference map to class indices (no Beam).

Every failure is a ``PatchError`` whose reason comes from ``schemas.failures`` and whose
detail names the object, what was expected and what was found.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np

from bigearthnet_beam.schemas import failures, tfrecord
from bigearthnet_beam.schemas.bands import BAND_BY_NAME, PATCH_SIZE, S1_NAMES, S2_NAMES
from bigearthnet_beam.schemas.classes import map_reference, unknown_codes
from bigearthnet_beam.schemas.naming import OBJECT_KEYS, REFERENCE_MAP_KEY, parse_patch_id
from bigearthnet_beam.transforms import containment, storage
from bigearthnet_beam.transforms.decode import Raster, decode_geotiff
from bigearthnet_beam.transforms.resample import upsample


@dataclass
class DecodedPatch:
    """One decoded, checked patch on the 10 m grid: its pixels, reference-map codes and class labels
    (decoded without resampling: ``pixels`` is None and ``native`` holds the bands as they are)."""

    patch_id: str
    pixels: np.ndarray | None  # float32 (120, 120, 14): S2 DN (schemas.bands.S2_NAMES) then VV, VH dB, 10 m grid
    codes: np.ndarray  # uint16 (120, 120) CLC codes
    label: np.ndarray  # uint8 (120, 120) class index, 255 = ignore
    native: dict | None = None  # tfrecord.RAW_IMAGE_FEATURES -> CHW arrays at native resolution (uint16, float32)

    @property
    def s2(self) -> np.ndarray:
        """float32 (120, 120, 12) view: raw DN resampled to the 10 m grid."""
        return self.pixels[..., : len(S2_NAMES)]

    @property
    def s1(self) -> np.ndarray:
        """float32 (120, 120, 2) view: VV, VH in dB."""
        return self.pixels[..., len(S2_NAMES) :]


def fetch_objects(
    urls: dict[str, str], fs=None, root: str | None = None, st: storage.Storage | None = None
) -> dict[str, bytes]:
    """Read the 15 objects of a patch. Remote objects are fetched concurrently in one
    bulk call (through ``fs``, else ``st``'s clients; default ``Storage()``); local files
    with plain reads. Every URL must lie under ``root``
    (``transforms.containment``: refused ones are never opened) and no object may exceed
    ``containment.MAX_OBJECT_BYTES``. Raises one PatchError listing every failing object."""
    keys = [k for k in OBJECT_KEYS if k in urls]
    # The root decides how objects are read (a URL of another scheme is refused, never fetched).
    first = root if root is not None else urls[keys[0]]
    out: dict[str, bytes] = {}
    errors: list[failures.PatchError] = []
    if fs is None and not storage.is_remote(first):
        for k in keys:
            try:
                out[k] = containment.read_local(urls[k], root, what=f"{k} object")
            except failures.PatchError as e:
                errors.append(e)
            except FileNotFoundError:
                errors.append(
                    failures.PatchError(failures.FETCH, "missing_object", f"{k} object {urls[k]} does not exist")
                )
            except OSError as e:
                errors.append(failures.PatchError(failures.FETCH, "read_error", f"{k} object {urls[k]}: {e}"))
    else:
        st = st if st is not None else storage.Storage()
        todo = []
        for k in keys:
            try:
                containment.check_url(urls[k], root, what=f"{k} object")
                todo.append(k)
            except failures.PatchError as e:
                errors.append(e)
        cap = containment.MAX_OBJECT_BYTES
        first = urls[todo[0]] if todo else first
        retried = fs is None and st.fast_get_enabled(first)
        if not todo:
            got = {}
        elif retried:  # s3://: concurrent GETs through obstore, each retried by obstore itself
            got = st.get_many([urls[k] for k in todo], max_bytes=cap)
        else:
            fs = fs or st.filesystem(first)
            try:  # each read capped one byte past the largest legitimate object
                got = fs.cat([urls[k] for k in todo], on_error="return", start=0, end=cap + 1)
            except Exception as e:  # noqa: BLE001 - the bulk call itself failed: fetch one by one below
                if not storage.is_transient(e):
                    raise failures.PatchError(failures.FETCH, "read_error", f"{type(e).__name__}: {e}") from None
                got = {}
        for k in todo:
            v = got.get(urls[k])
            if v is None:  # fsspec may strip the protocol from the keys
                v = got.get(urls[k].split("://", 1)[-1])
            if not retried and (v is None or (isinstance(v, BaseException) and storage.is_transient(v))):
                try:  # transient failure of the bulk fetch (or none reported): this object once more
                    v = storage.call(urls[k], fs.cat_file, urls[k], 0, cap + 1, what=f"read {urls[k]}")
                except Exception as e:  # noqa: BLE001 - reported as a dead letter below
                    v = e
            if isinstance(v, FileNotFoundError):
                errors.append(
                    failures.PatchError(failures.FETCH, "missing_object", f"{k} object {urls[k]} does not exist")
                )
            elif isinstance(v, PermissionError):
                errors.append(
                    failures.PatchError(
                        failures.FETCH,
                        "access_denied",
                        f"{k} object {urls[k]}: {v} (check the credentials and the bucket's permissions)",
                    )
                )
            elif isinstance(v, OverflowError):
                errors.append(
                    failures.PatchError(failures.FETCH, "object_too_large", f"{k} object: {v}; it was not read")
                )
            elif isinstance(v, BaseException):
                errors.append(
                    failures.PatchError(failures.FETCH, "read_error", f"{k} object {urls[k]}: {type(v).__name__}: {v}")
                )
            else:
                try:
                    out[k] = containment.check_size(urls[k], v, what=f"{k} object")
                except failures.PatchError as e:
                    errors.append(e)
    for k in keys:
        if k in out and len(out[k]) == 0:
            errors.append(failures.PatchError(failures.FETCH, "empty_object", f"{k} object {urls[k]} is 0 bytes"))
    if errors:
        # In object order, empty objects last: the first reason is what it was when fetching stopped there.
        order = {k: i for i, k in enumerate(keys)}
        errors.sort(
            key=lambda e: (
                e.reason == "empty_object",
                next((order[k] for k in keys if e.detail.startswith(k + " ")), len(keys)),
            )
        )
        raise failures.combine(errors)
    return out


def _check_raster(
    key: str, r: Raster, expect_size: int, expect_dtype: str, res: float, epsg: int, origin: tuple[float, float] | None
) -> None:
    if r.array.ndim != 2:
        raise failures.PatchError(
            failures.CHECK,
            "wrong_size",
            f"{key} decoded to an array of shape {r.array.shape}; expected one {expect_size}×{expect_size} band",
        )
    h, w = r.array.shape
    if (h, w) != (expect_size, expect_size):
        raise failures.PatchError(
            failures.CHECK,
            "wrong_size",
            f"{key} is {w}×{h} pixels; a {res:g} m band of a 1,200 m patch is {expect_size}×{expect_size}",
        )
    if r.array.dtype != np.dtype(expect_dtype):
        raise failures.PatchError(failures.CHECK, "wrong_dtype", f"{key} is {r.array.dtype}; expected {expect_dtype}")
    if r.epsg != epsg:
        raise failures.PatchError(
            failures.CHECK, "crs_mismatch", f"{key} has CRS EPSG:{r.epsg}; the patch's tile is in UTM zone EPSG:{epsg}"
        )
    x0, px, _, y0, _, py = r.transform
    if abs(px - res) > 1e-6 or abs(-py - res) > 1e-6:
        raise failures.PatchError(
            failures.CHECK, "grid_mismatch", f"{key} has pixel size {px:g}×{-py:g} m; expected {res:g} m"
        )
    if origin is not None and (abs(x0 - origin[0]) > 1e-3 or abs(y0 - origin[1]) > 1e-3):
        raise failures.PatchError(
            failures.CHECK,
            "grid_mismatch",
            f"{key} origin ({x0:.2f}, {y0:.2f}) differs from B02's ({origin[0]:.2f}, {origin[1]:.2f}): "
            "layers are not on the same grid",
        )


DEFAULT_DECODE_TIMEOUT = 30.0  # seconds per object; reBEN objects decode in well under 1 ms


class _Helper:
    """One daemon thread that runs submitted calls in turn (a daemon, unlike a
    ThreadPoolExecutor's threads, so a decode stuck in native code never blocks the
    process from exiting)."""

    def __init__(self):
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._run, name="benbeam-decode", daemon=True).start()

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            fut, fn, args = job
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn(*args))
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                fut.set_exception(e)

    def submit(self, fn, *args) -> Future:
        fut: Future = Future()
        self._jobs.put((fut, fn, args))
        return fut

    def stop(self) -> None:
        """End the thread after the jobs already submitted."""
        self._jobs.put(None)


class Watchdog:
    """Runs decodes in a helper thread and gives up on one that overruns its deadline.

    Owned by its caller (a DoFn holds one from ``setup``; ``decode_patch`` without one uses
    a helper for that call alone), never process-wide.

    Native decoders (GDAL) cannot be interrupted from Python, so a decode that hangs is
    abandoned: its thread is left to finish (or not) on its own, a fresh helper takes the
    next patches, and the patch becomes a ``decode_timeout`` dead letter. The worker goes on.
    Each calling thread has its own helper, so one hung decode never delays (or times out)
    another thread's patches.
    """

    def __init__(self):
        self._local = threading.local()

    def helper(self) -> _Helper:
        helper = getattr(self._local, "helper", None)
        if helper is None:
            helper = self._local.helper = _Helper()
        return helper

    def abandon(self, helper: _Helper) -> None:
        """Leave ``helper`` (stuck in a decode) behind: this thread's next decode gets a fresh one;
        the stuck thread ends if its decode ever returns."""
        if getattr(self._local, "helper", None) is helper:
            self._local.helper = None
        helper.stop()

    def close(self) -> None:
        """Let this thread's helper end once its current job is done."""
        helper = getattr(self._local, "helper", None)
        self._local.helper = None
        if helper is not None:
            helper.stop()


def decode_patch(
    patch_id: str,
    objects: dict[str, bytes],
    resampling: str = "bilinear",
    timeout: float | None = DEFAULT_DECODE_TIMEOUT,
    watchdog: Watchdog | None = None,
) -> DecodedPatch:
    """Decode and check the 15 objects of a patch; raises PatchError (and only PatchError:
    whatever corrupt bytes make a decoder raise becomes a ``decode_error``). ``resampling``
    None: no resampling, the bands kept at their native resolution (``DecodedPatch.native``).

    ``timeout``: seconds allowed for each object's decode (``None`` or 0: no limit); an
    object that takes longer makes the patch a ``decode_timeout`` dead letter. ``watchdog``:
    the caller's (its helper thread is reused across calls); None: one for this call alone.
    """
    if not timeout:
        return _guarded(patch_id, objects, resampling, None)
    if watchdog is None:
        own = Watchdog()
        try:
            return decode_patch(patch_id, objects, resampling, timeout, own)
        finally:
            own.close()
    progress = {"key": None, "since": time.monotonic()}
    helper = watchdog.helper()
    fut = helper.submit(_guarded, patch_id, objects, resampling, progress)
    while True:
        wait = progress["since"] + timeout - time.monotonic()
        if wait > 0:
            try:
                return fut.result(timeout=wait)
            except TimeoutError:
                continue  # the deadline may have moved on to the next object: look again
        if fut.done():
            return fut.result()
        watchdog.abandon(helper)
        raise failures.PatchError(
            failures.DECODE,
            "decode_timeout",
            f"{progress['key'] or 'patch'}: decoding took longer than {timeout:g} s and was abandoned "
            "(a corrupt or hostile file; --decode_timeout sets the limit)",
        )


def _guarded(patch_id: str, objects: dict[str, bytes], resampling: str, progress) -> DecodedPatch:
    try:
        return _decode_patch(patch_id, objects, resampling, progress)
    except failures.PatchError:
        raise
    except Exception as e:  # noqa: BLE001 - corrupt input must become a dead letter, not a crash
        raise failures.PatchError(failures.DECODE, "decode_error", f"unexpected {type(e).__name__}: {e}") from None


def _decode_all(objects: dict[str, bytes], progress) -> dict[str, Raster]:
    rasters = {}
    for k in OBJECT_KEYS:
        if progress is not None:
            progress["key"], progress["since"] = k, time.monotonic()
        rasters[k] = decode_geotiff(objects[k], k)
    if progress is not None:  # checks and resampling: a deadline of their own
        progress["key"], progress["since"] = "checks", time.monotonic()
    return rasters


def _decode_patch(patch_id: str, objects: dict[str, bytes], resampling: str, progress=None) -> DecodedPatch:
    epsg = parse_patch_id(patch_id).epsg
    rasters = _decode_all(objects, progress)
    ref = rasters["B02"]
    origin = (ref.transform[0], ref.transform[3])
    for k in OBJECT_KEYS:
        if k == REFERENCE_MAP_KEY:
            _check_raster(k, rasters[k], PATCH_SIZE, "uint16", 10.0, epsg, origin)
        else:
            band = BAND_BY_NAME[k]
            _check_raster(k, rasters[k], band.native_size, band.dtype, float(band.resolution_m), epsg, origin)

    keep_native = resampling is None
    pixels = np.empty((PATCH_SIZE, PATCH_SIZE, len(S2_NAMES) + len(S1_NAMES)), dtype=np.float32)
    s2 = pixels[..., : len(S2_NAMES)]
    by_factor: dict[int, list[int]] = {}
    for i, name in enumerate(S2_NAMES):
        arr = rasters[name].array
        if not arr.all():
            n = int(arr.size - np.count_nonzero(arr))
            raise failures.PatchError(
                failures.CHECK,
                "s2_nodata",
                f"{name} holds {n} nodata (0) pixels; reBEN patches contain no S2 nodata, so the file is defective",
            )
        factor = PATCH_SIZE // arr.shape[0]
        if keep_native:
            continue
        if factor == 1:
            s2[..., i] = arr
        else:
            by_factor.setdefault(factor, []).append(i)
    for factor, idx in by_factor.items():
        up = upsample(np.stack([rasters[S2_NAMES[i]].array for i in idx]), factor, resampling)
        for j, i in enumerate(idx):
            s2[..., i] = up[j]

    s1 = pixels[..., len(S2_NAMES) :]
    for i, name in enumerate(S1_NAMES):
        arr = rasters[name].array
        finite = np.isfinite(arr)
        if not finite.all():
            raise failures.PatchError(
                failures.CHECK, "s1_nan", f"{name} holds {int(arr.size - finite.sum())} NaN/infinite pixels"
            )
        if not keep_native:
            s1[..., i] = arr

    codes = rasters[REFERENCE_MAP_KEY].array
    bad = unknown_codes(codes)
    if bad:
        raise failures.PatchError(
            failures.CHECK,
            "unknown_clc_code",
            f"reference map holds code(s) {', '.join(map(str, bad[:5]))} outside the CLC table "
            "(schemas/data/clc_metadata.json)",
        )
    if keep_native:
        native = {feat: np.stack([rasters[n].array for n in names]) for feat, _, names in tfrecord.S2_GROUPS}
        native[tfrecord.S1_DB] = np.stack([rasters[n].array for n in S1_NAMES])
        return DecodedPatch(patch_id, None, codes, map_reference(codes), native)
    return DecodedPatch(patch_id, pixels, codes, map_reference(codes))
