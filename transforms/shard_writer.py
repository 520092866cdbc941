"""The per-shard work of a conversion as plain functions (no Beam): fetch -> decode -> check ->
normalise -> encode -> write -> shard record, and a shard's partial band statistics.

``ShardConfig`` carries what every per-shard step shares (the plan, the output, how patches
are read and written); the Beam DoFns in ``transforms.ptransforms`` hold one and call
``write_shard`` / ``shard_statistics``. Counting goes through a ``count(name, n=1)``
function the caller passes (the DoFns pass their Beam metrics counter).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from bigearthnet_beam.schemas import failures, manifest, tfrecord
from bigearthnet_beam.schemas.classes import CLASS_INDEX, NUM_CLASSES, multi_hot
from bigearthnet_beam.transforms import metadata as md
from bigearthnet_beam.transforms import progress, storage
from bigearthnet_beam.transforms.encode import ShardWriter, encode_example, encode_raw_example
from bigearthnet_beam.transforms.normalize import NormParams, normalize
from bigearthnet_beam.transforms.patch import DEFAULT_DECODE_TIMEOUT, DecodedPatch
from bigearthnet_beam.transforms.plan import RowPlan
from bigearthnet_beam.transforms.shard_reader import READ_AHEAD, Count, loaded_patches, no_count

LOG = logging.getLogger("benbeam")

ShardKey = tuple[str, int, int]  # (split, index, count)


@dataclass(frozen=True)
class ShardConfig:
    """What the per-shard steps of a conversion share; pickles to the workers as it is."""

    plan: RowPlan | None = None  # None: the records come with each shard key (ConvertDataset)
    out: str = ""
    resampling: str = "bilinear"
    compression: str = "none"
    image_dtype: str = "float32"
    storage: storage.Storage = storage.Storage()
    decode_timeout: float | None = DEFAULT_DECODE_TIMEOUT
    cache: Any = None  # a transforms.objcache.PatchCache: training patches kept by the statistics pass
    read_ahead: int = READ_AHEAD
    objects: Any = (
        None  # an object source (transforms.archive_packs.PackObjects: ``.shard(key)`` -> fetcher); None: files
    )
    encoding: str = "normalized"  # tfrecord.ENCODINGS: "raw" writes the bands losslessly, not resampled

    def __post_init__(self):
        if self.encoding not in tfrecord.ENCODINGS:
            raise ValueError(f"encoding must be one of {tfrecord.ENCODINGS}, got {self.encoding!r}")

    @property
    def stored_dtype(self) -> str:
        """The manifest's ``image_dtype``: the image dtype, or ``tfrecord.RAW`` for the raw encoding."""
        return tfrecord.RAW if self.encoding == tfrecord.RAW else self.image_dtype

    @property
    def write_resampling(self) -> str | None:
        """The resampling of the write pass: None (native resolution) for the raw encoding."""
        return None if self.encoding == tfrecord.RAW else self.resampling

    def source(self, key: ShardKey):
        """The fetcher of a shard's objects (None: each patch's files)."""
        return self.objects.shard(key) if self.objects is not None else None


def encode_patch(rec: dict, patch: DecodedPatch, params: NormParams, split: str, image_dtype: str) -> bytes:
    """Normalise a decoded patch (in place) and serialise it as a ``tf.train.Example``; a patch
    decoded at native resolution (``image_dtype`` RAW) is serialised as it is (the raw encoding)."""
    if image_dtype == tfrecord.RAW:
        return encode_raw_example(
            rec["patch_id"], patch.native, patch.label, multi_hot(rec["labels"]), split, rec["country"]
        )
    normalize(patch.pixels, params, inplace=True)
    s2, s1 = patch.s2, patch.s1
    if image_dtype == "float16":
        s2, s1 = s2.astype(np.float16), s1.astype(np.float16)
    return encode_example(
        rec["patch_id"], s2, s1, patch.label, multi_hot(rec["labels"]), split, rec["country"], image_dtype=image_dtype
    )


