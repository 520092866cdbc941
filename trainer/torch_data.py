"""A PyTorch ``IterableDataset`` over a dataset written by ``benbeam convert``; no TensorFlow.

    from torch.utils.data import DataLoader
    from bigearthnet_beam.trainer.torch_data import BenDataset

    ds = BenDataset("gs://bucket/reben-tfrecords", "train", shuffle=True, seed=0)
    for epoch in range(epochs):
        ds.set_epoch(epoch)                      # a new shard and record order each epoch
        for batch in DataLoader(ds, batch_size=32, num_workers=4):
            batch["image"]   # float32[B, C, H, W]: channel-first, normalised (dataset.json statistics)
            batch["mask"]    # int64[B, H, W]: class index 0..18, 255 = ignore
            batch["label"]   # int64[B, 19]: multi-hot (with multi_hot=True)

Shards (local paths, ``s3://``, ``gs://``: anything ``transforms.storage`` reads) are read with the
project's TensorFlow-free TFRecord reader (``transforms.encode.iter_records``, CRCs checked) and
decoded by ``transforms.encode.decode_example``; raw-encoded datasets (``convert --encoding raw``)
are upsampled and normalised per sample in torch (``trainer.torch_raw``), by default into the same
tensors as the normalised encoding of the same run (options: ``band_subset``, ``resampling``,
``statistics``, as ``trainer.data.make_dataset``'s). With ``decode_on="batch"`` the samples carry
the stored bands instead (``"raw"``, ~0.3 MB a patch instead of ~0.8 MB), and
``ds.batch_decoder(batch, device)`` upsamples and normalises each collated batch on ``device``
(the GPU): the DataLoader's main process, which receives and pins every batch, handles a third
of the image bytes, and the workers skip the matrix products.

Balance across distributed ranks (``partition``): the split is cut by record, not by shard, as
``torch.utils.data.DistributedSampler`` does. The shards (in an order fixed by seed and epoch, the
same in every process) form one stream of ``len(ds)`` records; every rank reads the same number
of consecutive records of it, ``ceil(len / world_size)``, the last rank(s) padding by wrapping
around to the stream's first records (``drop_last=True``: ``floor(len / world_size)`` each, the
tail dropped). So ranks never differ in sample or batch count, whatever the shard sizes, and
``DistributedDataParallel`` never waits on a rank that ran out. Within a rank the DataLoader
workers split the rank's records by record too: their counts differ by at most one and are the
same on every rank, so every rank yields the same number of batches. With one rank nothing is
padded or dropped: every record comes exactly once per epoch. ``per_rank()`` says how many
samples a rank yields per epoch.
"""

from __future__ import annotations

import random

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from bigearthnet_beam.schemas import bands, tfrecord
from bigearthnet_beam.schemas import manifest as manifest_schema
from bigearthnet_beam.schemas.errors import IntegrityError
from bigearthnet_beam.trainer import torch_raw
from bigearthnet_beam.transforms.containment import check_relative
from bigearthnet_beam.transforms.encode import decode_example, iter_records
from bigearthnet_beam.transforms.storage import Storage

MODALITY_FEATURE = {"s2": tfrecord.S2, "s1": tfrecord.S1}


def read_manifest(root: str, storage: Storage | None = None) -> dict:
    """``<root>/dataset.json`` (read under ``storage``), checked (``schemas.manifest.load``); raises
    ``ManifestError`` saying what is wrong."""
    manifest, _ = manifest_schema.load(
        str(root),
        (storage if storage is not None else Storage()).read_bytes,
        hint="run `benbeam convert` to completion and pass its --out folder",
    )
    return manifest.to_dict()


def _rank_and_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is not None and world_size is not None:
        return int(rank), int(world_size)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def shard_order(n_shards: int, seed: int | None, epoch: int) -> list[int]:
    """The shards' order in an epoch: a permutation fixed by seed and epoch (the same in every
    process); ``seed=None`` keeps the manifest's order."""
    order = list(range(n_shards))
    if seed is not None:
        random.Random(f"{seed}:{epoch}").shuffle(order)
    return order


