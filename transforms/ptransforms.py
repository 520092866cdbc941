"""The Beam PTransforms of the conversion pipeline. Each is thin: the logic lives in plain
modules (metadata, patch, histogram, normalize, encode) that import no Beam.

Only references cross the stage boundaries of a conversion: shard keys, dead letters, small
per-shard accumulators and shard descriptions. Each stage derives a shard's metadata rows
from its key (``transforms.plan``); pixels are decoded, normalised, encoded and written
inside one DoFn per shard, so nothing large, and nothing per patch, is shuffled or
materialised. (``CheckRows``, per row, serves ``benbeam validate``.)
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Iterable

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics

from schemas import failures as F
from schemas import manifest as M
from schemas.classes import CLASS_INDEX, IGNORE_INDEX, NUM_CLASSES, multi_hot
from transforms import metadata as md
from transforms import storage
from transforms.patch import DEFAULT_DECODE_TIMEOUT
from transforms.plan import INVALID, SELECTED, RowPlan, check_row_tagged, dedupe_tagged

LOG = logging.getLogger("benbeam")
NAMESPACE = "benbeam"
DEAD = "dead"
MAIN = "main"


def _count(name: str, n: int = 1) -> None:
    Metrics.counter(NAMESPACE, name).inc(n)


# Multiple outputs travel as (tag, value) pairs split by Filter steps, not as Beam's tagged
# outputs: every runner executes this the same way (the DaskRunner misroutes tagged outputs).


@dataclass
class Demux(beam.PTransform):
    """Split a PCollection of ``(tag, value)`` pairs into ``{tag: PCollection of values}``."""

    tags: tuple[str, ...]

    def expand(self, pairs):
        return {t: (pairs
                    | f"Only{t.capitalize()}" >> beam.Filter(lambda kv, t=t: kv[0] == t)
                    | f"Value{t.capitalize()}" >> beam.Map(lambda kv: kv[1]))
                for t in self.tags}


# --------------------------------------------------------------------------- metadata


def _read_source(source: tuple[int, str]) -> Iterable[Any]:
    index, url = source
    table, sha = md.read_table(url)
    rows = md.table_rows(table, source=index)
    _count("metadata_rows_read", len(rows))
    yield ("info", {"source": index, "path": url, "sha256": sha, "rows": len(rows)})
    for r in rows:
        yield (MAIN, r)


@dataclass
class ReadMetadata(beam.PTransform):
    """Read one or more metadata parquet files (local or URL) into row dicts.

    Outputs: main = rows (each tagged with _source/_row), ``info`` = one
    {path, sha256, rows} per file.
    """

    urls: tuple[str, ...]
    storage_options: dict = field(default_factory=dict)

    def expand(self, pbegin):
        opts = self.storage_options

        def read(source) -> Iterable[Any]:
            storage.set_options(opts)
            yield from _read_source(source)

        out = (
            pbegin
            | "Sources" >> beam.Create(list(enumerate(self.urls)))
            | "Read" >> beam.FlatMap(read)
            | "Outputs" >> Demux((MAIN, "info"))
        )
        rows = out[MAIN] | "Spread" >> beam.Reshuffle()
        return {"rows": rows, "info": out["info"]}


def _count_dead(d: dict) -> dict:
    _count(f"failed_{d['stage']}_{d['reason']}")
    return d


@dataclass
class CheckRows(beam.PTransform):
    """Sample (``frac``), select splits, validate and de-duplicate metadata rows.

    Outputs: ``patches`` (clean records), ``dead`` (dead letters), ``selected`` (the
    split of every selected row: the accounting input).
    """

    root: str | None
    splits: tuple[str, ...]
    frac: float = 1.0

    def expand(self, rows):
        checked = (rows
                   | "Check" >> beam.FlatMap(check_row_tagged, self.root, self.splits, self.frac)
                   | "CheckOutputs" >> Demux((MAIN, DEAD, SELECTED)))
        unique = (
            checked[MAIN]
            | "GroupById" >> beam.GroupByKey()
            | "Dedupe" >> beam.FlatMap(dedupe_tagged)
            | "DedupeOutputs" >> Demux((MAIN, DEAD))
        )
        dead = ((checked[DEAD], unique[DEAD]) | "AllRowDead" >> beam.Flatten()
                | "CountDead" >> beam.Map(_count_dead))
        return {"patches": unique[MAIN], "dead": dead, "selected": checked["selected"]}


# --------------------------------------------------------------------------- sharding


class CheckShardFn(beam.DoFn):
    """Per shard key of a RowPlan: its rows checked and de-duplicated. Outputs the key if
    the shard has clean patches, a dead letter per bad row, ``(SELECTED, (split, n))``."""

    def __init__(self, plan: RowPlan, storage_options: dict):
        self.plan = plan
        self.storage_options = storage_options

    def setup(self):
        storage.set_options(self.storage_options)

    def process(self, home):
        selected, dead, clean = self.plan.check(home)
        for split, n in sorted(selected.items()):
            yield (SELECTED, (split, n))
        for d in dead:
            yield (DEAD, _count_dead(d))
        if clean:
            if tuple(home) == INVALID:
                raise AssertionError(f"rows without a shard passed the checks: {clean[:1]}")
            yield (MAIN, tuple(home))


@dataclass
class PlannedShards(beam.PTransform):
    """The shards of a RowPlan, checked where the rows are read: no per-patch element
    crosses a stage boundary. Outputs: ``shards`` (keys (split, index, count) of shards with
    clean patches), ``dead`` (dead letters), ``selected`` ((split, selected rows))."""

    plan: RowPlan
    storage_options: dict = field(default_factory=dict)

    def expand(self, pbegin):
        out = (pbegin
               | "Shards" >> beam.Create(self.plan.homes())
               | "Check" >> beam.ParDo(CheckShardFn(self.plan, self.storage_options))
               | "CheckOutputs" >> Demux((MAIN, DEAD, SELECTED)))
        selected = out[SELECTED] | "SelectedPerSplit" >> beam.CombinePerKey(sum)
        return {"shards": out[MAIN], "dead": out[DEAD], "selected": selected}


# --------------------------------------------------------------------------- per-patch work


def _fetch(rec: dict) -> dict[str, bytes]:
    """The 15 objects of a patch; raises PatchError (and only PatchError)."""
    from transforms.patch import fetch_objects

    try:
        return fetch_objects(md.record_urls(rec), root=rec.get("root"))
    except F.PatchError:
        raise
    except Exception as e:  # noqa: BLE001 - an unexpected storage error is this patch's failure
        raise F.PatchError(F.FETCH, "read_error", f"unexpected {type(e).__name__}: {e}") from None


def _decode(rec: dict, objects: dict[str, bytes], resampling: str, decode_timeout):
    """``decode_patch`` of a record (raises PatchError only: decode_patch guarantees it)."""
    from transforms.patch import decode_patch

    return decode_patch(rec["patch_id"], objects, resampling=resampling, timeout=decode_timeout)


def load_patch(rec: dict, resampling: str, decode_timeout: float | None = DEFAULT_DECODE_TIMEOUT):
    """Fetch and decode one patch; raises PatchError."""
    return _decode(rec, _fetch(rec), resampling, decode_timeout)


def _fetch_cached(rec: dict, cache, keep: bool) -> tuple[dict[str, bytes] | F.PatchError, str | None]:
    """A patch's objects (or its PatchError) and the name of the cache counter to count.
    With a ``cache``: ``keep`` stores what was fetched there; otherwise the cache is read
    first (and the stored copy deleted). Runs on fetch threads: Beam counts only in the
    DoFn's thread, so the caller counts."""
    if cache is not None and not keep:
        objects = cache.take(rec["patch_id"])
        if objects is not None:
            return objects, "object_cache_hits"
    try:
        objects = _fetch(rec)
    except F.PatchError as e:
        return e, None
    if cache is not None and keep:
        return objects, "object_cache_puts" if cache.put(rec["patch_id"], objects) else "object_cache_full"
    return objects, None


