"""The Beam PTransforms of the conversion pipeline. Each is thin: the logic lives in plain
modules (metadata, patch, histogram, normalize, encode) that import no Beam.

Metadata rows are grouped by the shard they belong to (``GroupByShard``, the rule of
``transforms.plan``), checked (``CheckShards``), and each shard's records travel as one
element; pixels are decoded, normalised, encoded and written inside one DoFn per shard
(``transforms.shard_writer``, configured by one ``ShardConfig``), so no pixel is shuffled.
(``CheckRows``, per row, serves ``benbeam validate``; ``DecodePatches``, per row, a user
who wants the decoded patches.)
"""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass
from typing import Any, Iterable

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics

from bigearthnet_beam.transforms import metadata as md
from bigearthnet_beam.transforms import storage
from bigearthnet_beam.transforms.carried import carried
from bigearthnet_beam.transforms.plan import (
    INVALID,
    SELECTED,
    check_row_tagged,
    check_rows,
    dedupe_tagged,
    homes_of_group,
    route_row,
    row_order,
    shard_counts,
)
from bigearthnet_beam.transforms.shard_writer import ShardConfig, shard_statistics, write_shard
from bigearthnet_beam.transforms.storage import Storage

NAMESPACE = "benbeam"
DEAD = "dead"
MAIN = "main"


def _count(name: str, n: int = 1) -> None:
    """Add ``n`` to the Beam counter ``benbeam/<name>``."""
    Metrics.counter(NAMESPACE, name).inc(n)


# Multiple outputs travel as (tag, value) pairs split by Filter steps, not as Beam's tagged
# outputs: every runner executes this the same way (the DaskRunner misroutes tagged outputs).


@dataclass
class Demux(beam.PTransform):
    """Split a PCollection of ``(tag, value)`` pairs into ``{tag: PCollection of values}``."""

    tags: tuple[str, ...]

    def expand(self, pairs):
        """One PCollection of values per tag."""
        return {
            t: (
                pairs
                | f"Only{t.capitalize()}" >> beam.Filter(lambda kv, t=t: kv[0] == t)
                | f"Value{t.capitalize()}" >> beam.Map(lambda kv: kv[1])
            )
            for t in self.tags
        }


BUCKETS = 64  # how many ways a singleton is sent to the elements it is joined with


def _bucket(key) -> int:
    """A bucket in [0, BUCKETS) from a key's repr (the same in every process)."""
    import hashlib

    return int.from_bytes(hashlib.sha256(repr(key).encode()).digest()[:4], "little") % BUCKETS


def _pairs(kv) -> Iterable[tuple]:
    _, groups = kv
    values = list(groups["value"])
    elements = list(groups["element"])
    if elements and len(values) != 1:
        raise AssertionError(f"a singleton joined with {len(elements)} elements has {len(values)} values")
    for e in elements:
        yield (e, values[0])


@dataclass
class WithSingleton(beam.PTransform):
    """``pcoll`` -> ``(element, value)`` with the one element of the PCollection ``singleton``, joined
    by key instead of read as a side input: the DaskRunner computes a side input's upstream again
    inside each task that reads it, where its ParDos repeat earlier outputs. The value is sent to
    ``BUCKETS`` keys; ``key(element)`` picks an element's."""

    singleton: Any  # beam.pvalue.PCollection
    key: Any = None  # element -> what its bucket is derived from (default: the element)

    def expand(self, pcoll):
        """The elements paired with the singleton's value."""
        key = self.key or (lambda e: e)
        return (
            {
                "element": pcoll | "ByBucket" >> beam.Map(lambda e: (_bucket(key(e)), e)),
                "value": self.singleton | "ToBuckets" >> beam.FlatMap(lambda v: [(b, v) for b in range(BUCKETS)]),
            }
            | "Join" >> beam.CoGroupByKey()
            | "Pairs" >> beam.FlatMap(_pairs)
        )


# --------------------------------------------------------------------------- metadata


