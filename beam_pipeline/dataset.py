"""``ConvertDataset``: metadata rows in, the complete dataset folder out, inside any Beam pipeline.

The composite groups the rows by shard, checks them, computes the band statistics of the
training split (or takes given ones), writes every shard and then finalises (dead letters,
statistics, histograms, TFMD schema, TFDS files, manifest, optionally the report) as its last
step, the way Beam's file sinks finalise. It returns a singleton PCollection holding the
manifest (the ``dataset.json`` dict). ``benbeam convert`` is a user of it: its statistics job
is ``ComputeStatistics`` and its write job ``ConvertDataset(..., statistics=...)``.

No step reads a side input: singletons (shard counts, statistics) are joined by key
(``WithSingleton``) and finalize gathers everything under one key, because the DaskRunner
computes a side input's upstream again inside each task that reads it, where its ParDos
repeat earlier outputs (seen as a wrong normalisation).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import KW_ONLY, dataclass
from typing import Any

import apache_beam as beam

from bigearthnet_beam.beam_pipeline import finalize as fin
from bigearthnet_beam.schemas import manifest as manifest_schema
from bigearthnet_beam.schemas.errors import InputError
from bigearthnet_beam.transforms import outdir, storage
from bigearthnet_beam.transforms.carried import carried
from bigearthnet_beam.transforms.patch import DEFAULT_DECODE_TIMEOUT
from bigearthnet_beam.transforms.ptransforms import CheckShards, ComputeBandStats, GroupByShard, WriteShards
from bigearthnet_beam.transforms.shard_writer import ShardConfig
from bigearthnet_beam.transforms.statistics import DEFAULT_CLIP_PERCENTILES, stats_from_acc
from bigearthnet_beam.transforms.storage import Storage

COMMAND = "benbeam convert"  # the output folder's marker: ConvertDataset and `benbeam convert` write the same
DEFAULT_SPLITS = ("train", "validation", "test")
DEFAULT_SHARD_SIZE = 180  # ~150 MB float32 shards (~820 KB per patch)


def check_options(splits, frac, stats_fraction, shard_size, clip_percentiles, stats) -> None:
    """Refuse conversion options that cannot work (InputError saying which and why)."""
    for s in splits:
        try:
            manifest_schema.check_split(s)
        except ValueError as e:
            raise InputError(str(e)) from None
    if not 0 < frac <= 1:
        raise InputError(f"--frac must be in (0, 1], got {frac}")
    if not 0 < stats_fraction <= 1:
        raise InputError(f"--stats_fraction must be in (0, 1], got {stats_fraction}")
    if shard_size < 1:
        raise InputError("--shard_size must be at least 1")
    lo, hi = clip_percentiles
    if not 0 <= lo < hi <= 100:
        raise InputError(f"--clip_percentiles must satisfy 0 <= LO < HI <= 100, got {lo} {hi}")
    if "train" not in splits and not stats:
        raise InputError(
            "statistics are computed on the training split, which is not selected: add 'train' "
            "to --splits or pass --stats with the stats.json of an earlier run"
        )


# --------------------------------------------------------------------------- what went in


def row_digest(row: dict) -> int:
    """A row's content (without ``_source``/``_row``) as a 256-bit integer."""
    body = {k: v for k, v in row.items() if k not in ("_source", "_row")}
    text = json.dumps(body, sort_keys=True, ensure_ascii=True, default=repr)
    return int.from_bytes(hashlib.sha256(text.encode()).digest(), "big")


class RowsDigestFn(beam.CombineFn):
    """Per metadata source: the rows received and a digest of their content that does not depend
    on their order (the sum of the rows' sha256 modulo 2**256) — the manifest's ``input``."""

    def create_accumulator(self):
        """Source -> [rows, digest sum]."""
        return {}

    def add_input(self, acc, row):
        """Count a row and add its digest."""
        n, h = acc.get(row.get("_source", 0), (0, 0))
        acc[row.get("_source", 0)] = (n + 1, (h + row_digest(row)) % (1 << 256))
        return acc

    def merge_accumulators(self, accs):
        """Sum counts and digests per source."""
        out: dict = {}
        for acc in accs:
            for src, (n, h) in acc.items():
                m, g = out.get(src, (0, 0))
                out[src] = (m + n, (g + h) % (1 << 256))
        return out

    def extract_output(self, acc):
        """``[{"source", "rows", "rows_sha256"}]`` sorted by source."""
        return [{"source": s, "rows": n, "rows_sha256": f"{h:064x}"} for s, (n, h) in sorted(acc.items())]


# --------------------------------------------------------------------------- steps