READ_AHEAD = 4  # patches whose objects are fetched while the current one is decoded


def loaded_patches(recs, resampling: str, decode_timeout, read_ahead: int = READ_AHEAD, cache=None,
                   keep: bool = False):
    """``(rec, DecodedPatch | PatchError)`` for each record, in order.

    The objects of the next ``read_ahead`` patches are fetched on threads while the current
    patch is decoded, so that a worker's CPU is not idle while an object store answers
    (fetching is I/O: file reads and HTTP GETs release the GIL). Order and results are those
    of fetching and decoding one patch after the other. ``cache`` / ``keep``: see
    ``_fetch_cached`` (a ``transforms.objcache.PatchCache``).
    """
    from concurrent.futures import ThreadPoolExecutor

    recs = list(recs)

    def decoded(rec, fetched):
        objects, counter = fetched
        if counter:
            _count(counter)
        if isinstance(objects, F.PatchError):
            return objects
        try:
            return _decode(rec, objects, resampling, decode_timeout)
        except F.PatchError as e:
            return e

    if read_ahead <= 0 or len(recs) < 2:
        for rec in recs:
            yield rec, decoded(rec, _fetch_cached(rec, cache, keep))
        return

    with ThreadPoolExecutor(max_workers=read_ahead, thread_name_prefix="benbeam-fetch") as pool:
        pending = [pool.submit(_fetch_cached, r, cache, keep) for r in recs[:read_ahead]]
        for i, rec in enumerate(recs):
            objects = pending[i].result()
            pending[i] = None  # release the bytes as soon as they are decoded
            if i + read_ahead < len(recs):
                pending.append(pool.submit(_fetch_cached, recs[i + read_ahead], cache, keep))
            yield rec, decoded(rec, objects)