def _read_source(source: tuple[int, str], st: storage.Storage | None = None) -> Iterable[Any]:
    index, url = source
    table, sha = md.read_table(url, st)
    rows = md.table_rows(table, source=index)
    _count("metadata_rows_read", len(rows))
    yield ("info", {"source": index, "path": url, "sha256": sha, "rows": len(rows)})
    for r in rows:
        yield (MAIN, r)


@dataclass
class ReadMetadata(beam.PTransform):
    """Read metadata parquet files (local paths or URLs) into rows: one plain dict per row.

    A row holds the parquet's columns (``patch_id``, ``labels``, ``split``, ``country``,
    ``s1_name``, ...) plus ``_source`` (the file's index in ``url_or_urls``) and ``_row``
    (the row's index in its file). ``with_info``: return ``{"rows": rows, "info": one
    {source, path, sha256, rows} per file}`` instead.
    """

    url_or_urls: str | tuple[str, ...]
    _: KW_ONLY
    storage: Storage | None = None
    with_info: bool = False

    @property
    def urls(self) -> tuple[str, ...]:
        """The metadata files, in ``_source`` order."""
        u = self.url_or_urls
        return (u,) if isinstance(u, str) else tuple(u)

    def expand(self, pbegin):
        """The rows (and, ``with_info``, per-file info) of the metadata files."""
        st = self.storage if self.storage is not None else storage.Storage()
        out = (
            pbegin
            | "Sources" >> beam.Create(list(enumerate(self.urls)))
            | "Read" >> beam.FlatMap(_read_source, st)
            | "Outputs" >> Demux((MAIN, "info"))
        )
        rows = out[MAIN] | "Spread" >> beam.Reshuffle()
        return {"rows": rows, "info": out["info"]} if self.with_info else rows


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
        """Checked unique rows (``patches``), dead letters and selected counts per split."""
        checked = (
            rows
            | "Check" >> beam.FlatMap(check_row_tagged, self.root, self.splits, self.frac)
            | "CheckOutputs" >> Demux((MAIN, DEAD, SELECTED))
        )
        unique = (
            checked[MAIN]
            | "GroupById" >> beam.GroupByKey()
            | "Dedupe" >> beam.FlatMap(dedupe_tagged)
            | "DedupeOutputs" >> Demux((MAIN, DEAD))
        )
        dead = (checked[DEAD], unique[DEAD]) | "AllRowDead" >> beam.Flatten() | "CountDead" >> beam.Map(_count_dead)
        return {"patches": unique[MAIN], "dead": dead, "selected": checked["selected"]}


# --------------------------------------------------------------------------- sharding

ShardRows = tuple  # (home (split, index, count), [metadata rows])
ShardRecords = tuple  # (shard key (split, index, count), [clean records sorted by patch id])


@dataclass
class GroupByShard(beam.PTransform):
    """Metadata rows -> ``(home, rows)``: every selected row (``--frac``, ``--splits``) with the
    other rows of its shard, the way ``RowPlan`` assigns them (``transforms.plan``). The rows
    of a patch id are grouped first, so duplicates share a home; the shard count of a split
    comes from its selected rows (a small singleton, joined by key: ``WithSingleton``)."""

    root: str | None
    splits: tuple[str, ...]
    frac: float = 1.0
    shard_size: int = 1000

    def expand(self, rows):
        """``(home, rows)`` per shard with rows, ``INVALID`` for rows that can only fail."""
        routed = (
            rows
            | "Route" >> beam.FlatMap(route_row, self.splits, self.frac)
            | "Routes" >> Demux(("count", "pid", "home"))
        )
        n_shards = (
            routed["count"]
            | "CountPerSplit" >> beam.combiners.Count.PerElement()
            | "Counts" >> beam.combiners.ToList()
            | "ShardCounts" >> beam.Map(lambda pairs, size: shard_counts(dict(pairs), size), self.shard_size)
        )
        by_pid = (
            routed["pid"]
            | "GroupById" >> beam.GroupByKey()
            | "WithShardCounts" >> WithSingleton(n_shards, key=lambda kv: kv[0])
            | "Homes"
            >> beam.FlatMap(
                lambda pair, splits, frac, root: homes_of_group(pair[0][0], pair[0][1], splits, frac, root, pair[1]),
                self.splits,
                self.frac,
                self.root,
            )
        )
        return (
            (by_pid, routed["home"])
            | "AllHomes" >> beam.Flatten()
            | "GroupByHome" >> beam.GroupByKey()
            | "Sorted" >> beam.MapTuple(lambda home, rs: (tuple(home), sorted(rs, key=row_order)))
        )