def _start(_, out: str, st: Storage) -> bool:
    """Before any shard is written (a step of the pipeline: building the graph touches no storage):
    ``out`` must be new, empty or an earlier conversion's (nothing else there is touched); mark it
    as ours; a manifest (and run record) of an earlier run must not outlive this one."""
    with carried():
        outdir.check(out, COMMAND, st)
    outdir.mark(out, COMMAND, st)
    for name in (manifest_schema.MANIFEST, manifest_schema.RUN_JSON):
        url = storage.join(out, name)
        if st.exists(url):
            st.filesystem(url).rm(url)
    return True


def _stats_and_histograms(acc, clip: bool, clip_percentiles) -> tuple[dict, bytes]:
    """(statistics document, histograms.npz bytes) of the training split's accumulator."""
    from bigearthnet_beam.transforms.histogram import to_npz_bytes

    with carried():
        return stats_from_acc(acc, clip, clip_percentiles), to_npz_bytes(acc)


def _finalize_all(keyed, *, st, report, **kw) -> dict:
    """``finalize`` of everything the steps produced (the statistics and the rows' description
    included: no side input), gathered under one key; the manifest dict."""
    items = list(keyed[1])
    (stats_doc, hist), meta_info = _one(items, "stats"), _one(items, "meta")
    with carried():
        man = fin.finalize(
            None,
            shards=[v for t, v in items if t == "shard"],
            dead=[v for t, v in items if t == "dead"],
            selected=dict(v for t, v in items if t == "selected"),
            stats_doc=stats_doc,
            histogram_npz=hist,
            meta_info=meta_info,
            st=st,
            **kw,
        )
        if report:
            from bigearthnet_beam.beam_pipeline.report import write_report

            write_report(kw["out"], st=st)
    return man


def _one(items, tag: str):
    """The one value tagged ``tag``."""
    values = [v for t, v in items if t == tag]
    if len(values) != 1:
        raise AssertionError(f"finalize expected one {tag!r}, got {len(values)}")
    return values[0]


def _with_histograms(stats) -> tuple[dict, bytes]:
    """A statistics document alone, or with its histograms.npz bytes, as (document, bytes)."""
    return (stats, b"") if isinstance(stats, dict) else (stats[0], stats[1])


def _tag(t: str):
    return lambda v: (t, v)


@dataclass
class _ShardStage(beam.PTransform):
    """The options every stage that groups and checks metadata rows by shard takes (those of
    ``ConvertDataset`` and ``ComputeStatistics``), checked once when the transform is built."""

    root: str
    _: KW_ONLY
    storage: Storage | None = None
    splits: tuple[str, ...] = DEFAULT_SPLITS
    frac: float = 1.0
    shard_size: int = DEFAULT_SHARD_SIZE
    resampling: str = "bilinear"
    stats_fraction: float = 1.0
    decode_timeout: float | None = DEFAULT_DECODE_TIMEOUT
    cache: Any = None
    objects: Any = None

    def __post_init__(self) -> None:
        super().__init__()
        self.splits = tuple(self.splits)
        self._check()

    def _check(self) -> None:
        check_options(self.splits, self.frac, self.stats_fraction, self.shard_size, DEFAULT_CLIP_PERCENTILES, None)

    def _st(self) -> Storage:
        return self.storage if self.storage is not None else Storage()

    def _checked(self, rows):
        """Rows grouped by shard and checked: ``CheckShards``' tagged outputs."""
        homes = rows | "GroupByShard" >> GroupByShard(self.root, self.splits, self.frac, self.shard_size)
        return homes | "CheckShards" >> CheckShards(self.root, self.splits, self.frac)


