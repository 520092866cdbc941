"""The Beam stages of reading the official archives (thin: the logic is ``transforms.archives``).

``SplitArchives``: one element per archive (the three are read in parallel, each by one
worker, front to back, once); each archive's members go to per-shard packs, which the
per-shard stages of the later jobs read (``transforms.archive_packs.PackObjects``).

``ArchiveInventory``: per archive, the patch folders the metadata expects and the objects
each lacks (or holds empty), for ``benbeam validate --archives``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import apache_beam as beam
from apache_beam.metrics import Metrics

from bigearthnet_beam.transforms import archive_inventory, archives, storage

LOG = logging.getLogger("benbeam")
NAMESPACE = "benbeam"


class SplitArchiveFn(beam.DoFn):
    """Per ``(folder, url)`` of an archive: stream it into the packs of ``plan``'s shards."""

    def __init__(
        self, plan, pack_dir: str, st: storage.Storage | None = None, buffer_bytes: int = archives.PACK_BUFFER_BYTES
    ):
        self.plan = plan
        self.pack_dir = pack_dir
        self.storage = st if st is not None else storage.Storage()
        self.buffer_bytes = buffer_bytes

    def process(self, item):
        """Split one archive into the packs; yields its summary."""
        import os

        folder, url = item
        t0, started = time.perf_counter(), time.time()
        router = archives.Router.from_plan(self.plan, folder)
        summary = archives.split_archive(url, folder, router, self.pack_dir, self.buffer_bytes, self.storage)
        dt = time.perf_counter() - t0
        Metrics.counter(NAMESPACE, "archive_members_read").inc(summary["members"])
        Metrics.counter(NAMESPACE, "archive_members_unrouted").inc(summary["unrouted"])
        Metrics.counter(NAMESPACE, "archive_bytes_packed").inc(summary["bytes"])
        LOG.info(
            "archive %s: %d members (%d not used by the plan), %.1f MB packed for %d shards in %.1f s "
            "(process %d, from %.3f to %.3f)",
            url,
            summary["members"],
            summary["unrouted"],
            summary["bytes"] / 1e6,
            summary["shards"],
            dt,
            os.getpid(),
            started,
            started + dt,
        )
        summary["seconds"] = round(dt, 3)
        yield summary


@dataclass
class SplitArchives(beam.PTransform):
    """Pack the archives in ``location`` for ``plan`` into ``pack_dir``, one element (and so one
    worker) per archive. Output: one summary per archive. The per-shard stages read the packs
    in a later job, once this one has finished (``beam_pipeline.convert.run``)."""

    plan: object
    location: str
    pack_dir: str
    storage: storage.Storage = storage.Storage()
    buffer_bytes: int = archives.PACK_BUFFER_BYTES

    def expand(self, pbegin):
        """One archive per worker, each split into the packs."""
        return (
            pbegin
            | "Archives" >> beam.Create(sorted(archives.archive_urls(self.location).items()))
            | "OnePerWorker" >> beam.Reshuffle()
            | "Split" >> beam.ParDo(SplitArchiveFn(self.plan, self.pack_dir, self.storage, self.buffer_bytes))
        )


class InventoryFn(beam.DoFn):
    """Per ``(folder, url)`` of an archive: ``((folder, patch folder), {"missing": [...],
    "empty": [...]})`` for every expected patch folder that lacks objects or holds empty ones."""

    def __init__(self, metas: tuple[str, ...], splits: tuple[str, ...], frac: float, st: storage.Storage | None = None):
        self.metas = metas
        self.splits = splits
        self.frac = frac
        self.storage = st if st is not None else storage.Storage()

    def process(self, item):
        """List one archive; yields the expected patch folders it lacks, with what they lack."""
        folder, url = item
        expected = archive_inventory.expected_folders(self.metas, folder, self.splits, self.frac, self.storage)
        t0 = time.perf_counter()
        lacking, members = archive_inventory.inventory(url, folder, expected, self.storage)
        Metrics.counter(NAMESPACE, "archive_members_listed").inc(members)
        LOG.info(
            "archive %s: %d members listed in %.1f s; %d of %d expected folders incomplete",
            url,
            members,
            time.perf_counter() - t0,
            len(lacking),
            len(expected),
        )
        for name, what in sorted(lacking.items()):
            yield (folder, name), what


@dataclass
class ArchiveInventory(beam.PTransform):
    """What the metadata expects but the archives in ``location`` lack: a PCollection of
    ``((folder, patch folder), {"missing": keys, "empty": keys})``."""

    location: str
    metas: tuple[str, ...]
    splits: tuple[str, ...]
    frac: float = 1.0
    storage: storage.Storage = storage.Storage()

    def expand(self, pbegin):
        """One archive per worker, each listed against the metadata."""
        return (
            pbegin
            | "Archives" >> beam.Create(sorted(archives.archive_urls(self.location).items()))
            | "OnePerWorker" >> beam.Reshuffle()
            | "List" >> beam.ParDo(InventoryFn(self.metas, self.splits, self.frac, self.storage))
        )