class ShardStatsFn(beam.DoFn):
    """Per training shard key: a partial band-statistics accumulator over the shard's
    records (from ``plan``; failures are skipped here, the writer reports them)."""

    def __init__(self, plan: RowPlan, resampling: str, stats_fraction: float, storage_options: dict,
                 decode_timeout: float | None = DEFAULT_DECODE_TIMEOUT, cache=None):
        self.plan = plan
        self.cache = cache
        self.resampling = resampling
        self.stats_fraction = stats_fraction
        self.storage_options = storage_options
        self.decode_timeout = decode_timeout

    def setup(self):
        storage.set_options(self.storage_options)
        from transforms.histogram import BandStats

        self.stats = BandStats()

    def process(self, element):
        split, index, count = element
        t0 = time.perf_counter()
        recs = self.plan.records(element)
        acc = self.stats.create()
        chosen = [r for r in recs if md.sampled(r["patch_id"], self.stats_fraction, salt="stats")]
        for rec, p in loaded_patches(chosen, self.resampling, self.decode_timeout, cache=self.cache, keep=True):
            if isinstance(p, F.PatchError):
                continue
            self.stats.add(acc, p.pixels)
            _count("stats_patches")
        LOG.info("statistics: %s shard %d of %d: %d patches in %.1f s", split, index + 1, count, len(recs),
                 time.perf_counter() - t0)
        yield self.stats.seal(acc)


def _fanout_key(acc, fanout: int) -> int:
    """A stable key in [0, fanout) from a partial accumulator's content (merging is exact and
    order-independent, so any grouping gives the same result; this one is reproducible)."""
    import hashlib

    return int.from_bytes(hashlib.sha256(np.asarray(acc.count, dtype="<i8").tobytes()).digest()[:4], "little") % max(1, fanout)


@dataclass
class ComputeBandStats(beam.PTransform):
    """Dataset-wide band statistics over the training shards: per-shard partial
    accumulators combined globally with fanout. Output: one accumulator."""

    plan: RowPlan
    resampling: str
    stats_fraction: float = 1.0
    storage_options: dict = field(default_factory=dict)
    fanout: int = 16
    decode_timeout: float | None = DEFAULT_DECODE_TIMEOUT
    cache: Any = None  # a PatchCache: keep the fetched objects of training patches for the writer

    def expand(self, shards):
        from transforms.combiners import BandStatsCombineFn

        return (
            shards
            | "TrainOnly" >> beam.Filter(lambda key: key[0] == "train")
            | "PartialStats" >> beam.ParDo(ShardStatsFn(self.plan, self.resampling, self.stats_fraction, self.storage_options,
                                                             self.decode_timeout, self.cache))
            # Two-level combine with a deterministic fanout key of our own (what
            # CombineGlobally.with_fanout does with random keys, which the DaskRunner cannot run).
            | "FanoutKey" >> beam.Map(lambda acc: (_fanout_key(acc, self.fanout), acc))
            | "CombinePartials" >> beam.CombinePerKey(BandStatsCombineFn())
            | "DropKey" >> beam.Values()
            | "CombineStats" >> beam.CombineGlobally(BandStatsCombineFn())
        )