def check_home(kv, root, splits, frac) -> Iterable[tuple[str, Any]]:
    """One home's rows checked and de-duplicated: tagged selected counts, dead letters and,
    when the shard has clean patches, ``(MAIN, (key, records))``."""
    home, rows = kv
    selected, dead, clean = check_rows(rows, root, splits, frac)
    for split, n in sorted(selected.items()):
        yield (SELECTED, (split, n))
    for d in dead:
        yield (DEAD, _count_dead(d))
    if clean:
        if tuple(home) == INVALID:
            raise AssertionError(f"rows without a shard passed the checks: {clean[:1]}")
        yield (MAIN, (tuple(home), clean))


@dataclass
class CheckShards(beam.PTransform):
    """``(home, rows)`` -> ``shards`` (``(key, records)`` of shards with clean patches), ``dead``
    (dead letters) and ``selected`` (``(split, selected rows)``)."""

    root: str | None
    splits: tuple[str, ...]
    frac: float = 1.0

    def expand(self, homes):
        """Checked shards, dead letters and selected counts per split."""
        out = (
            homes
            | "Check" >> beam.FlatMap(check_home, self.root, self.splits, self.frac)
            | "CheckOutputs" >> Demux((MAIN, DEAD, SELECTED))
        )
        selected = out[SELECTED] | "SelectedPerSplit" >> beam.CombinePerKey(sum)
        return {"shards": out[MAIN], "dead": out[DEAD], "selected": selected}


# --------------------------------------------------------------------------- per-shard work


class ShardStatsFn(beam.DoFn):
    """Per training shard ``(key, records)``: ``shard_statistics``, a partial band-statistics accumulator."""

    def __init__(self, config: ShardConfig, stats_fraction: float):
        self.config = config
        self.stats_fraction = stats_fraction

    def setup(self):
        """Make the band statistics in the worker (the storage is the config's)."""
        from bigearthnet_beam.transforms.histogram import BandStats

        self.stats = BandStats()

    def process(self, shard):
        """The partial statistics of one training shard."""
        key, records = shard
        with carried():
            yield shard_statistics(self.config, key, self.stats, self.stats_fraction, count=_count, records=records)


def _fanout_key(acc, fanout: int) -> int:
    """A stable key in [0, fanout) from a partial accumulator's content (merging is exact and
    order-independent, so any grouping gives the same result; this one is reproducible)."""
    import hashlib

    digest = hashlib.sha256(np.asarray(acc.count, dtype="<i8").tobytes()).digest()
    return int.from_bytes(digest[:4], "little") % max(1, fanout)


@dataclass
class ComputeBandStats(beam.PTransform):
    """Dataset-wide band statistics over the training shards ``(key, records)``: per-shard
    partial accumulators combined globally with fanout. Output: one accumulator."""

    config: ShardConfig
    stats_fraction: float = 1.0
    fanout: int = 16

    def expand(self, shards):
        """The combined band statistics of the training shards."""
        from bigearthnet_beam.transforms.combiners import BandStatsCombineFn

        return (
            shards
            | "TrainOnly" >> beam.Filter(lambda shard: shard[0][0] == "train")
            | "PartialStats" >> beam.ParDo(ShardStatsFn(self.config, self.stats_fraction))
            # Two-level combine with a deterministic fanout key of our own (what
            # CombineGlobally.with_fanout does with random keys, which the DaskRunner cannot run).
            | "FanoutKey" >> beam.Map(lambda acc: (_fanout_key(acc, self.fanout), acc))
            | "CombinePartials" >> beam.CombinePerKey(BandStatsCombineFn())
            | "DropKey" >> beam.Values()
            | "CombineStats" >> beam.CombineGlobally(BandStatsCombineFn())
        )