def rank_span(total: int, rank: int, world_size: int, drop_last: bool = False) -> tuple[int, int]:
    """``[start, stop)`` of the padded record stream that ``rank`` reads: every rank the same length,
    ``ceil(total / world_size)`` (positions past ``total`` wrap around), or ``floor`` with ``drop_last``."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside 0..{world_size - 1} (world_size {world_size})")
    per = total // world_size if drop_last else -(-total // world_size)
    return rank * per, (rank + 1) * per


def worker_span(start: int, stop: int, worker: int, num_workers: int) -> tuple[int, int]:
    """The part of ``[start, stop)`` a DataLoader worker reads: consecutive records, the first
    ``(stop - start) % num_workers`` workers one more than the others."""
    n = stop - start
    q, r = divmod(n, num_workers)
    lo = start + worker * q + min(worker, r)
    return lo, lo + q + (1 if worker < r else 0)


def stream_ranges(sizes: list[int], order: list[int], start: int, stop: int) -> list[tuple[int, int, int]]:
    """``(shard, first, end)`` record ranges covering positions ``[start, stop)`` of the stream that
    concatenates the shards in ``order`` (position p is record ``p % total``: padding wraps around)."""
    total = sum(sizes[i] for i in order)
    out: list[tuple[int, int, int]] = []
    if total == 0 or stop <= start:
        return out
    p = start
    while p < stop:
        q = p % total
        want = min(stop - p, total - q)  # up to the end of this pass over the stream
        offset = 0
        for i in order:
            n = sizes[i]
            if q < offset + n and want > 0:
                first = q - offset
                take = min(n - first, want)
                out.append((i, first, first + take))
                q, want, p = q + take, want - take, p + take
            offset += n
    return out


def partition(
    sizes: list[int],
    *,
    rank: int = 0,
    world_size: int = 1,
    worker: int = 0,
    num_workers: int = 1,
    seed: int | None = None,
    epoch: int = 0,
    drop_last: bool = False,
) -> list[tuple[int, int, int]]:
    """The ``(shard, first, end)`` record ranges one DataLoader worker of one rank reads in an
    epoch (module docstring: equal counts per rank, by record, whatever the shard sizes)."""
    start, stop = rank_span(sum(sizes), rank, world_size, drop_last)
    lo, hi = worker_span(start, stop, worker, num_workers)
    return stream_ranges(sizes, shard_order(len(sizes), seed, epoch), lo, hi)


class BenDataset(IterableDataset):
    """One split of a converted dataset as a stream of ``{"image", "mask"[, "label", "patch_id"]}`` dicts."""

    def __init__(
        self,
        root: str,
        split: str,
        *,
        modalities: str = "s2,s1",
        multi_hot: bool = False,
        with_ids: bool = False,
        shuffle: bool = False,
        shuffle_buffer: int = 256,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        drop_last: bool = False,
        storage: Storage | None = None,
        band_subset=None,
        resampling: str | None = None,
        statistics=None,
        decode_on: str = "sample",
    ):
        manifest_schema.check_split(split)  # torchgeo's "val" is refused with the hint: this format says "validation"
        # The value pickles into DataLoader worker processes with the dataset: no per-process setup.
        self.storage = storage if storage is not None else Storage()
        self.root, self.split = str(root), split
        self.manifest = read_manifest(self.root, self.storage)
        if split not in self.manifest["splits"] or not self.manifest["splits"][split]["written"]:
            have = ", ".join(s for s, e in sorted(self.manifest["splits"].items()) if e["written"]) or "none"
            raise ValueError(f"the dataset at {self.root} holds no patches of split {split!r} (it has: {have})")
        info = self.manifest["splits"][split]
        # shard paths come from an editable file: each must stay inside the dataset (ValueError otherwise)
        self.shards = [(check_relative(s["path"], self.root, what="shard"), int(s["records"])) for s in info["shards"]]
        self.channels = bands.channels_for(modalities)
        self.picks = [
            (MODALITY_FEATURE[m], [names.index(c) for c in self.channels if c in names])
            for m, names in bands.MODALITIES.items()
            if any(c in names for c in self.channels)
        ]
        spec = torch_raw.read_spec(
            self.manifest, self.channels, band_subset=band_subset, resampling=resampling, statistics=statistics
        )
        self.raw_spec, self.raw_tensors = spec, torch_raw.raw_tensors(spec) if spec is not None else None
        self.channels = spec.channels if spec is not None else self.channels
        if decode_on not in ("sample", "batch"):
            raise ValueError(f'decode_on must be "sample" or "batch", got {decode_on!r}')
        if decode_on == "batch" and spec is None:
            raise ValueError(
                'decode_on="batch" needs a raw-encoded dataset (`benbeam convert --encoding raw`); '
                "normalised records are decoded already"
            )
        self.decode_on = decode_on
        # decode_on="batch": samples carry "raw"; this turns a collated batch's "raw" into "image"
        self.batch_decoder = torch_raw.RawBatchDecoder(spec) if decode_on == "batch" else None
        self.multi_hot, self.with_ids = multi_hot, with_ids
        self.shuffle, self.shuffle_buffer, self.seed = shuffle, int(shuffle_buffer), int(seed)
        self.rank, self.world_size = _rank_and_world(rank, world_size)
        rank_span(0, self.rank, self.world_size)  # a rank outside 0..world_size-1: ValueError now, not a silent skew
        self.drop_last = bool(drop_last)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose shard and record order the next iteration uses (as ``DistributedSampler``)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        """Records of the split over all ranks and workers (one epoch)."""
        return int(self.manifest["splits"][self.split]["written"])

    def per_rank(self) -> int:
        """Samples this rank yields per epoch, whatever the DataLoader workers (the same on every rank;
        padded, or cut with ``drop_last``)."""
        start, stop = rank_span(len(self), self.rank, self.world_size, self.drop_last)
        return stop - start

    def sample(self, record: bytes) -> dict:
        """One serialised example -> the sample dict (channel-first float32 image, int64 mask; with
        ``decode_on="batch"`` the stored bands as ``"raw"`` instead of the image)."""
        ex = decode_example(record, self.manifest["image_dtype"])
        if self.batch_decoder is not None:
            out = {"raw": torch_raw.raw_sample(ex, self.raw_spec)}
        elif self.raw_spec is not None:
            out = {"image": torch_raw.raw_image(ex, self.raw_spec, self.raw_tensors)}
        else:
            parts = [ex[feat][..., idx] for feat, idx in self.picks]
            image = np.concatenate(parts, axis=-1) if len(parts) > 1 else parts[0]
            out = {"image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32))}
        out["mask"] = torch.from_numpy(ex[tfrecord.LABEL].astype(np.int64))
        if self.multi_hot:
            out["label"] = torch.from_numpy(ex[tfrecord.MULTI_HOT].astype(np.int64))
        if self.with_ids:
            out["patch_id"] = ex[tfrecord.PATCH_ID]
        return out

    def _records(self, ranges: list[tuple[int, int, int]]):
        """The records of ``(shard, first, end)`` ranges, in order; a shard holding fewer records than
        its manifest entry says raises ``IntegrityError`` (a short rank would hang its peers)."""
        for i, first, end in ranges:
            url, n = self.shards[i]
            k = 0
            if end > first:
                for rec in iter_records(url, self.manifest["compression"], st=self.storage):
                    if k >= first:
                        yield rec
                    k += 1
                    if k >= end:
                        break
            if k < end:
                raise IntegrityError(
                    f"{url}: holds {k} records, dataset.json says {n}; re-run `benbeam verify` / `benbeam convert`"
                )

    def __iter__(self):
        worker = get_worker_info()
        w_id, w_num = (worker.id, worker.num_workers) if worker is not None else (0, 1)
        part = self.rank * w_num + w_id
        ranges = partition(
            [n for _, n in self.shards],
            rank=self.rank,
            world_size=self.world_size,
            worker=w_id,
            num_workers=w_num,
            seed=self.seed if self.shuffle else None,
            epoch=self.epoch,
            drop_last=self.drop_last,
        )
        records = self._records(ranges)
        if not (self.shuffle and self.shuffle_buffer > 1):
            for rec in records:
                yield self.sample(rec)
            return
        rng = random.Random(f"{self.seed}:{self.epoch}:{part}")
        buf: list[bytes] = []
        for rec in records:
            if len(buf) < self.shuffle_buffer:
                buf.append(rec)
                continue
            j = rng.randrange(len(buf))
            buf[j], rec = rec, buf[j]
            yield self.sample(rec)
        rng.shuffle(buf)
        for rec in buf:
            yield self.sample(rec)
