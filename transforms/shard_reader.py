"""The patches of a shard, fetched ahead on threads and decoded in order (plain Python, no Beam).

``loaded_patches`` yields ``(record, DecodedPatch | PatchError)`` for each record: the
objects of the next few patches are fetched on threads while the current one is decoded.
Counting is the caller's: it passes a ``count(name, n=1)`` function (the Beam DoFns pass
their metrics counter), called only from the caller's thread.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator

from bigearthnet_beam.schemas import failures
from bigearthnet_beam.transforms import metadata as md
from bigearthnet_beam.transforms.patch import (
    DEFAULT_DECODE_TIMEOUT,
    DecodedPatch,
    Watchdog,
    decode_patch,
    fetch_objects,
)
from bigearthnet_beam.transforms.storage import Storage

READ_AHEAD = 4  # patches whose objects are fetched while the current one is decoded

Count = Callable[..., None]


def no_count(name: str, n: int = 1) -> None:
    """A ``count`` that counts nothing."""


def fetch(rec: dict, source=None, st: Storage | None = None) -> dict[str, bytes]:
    """The 15 objects of a patch (from its files under ``st``, or ``source(rec)``: an object source's
    fetcher, e.g. ``transforms.archive_packs.ShardObjects``); raises PatchError (and only PatchError)."""
    try:
        if source is not None:
            return source(rec)
        return fetch_objects(md.record_urls(rec), root=rec.get("root"), st=st)
    except failures.PatchError:
        raise
    except Exception as e:  # noqa: BLE001 - an unexpected storage error is this patch's failure
        raise failures.PatchError(failures.FETCH, "read_error", f"unexpected {type(e).__name__}: {e}") from None


def _decode(rec: dict, objects: dict[str, bytes], resampling: str, decode_timeout, watchdog=None) -> DecodedPatch:
    """``decode_patch`` of a record (raises PatchError only: decode_patch guarantees it)."""
    return decode_patch(rec["patch_id"], objects, resampling=resampling, timeout=decode_timeout, watchdog=watchdog)


def load_patch(
    rec: dict,
    resampling: str,
    decode_timeout: float | None = DEFAULT_DECODE_TIMEOUT,
    st: Storage | None = None,
    watchdog: Watchdog | None = None,
) -> DecodedPatch:
    """Fetch (under ``st``) and decode one patch; raises PatchError."""
    return _decode(rec, fetch(rec, st=st), resampling, decode_timeout, watchdog)


def _fetch_cached(
    rec: dict, cache, keep: bool, source=None, st: Storage | None = None
) -> tuple[dict[str, bytes] | failures.PatchError, str | None]:
    """A patch's objects (or its PatchError) and the name of the cache counter to count.
    With a ``cache``: ``keep`` stores what was fetched there; otherwise the cache is read
    first (and the stored copy deleted). Runs on fetch threads, so the caller counts."""
    if cache is not None and not keep:
        objects = cache.take(rec["patch_id"])
        if objects is not None:
            return objects, "object_cache_hits"
    try:
        objects = fetch(rec, source, st)
    except failures.PatchError as e:
        return e, None
    if cache is not None and keep:
        return objects, "object_cache_puts" if cache.put(rec["patch_id"], objects) else "object_cache_full"
    return objects, None


Loaded = tuple[dict, "DecodedPatch | failures.PatchError"]


def loaded_patches(
    recs: Iterable[dict],
    resampling: str,
    decode_timeout,
    read_ahead: int = READ_AHEAD,
    cache=None,
    keep: bool = False,
    count: Count = no_count,
    source=None,
    st: Storage | None = None,
    watchdog: Watchdog | None = None,
) -> Iterator[Loaded]:
    """``(rec, DecodedPatch | PatchError)`` for each record, in order.

    The objects of the next ``read_ahead`` patches are fetched on threads while the current
    patch is decoded, so that a worker's CPU is not idle while an object store answers
    (fetching is I/O: file reads and HTTP GETs release the GIL). Order and results are those
    of fetching and decoding one patch after the other. ``cache`` / ``keep``: see
    ``_fetch_cached`` (a ``transforms.objcache.PatchCache``); ``source``, ``st``: see ``fetch``;
    ``watchdog``: the caller's decode watchdog (None: one for this call).
    """
    if watchdog is None:
        own = Watchdog()
        try:
            yield from loaded_patches(recs, resampling, decode_timeout, read_ahead, cache, keep, count, source, st, own)
        finally:
            own.close()
        return
    recs = list(recs)

    def decoded(rec, fetched):
        objects, counter = fetched
        if counter:
            count(counter)
        if isinstance(objects, failures.PatchError):
            return objects
        try:
            return _decode(rec, objects, resampling, decode_timeout, watchdog)
        except failures.PatchError as e:
            return e

    if read_ahead <= 0 or len(recs) < 2:
        for rec in recs:
            yield rec, decoded(rec, _fetch_cached(rec, cache, keep, source, st))
        return

    with ThreadPoolExecutor(max_workers=read_ahead, thread_name_prefix="benbeam-fetch") as pool:
        pending = [pool.submit(_fetch_cached, r, cache, keep, source, st) for r in recs[:read_ahead]]
        for i, rec in enumerate(recs):
            objects = pending[i].result()
            pending[i] = None  # release the bytes as soon as they are decoded
            if i + read_ahead < len(recs):
                pending.append(pool.submit(_fetch_cached, recs[i + read_ahead], cache, keep, source, st))
            yield rec, decoded(rec, objects)