class WriteShardFn(beam.DoFn):
    """Per ``((key, records), norm)``: ``write_shard``. Outputs ``(MAIN, ShardRecord)`` and ``(DEAD, dead letter)``."""

    def __init__(self, config: ShardConfig):
        self.config = config

    def process(self, element):
        """Write one shard; yields its dead letters and its record."""
        (key, records), norm = element
        with carried():
            record, dead = write_shard(self.config, key, norm, count=_count, records=records)
        yield from ((DEAD, d) for d in dead)
        yield (MAIN, record)


@dataclass
class WriteShards(beam.PTransform):
    """Write every shard ``(key, records)``; ``norm`` is a NormParams dict (or a singleton
    PCollection of one); ``ready``: singleton PCollections that must be computed before any
    shard is written. Outputs ``shards`` (ShardRecords) and ``dead``."""

    config: ShardConfig
    norm: Any  # dict | beam.pvalue.PCollection
    ready: tuple = ()

    def expand(self, shards):
        """Shard records and dead letters."""
        for i, r in enumerate(self.ready):
            shards = shards | f"After{i}" >> WithSingleton(r, key=lambda s: s[0]) | f"Drop{i}" >> beam.Keys()
        if isinstance(self.norm, dict):
            with_norm = shards | "WithNorm" >> beam.Map(lambda s, norm: (s, norm), self.norm)
        else:
            with_norm = shards | "WithNorm" >> WithSingleton(self.norm, key=lambda s: s[0])
        out = (
            with_norm
            | "Reshard" >> beam.Reshuffle()
            | "Write" >> beam.ParDo(WriteShardFn(self.config))
            | "WriteOutputs" >> Demux((MAIN, DEAD))
        )
        return {"shards": out[MAIN], "dead": out[DEAD]}


# --------------------------------------------------------------------------- patches


def decode_row(row: dict, root, resampling: str, decode_timeout, st) -> Iterable[tuple[str, Any]]:
    """A row checked, fetched and decoded: ``(MAIN, (patch_id, DecodedPatch))`` or ``(DEAD, dead letter)``."""
    from bigearthnet_beam.schemas import failures
    from bigearthnet_beam.transforms.shard_reader import load_patch

    split = md.row_split(row)
    try:
        rec = md.check_row(row, root)
        patch = load_patch(rec, resampling, decode_timeout, st)
    except failures.PatchError as e:
        yield (DEAD, _count_dead(e.record(md.row_key(row), split)))
        return
    yield (MAIN, (rec["patch_id"], patch))


@dataclass
class DecodePatches(beam.PTransform):
    """Metadata rows -> ``patches``: ``(patch_id, DecodedPatch)`` (``.pixels``: float32 (120, 120, 14)
    on the 10 m grid, the bands of ``schemas.bands``; ``.label``: the CLC map), and ``dead``:
    dead letters of rows that fail the checks, the fetch or the decode."""

    root: str
    _: KW_ONLY
    storage: Storage | None = None
    resampling: str = "bilinear"
    decode_timeout: float | None = None

    def expand(self, rows):
        """Decoded patches and dead letters."""
        from bigearthnet_beam.transforms.patch import DEFAULT_DECODE_TIMEOUT

        timeout = DEFAULT_DECODE_TIMEOUT if self.decode_timeout is None else self.decode_timeout
        st = self.storage if self.storage is not None else storage.Storage()
        out = (
            rows
            | "Decode" >> beam.FlatMap(decode_row, self.root, self.resampling, timeout, st)
            | "Outputs" >> Demux((MAIN, DEAD))
        )
        return {"patches": out[MAIN], "dead": out[DEAD]}