class WriteShardFn(beam.DoFn):
    """Decode, normalise, encode and write one shard (its key's records from ``plan``), in
    patch-id order, atomically.

    Main output: a shard description; ``dead`` output: dead letters.
    """

    def __init__(self, plan: RowPlan, out: str, resampling: str, compression: str, image_dtype: str, storage_options: dict,
                 decode_timeout: float | None = DEFAULT_DECODE_TIMEOUT, cache=None):
        self.plan = plan
        self.cache = cache
        self.out = out
        self.resampling = resampling
        self.decode_timeout = decode_timeout
        self.compression = compression
        self.image_dtype = image_dtype
        self.storage_options = storage_options

    def setup(self):
        storage.set_options(self.storage_options)

    def process(self, element, norm):
        from transforms.encode import ShardWriter, encode_example
        from transforms.normalize import NormParams, normalize

        split, index, count = element
        recs = self.plan.records(element)
        params = NormParams.from_dict(norm)
        rel = M.shard_path(split, index, count, self.compression)
        t0 = time.perf_counter()
        class_pixels = np.zeros(256, dtype=np.int64)
        disagreements = 0
        dead = []
        with ShardWriter(storage.join(self.out, rel), self.compression) as writer:
            for rec, p in loaded_patches(recs, self.resampling, self.decode_timeout, cache=self.cache):
                if isinstance(p, F.PatchError):
                    _count(f"failed_{p.stage}_{p.reason}")
                    dead.append(p.record(rec["patch_id"], split))
                    continue
                try:
                    normalize(p.pixels, params, inplace=True)
                    s2, s1 = p.s2, p.s1
                    if self.image_dtype == "float16":
                        s2, s1 = s2.astype(np.float16), s1.astype(np.float16)
                    data = encode_example(rec["patch_id"], s2, s1, p.label, multi_hot(rec["labels"]), split,
                                          rec["country"], image_dtype=self.image_dtype)
                except Exception as e:  # noqa: BLE001
                    _count("failed_write_encode_error")
                    dead.append(F.dead_letter(rec["patch_id"], F.WRITE, "encode_error",
                                              f"{type(e).__name__}: {e}", split))
                    continue
                writer.write(data)
                counts = np.bincount(p.label.ravel(), minlength=256)
                class_pixels += counts
                present = {int(c) for c in np.flatnonzero(counts[:NUM_CLASSES])}
                if present != {CLASS_INDEX[lab] for lab in rec["labels"]}:
                    disagreements += 1
                _count("patches_written")
            info = writer.close()
        dt = time.perf_counter() - t0
        n = info["records"]
        _count("shards_written")
        _count("bytes_written", info["bytes"])
        LOG.info("wrote %s: %d patches, %d failed, %.1f patches/s", rel, n, len(dead), n / dt if dt else 0.0)
        for d in dead:
            yield (DEAD, d)
        yield (MAIN, {
            "split": split, "index": index, "count": count, "path": rel,
            "records": n, "bytes": info["bytes"], "sha256": info["sha256"],
            "class_pixel_counts": class_pixels[:NUM_CLASSES].tolist(),
            "ignored_pixels": int(class_pixels[IGNORE_INDEX]),
            "label_disagreements": disagreements, "seconds": dt,
        })


@dataclass
class WriteShards(beam.PTransform):
    """Write every shard key of ``plan``; ``norm`` is a singleton PCollection of NormParams dicts."""

    plan: RowPlan
    out: str
    norm: beam.pvalue.PCollection
    resampling: str
    compression: str
    image_dtype: str
    storage_options: dict = field(default_factory=dict)
    decode_timeout: float | None = DEFAULT_DECODE_TIMEOUT
    cache: Any = None  # a PatchCache: read training patches kept by the statistics pass

    def expand(self, shards):
        fn = WriteShardFn(self.plan, self.out, self.resampling, self.compression, self.image_dtype, self.storage_options,
                          self.decode_timeout, self.cache)
        out = (shards
               | "Write" >> beam.ParDo(fn, beam.pvalue.AsSingleton(self.norm))
               | "WriteOutputs" >> Demux((MAIN, DEAD)))
        return {"shards": out[MAIN], "dead": out[DEAD]}
