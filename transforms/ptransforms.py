"""The Beam PTransforms of the conversion pipeline. Each is thin: the logic lives in plain
modules (metadata, patch, histogram, normalize, encode) that import no Beam.

Only references cross the stage boundaries of a conversion: shard keys, dead letters, small
per-shard accumulators and shard records. Each stage derives a shard's metadata rows
from its key (``transforms.plan``); pixels are decoded, normalised, encoded and written
inside one DoFn per shard (``transforms.shard_writer``, configured by one ``ShardConfig``),
so nothing large, and nothing per patch, is shuffled or materialised. (``CheckRows``, per
row, serves ``benbeam validate``.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics

from bigearthnet_beam.transforms import metadata as md
from bigearthnet_beam.transforms import storage
from bigearthnet_beam.transforms.plan import INVALID, SELECTED, check_row_tagged, dedupe_tagged
from bigearthnet_beam.transforms.shard_writer import ShardConfig, shard_statistics, write_shard

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
    """Read one or more metadata parquet files (local or URL) into row dicts.

    Outputs: main = rows (each tagged with _source/_row), ``info`` = one
    {path, sha256, rows} per file.
    """

    urls: tuple[str, ...]
    storage: storage.Storage = storage.Storage()

    def expand(self, pbegin):
        """Rows, dead letters and per-source info of the metadata files."""
        st = self.storage

        def read(source) -> Iterable[Any]:
            yield from _read_source(source, st)

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


class CheckShardFn(beam.DoFn):
    """Per shard key of the config's RowPlan: its rows checked and de-duplicated. Outputs the
    key if the shard has clean patches, a dead letter per bad row, ``(SELECTED, (split, n))``."""

    def __init__(self, config: ShardConfig):
        self.config = config

    def process(self, home):
        """Yield tagged selected counts, dead letters and the shard key when its rows are clean."""
        selected, dead, clean = self.config.plan.check(home)
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
    """The shards of the config's RowPlan, checked where the rows are read: no per-patch element
    crosses a stage boundary. Outputs: ``shards`` (keys (split, index, count) of shards with
    clean patches), ``dead`` (dead letters), ``selected`` ((split, selected rows))."""

    config: ShardConfig

    def expand(self, pbegin):
        """Shard keys, dead letters and selected counts per split."""
        out = (
            pbegin
            | "Shards" >> beam.Create(self.config.plan.homes())
            | "Check" >> beam.ParDo(CheckShardFn(self.config))
            | "CheckOutputs" >> Demux((MAIN, DEAD, SELECTED))
        )
        selected = out[SELECTED] | "SelectedPerSplit" >> beam.CombinePerKey(sum)
        return {"shards": out[MAIN], "dead": out[DEAD], "selected": selected}


# --------------------------------------------------------------------------- per-shard work


class ShardStatsFn(beam.DoFn):
    """Per training shard key: ``shard_statistics``, a partial band-statistics accumulator."""

    def __init__(self, config: ShardConfig, stats_fraction: float):
        self.config = config
        self.stats_fraction = stats_fraction

    def setup(self):
        """Make the band statistics in the worker (the storage is the config's)."""
        from bigearthnet_beam.transforms.histogram import BandStats

        self.stats = BandStats()

    def process(self, key):
        """The partial statistics of one training shard."""
        yield shard_statistics(self.config, key, self.stats, self.stats_fraction, count=_count)


def _fanout_key(acc, fanout: int) -> int:
    """A stable key in [0, fanout) from a partial accumulator's content (merging is exact and
    order-independent, so any grouping gives the same result; this one is reproducible)."""
    import hashlib

    digest = hashlib.sha256(np.asarray(acc.count, dtype="<i8").tobytes()).digest()
    return int.from_bytes(digest[:4], "little") % max(1, fanout)


@dataclass
class ComputeBandStats(beam.PTransform):
    """Dataset-wide band statistics over the training shards: per-shard partial
    accumulators combined globally with fanout. Output: one accumulator."""

    config: ShardConfig
    stats_fraction: float = 1.0
    fanout: int = 16

    def expand(self, shards):
        """The combined band statistics of the training shards."""
        from bigearthnet_beam.transforms.combiners import BandStatsCombineFn

        return (
            shards
            | "TrainOnly" >> beam.Filter(lambda key: key[0] == "train")
            | "PartialStats" >> beam.ParDo(ShardStatsFn(self.config, self.stats_fraction))
            # Two-level combine with a deterministic fanout key of our own (what
            # CombineGlobally.with_fanout does with random keys, which the DaskRunner cannot run).
            | "FanoutKey" >> beam.Map(lambda acc: (_fanout_key(acc, self.fanout), acc))
            | "CombinePartials" >> beam.CombinePerKey(BandStatsCombineFn())
            | "DropKey" >> beam.Values()
            | "CombineStats" >> beam.CombineGlobally(BandStatsCombineFn())
        )


class WriteShardFn(beam.DoFn):
    """Per shard key: ``write_shard``. Main output: its ShardRecord; ``dead`` output: dead letters."""

    def __init__(self, config: ShardConfig):
        self.config = config

    def process(self, key, norm):
        """Write one shard; yields its dead letters and its record."""
        record, dead = write_shard(self.config, key, norm, count=_count)
        yield from ((DEAD, d) for d in dead)
        yield (MAIN, record)


@dataclass
class WriteShards(beam.PTransform):
    """Write every shard key of the config's plan; ``norm`` is a NormParams dict (or a
    singleton PCollection of one, read as a side input)."""

    config: ShardConfig
    norm: Any  # dict | beam.pvalue.PCollection

    def expand(self, shards):
        """Shard records and dead letters."""
        out = (
            shards
            | "Write"
            >> beam.ParDo(
                WriteShardFn(self.config),
                self.norm if isinstance(self.norm, dict) else beam.pvalue.AsSingleton(self.norm),
            )
            | "WriteOutputs" >> Demux((MAIN, DEAD))
        )
        return {"shards": out[MAIN], "dead": out[DEAD]}