def labels_agree(rec: dict, label_values: np.ndarray) -> bool:
    """Whether the classes present in a label map (its per-value pixel counts) are the record's labels."""
    present = {int(c) for c in np.flatnonzero(label_values[:NUM_CLASSES])}
    return present == {CLASS_INDEX[lab] for lab in rec["labels"]}


def write_shard(
    config: ShardConfig, key: ShardKey, norm: dict, count: Count = no_count, records: list[dict] | None = None
) -> tuple[manifest.ShardRecord, list[dict]]:
    """Decode, normalise, encode and write one shard (``records``, else the records of ``key`` in
    the plan), in patch-id order, atomically; its record and its dead letters. ``norm``: NormParams dict."""
    split, index, n_shards = key
    recs = config.plan.records(key) if records is None else records
    params = NormParams.from_dict(norm)
    rel = manifest.shard_path(split, index, n_shards, config.compression)
    t0 = time.perf_counter()
    label_values = np.zeros(256, dtype=np.int64)
    disagreements = 0
    dead = []
    ticker = progress.Ticker("write", len(recs))
    with ShardWriter(storage.join(config.out, rel), config.compression, config.storage) as writer:
        for rec, patch in loaded_patches(
            recs,
            config.write_resampling,
            config.decode_timeout,
            config.read_ahead,
            cache=config.cache,
            count=count,
            source=config.source(key),
            st=config.storage,
        ):
            ticker.tick()
            if isinstance(patch, failures.PatchError):
                count(f"failed_{patch.stage}_{patch.reason}")
                dead.append(patch.record(rec["patch_id"], split))
                continue
            try:
                data = encode_patch(rec, patch, params, split, config.stored_dtype)
            except Exception as e:  # noqa: BLE001 - a patch that cannot be encoded is a dead letter
                count("failed_write_encode_error")
                dead.append(
                    failures.dead_letter(
                        rec["patch_id"], failures.WRITE, "encode_error", f"{type(e).__name__}: {e}", split
                    )
                )
                continue
            writer.write(data)
            values = np.bincount(patch.label.ravel(), minlength=256)
            label_values += values
            disagreements += not labels_agree(rec, values)
            count("patches_written")
        info = writer.close()
    dt = time.perf_counter() - t0
    count("shards_written")
    count("bytes_written", info["bytes"])
    n = info["records"]
    LOG.info("wrote %s: %d patches, %d failed, %.1f patches/s", rel, n, len(dead), n / dt if dt else 0.0)
    ticker.done()
    return manifest.ShardRecord.build(key, config.compression, info, label_values, disagreements, dt), dead


def shard_statistics(
    config: ShardConfig,
    key: ShardKey,
    stats,
    stats_fraction: float,
    count: Count = no_count,
    records: list[dict] | None = None,
):
    """A partial band-statistics accumulator (``stats``: a ``transforms.histogram.BandStats``)
    over the sampled records of one shard (``records``, else the plan's); failed patches are
    skipped (the writer reports them). Each patch is sealed on its own, so the result equals
    any grouping of the same patches (``StatisticsCombineFn`` over pixel arrays included).
    With a cache, the fetched objects are kept there for the writer."""
    split, index, n_shards = key
    t0 = time.perf_counter()
    recs = config.plan.records(key) if records is None else records
    acc = stats.create()
    chosen = [r for r in recs if md.sampled(r["patch_id"], stats_fraction, salt="stats")]
    ticker = progress.Ticker("statistics", len(recs))
    for _, patch in loaded_patches(
        chosen,
        config.resampling,
        config.decode_timeout,
        config.read_ahead,
        cache=config.cache,
        keep=True,
        count=count,
        source=config.source(key),
        st=config.storage,
    ):
        ticker.tick(len(recs) // max(1, len(chosen)))  # a sampled patch stands for the shard's share
        if isinstance(patch, failures.PatchError):
            continue
        stats.seal(stats.add(acc, patch.pixels))
        count("stats_patches")
    LOG.info(
        "statistics: %s shard %d of %d: %d patches in %.1f s",
        split,
        index + 1,
        n_shards,
        len(recs),
        time.perf_counter() - t0,
    )
    ticker.done()
    return stats.seal(acc)