@dataclass
class ConvertDataset(_ShardStage):
    """Metadata rows (``ReadMetadata``'s dicts) -> the complete dataset folder ``out``: shards,
    ``stats.json``, ``histograms.npz``, ``failures.jsonl``, ``schema.pbtxt``, the TFDS files,
    ``dataset.json`` and (``report``) ``report.html``. Returns a singleton PCollection of the manifest dict.

    Options as ``benbeam convert``'s flags: ``splits``, ``frac``, ``shard_size``, ``resampling``,
    ``compression``, ``image_dtype`` (``--dtype``), ``clip`` (not ``--no_clip``), ``clip_percentiles``,
    ``stats`` (an earlier run's stats.json or dataset.json), ``stats_fraction``, ``decode_timeout``.
    ``statistics``: statistics computed before, instead of in the pipeline — a statistics document
    (what ``StatisticsCombineFn`` gives), a (document, histograms.npz bytes) pair (the CLI's
    statistics job), or a singleton PCollection of either; ``cache`` / ``objects``: the CLI's
    object cache and archive packs.
    """

    out: str
    _: KW_ONLY
    compression: str = "none"
    image_dtype: str = "float32"
    clip: bool = True
    clip_percentiles: tuple[float, float] = DEFAULT_CLIP_PERCENTILES
    stats: str | None = None
    report: bool = True
    encoding: str = "normalized"  # "raw": each band losslessly at its own resolution (docs/raw-records.md)
    statistics: Any = None  # a statistics document, (document, histograms.npz bytes), or a singleton PCollection

    def _check(self) -> None:
        self.clip_percentiles = (float(self.clip_percentiles[0]), float(self.clip_percentiles[1]))
        check_options(self.splits, self.frac, self.stats_fraction, self.shard_size, self.clip_percentiles, self.stats)

    def shard_config(self) -> ShardConfig:
        """What the per-shard steps share."""
        return ShardConfig(
            None,
            self.out,
            self.resampling,
            self.compression,
            self.image_dtype,
            self._st(),
            self.decode_timeout,
            self.cache,
            objects=self.objects,
            encoding=self.encoding,
        )

    def options(self) -> dict:
        """The options the manifest records (never credentials: the storage is not among them)."""
        opts = {
            "root": self.root,
            "out": self.out,
            "splits": list(self.splits),
            "frac": self.frac,
            "resampling": self.resampling,
            "shard_size": self.shard_size,
            "compression": self.compression,
            "image_dtype": self.image_dtype,
            "clip_percentiles": list(self.clip_percentiles),
            "clip": self.clip,
            "stats": self.stats,
            "stats_fraction": self.stats_fraction,
        }
        if self.encoding != "normalized":  # recorded only when chosen: the default's manifest is unchanged
            opts["encoding"] = self.encoding
        return opts

    def expand(self, rows):
        """Group, check, (compute statistics,) write, finalise; the manifest."""
        from bigearthnet_beam.beam_pipeline.stats_pass import stats_from_file

        st = self._st()
        config = self.shard_config()
        checked = self._checked(rows)
        stats: Any
        if isinstance(self.statistics, beam.pvalue.PCollection):  # e.g. of StatisticsCombineFn
            stats = self.statistics | "GivenStatistics" >> beam.Map(_with_histograms)
        elif self.statistics is not None:
            stats = _with_histograms(self.statistics)
        elif self.stats:
            stats = (stats_from_file(self.stats, self.clip, self.clip_percentiles, st), b"")
        else:
            stats = (
                checked["shards"]
                | "ComputeBandStats" >> ComputeBandStats(config, self.stats_fraction)
                | "Statistics" >> beam.Map(_stats_and_histograms, self.clip, self.clip_percentiles)
            )
        known = isinstance(stats, tuple)
        norm = stats[0]["normalization"] if known else stats | "Norm" >> beam.Map(lambda s: s[0]["normalization"])
        started = rows.pipeline | "Once" >> beam.Create([None]) | "Start" >> beam.Map(_start, self.out, st)
        written = checked["shards"] | "WriteShards" >> WriteShards(config, norm, (started,))
        meta = rows | "DescribeRows" >> beam.CombineGlobally(RowsDigestFn())
        stats_pc = stats if not known else rows.pipeline | "KnownStatistics" >> beam.Create([stats])
        return (
            (
                started | "TagStart" >> beam.Map(_tag("start")),
                stats_pc | "TagStats" >> beam.Map(_tag("stats")),
                meta | "TagMeta" >> beam.Map(_tag("meta")),
                checked["dead"] | "TagCheckDead" >> beam.Map(_tag("dead")),
                written["dead"] | "TagWriteDead" >> beam.Map(_tag("dead")),
                written["shards"] | "TagShards" >> beam.Map(_tag("shard")),
                checked["selected"] | "TagSelected" >> beam.Map(_tag("selected")),
            )
            | "Everything" >> beam.Flatten()
            | "OneKey" >> beam.Map(lambda v: (0, v))
            | "Gather" >> beam.GroupByKey()
            | "Finalize"
            >> beam.Map(
                _finalize_all,
                st=st,
                report=self.report,
                out=self.out,
                options=self.options(),
                compression=self.compression,
                image_dtype=config.stored_dtype,
            )
        )


@dataclass
class ComputeStatistics(_ShardStage):
    """Metadata rows -> one ``BandStatsAccumulator`` over the training split's patches, exactly
    what ``ConvertDataset`` normalises with (``transforms.statistics.stats_from_acc`` turns it
    into ``stats.json``). Options as ``ConvertDataset``'s."""

    def expand(self, rows):
        """The combined accumulator of the training shards."""
        config = ShardConfig(
            None,
            resampling=self.resampling,
            storage=self._st(),
            decode_timeout=self.decode_timeout,
            cache=self.cache,
            objects=self.objects,
        )
        return self._checked(rows)["shards"] | "ComputeBandStats" >> ComputeBandStats(config, self.stats_fraction)
