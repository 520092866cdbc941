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
decoded by ``transforms.encode.decode_example``. Shards are split across DataLoader workers and
distributed ranks: every record of the split is yielded exactly once per epoch over all of them.
Ranks get whole shards, so their record counts differ by up to one shard; under DDP, bound each
rank's steps (e.g. ``len(ds) // world_size // batch_size``) or convert with a shard count that is
a multiple of ``world_size * num_workers`` and equal shard sizes.
"""

from __future__ import annotations

import random

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from bigearthnet_beam.schemas import bands, tfrecord
from bigearthnet_beam.schemas import manifest as manifest_schema
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


def assign_shards(n_shards: int, part: int, parts: int, seed: int | None, epoch: int) -> list[int]:
    """Indices of the shards reader ``part`` of ``parts`` reads: a permutation (fixed by seed and
    epoch, the same in every process), dealt round-robin; ``seed=None`` keeps the shard order."""
    order = list(range(n_shards))
    if seed is not None:
        random.Random(f"{seed}:{epoch}").shuffle(order)
    return order[part::parts]


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
        storage: Storage | None = None,
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
        self.multi_hot, self.with_ids = multi_hot, with_ids
        self.shuffle, self.shuffle_buffer, self.seed = shuffle, int(shuffle_buffer), int(seed)
        self.rank, self.world_size = _rank_and_world(rank, world_size)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose shard and record order the next iteration uses (as ``DistributedSampler``)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        """Records of the split over all ranks and workers (one epoch)."""
        return int(self.manifest["splits"][self.split]["written"])

    def sample(self, record: bytes) -> dict:
        """One serialised example -> the sample dict (channel-first float32 image, int64 mask)."""
        ex = decode_example(record, self.manifest["image_dtype"])
        parts = [ex[feat][..., idx] for feat, idx in self.picks]
        image = np.concatenate(parts, axis=-1) if len(parts) > 1 else parts[0]
        out = {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)),
            "mask": torch.from_numpy(ex[tfrecord.LABEL].astype(np.int64)),
        }
        if self.multi_hot:
            out["label"] = torch.from_numpy(ex[tfrecord.MULTI_HOT].astype(np.int64))
        if self.with_ids:
            out["patch_id"] = ex[tfrecord.PATCH_ID]
        return out

    def _records(self, shard_ids: list[int]):
        for i in shard_ids:
            url, n = self.shards[i]
            if n:
                yield from iter_records(url, self.manifest["compression"], st=self.storage)

    def __iter__(self):
        worker = get_worker_info()
        w_id, w_num = (worker.id, worker.num_workers) if worker is not None else (0, 1)
        part, parts = self.rank * w_num + w_id, self.world_size * w_num
        shard_ids = assign_shards(len(self.shards), part, parts, self.seed if self.shuffle else None, self.epoch)
        records = self._records(shard_ids)
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
