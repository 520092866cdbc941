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
are upsampled and normalised per sample in torch (``raw_image``), by default into the same
tensors as the normalised encoding of the same run. Shards are split across DataLoader workers and
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
from bigearthnet_beam.transforms import storage
from bigearthnet_beam.transforms.containment import check_relative
from bigearthnet_beam.transforms.encode import decode_example, iter_records

MODALITY_FEATURE = {"s2": tfrecord.S2, "s1": tfrecord.S1}


def read_manifest(root: str) -> dict:
    """``<root>/dataset.json``, checked (``schemas.manifest.load``); raises ``ManifestError`` saying what is wrong."""
    manifest, _ = manifest_schema.load(
        str(root), storage.read_bytes, hint="run `benbeam convert` to completion and pass its --out folder"
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


def read_spec(manifest: dict, channels, *, band_subset=None, resampling=None, statistics=None):
    """The ``transforms.raw_decode.RawSpec`` of a raw dataset's reader; None for a normalised dataset,
    which takes no read-time options (ValueError if any is given)."""
    from bigearthnet_beam.transforms import raw_decode

    if manifest.get("encoding") != tfrecord.RAW:
        if (resampling, statistics) != (None, None) or (
            band_subset is not None and tuple(band_subset) != tuple(channels)
        ):
            raise ValueError(
                "this dataset holds normalised records: read-time resampling, statistics and band subsets "
                "need a raw-encoded dataset (`benbeam convert --encoding raw`)"
            )
        return None
    channels = tuple(band_subset) if band_subset is not None else channels
    return raw_decode.make_spec(manifest, channels, resampling, statistics)


def raw_tensors(spec) -> dict:
    """A ``RawSpec``'s weight matrices (by feature), each group's output channel positions and the
    normalisation columns (C, 1, 1), as tensors."""
    out: dict = {g.feature: torch.from_numpy(g.weights.copy()) for g in spec.groups if g.weights is not None}
    where = {p: i for i, p in enumerate(spec.order)}  # position in the groups' concatenation -> channel
    start, positions = 0, []
    for g in spec.groups:
        pos = [where[start + j] for j in range(len(g.index))]
        contiguous = pos == list(range(pos[0], pos[0] + len(pos)))
        positions.append(slice(pos[0], pos[-1] + 1) if contiguous else torch.tensor(pos))
        start += len(g.index)
    out["positions"] = positions
    if spec.norm is not None:
        for k in ("lo", "hi", "offset", "scale"):
            out[k] = torch.from_numpy(np.asarray(getattr(spec.norm, k), dtype=np.float32).reshape(-1, 1, 1))
    return out


def raw_image(ex: dict, spec, tensors: dict) -> torch.Tensor:
    """float32[C, H, W] of one decoded raw example: per resolution group ``W @ X @ W.T`` written into
    its channels of the output, then clipping and normalisation in place (``tensors``: ``raw_tensors``).

    Runs on one intra-op thread (as in a DataLoader worker): one patch is too small to share, and
    on a busy machine the thread hand-offs cost ~10x the work (measured: 0.6 ms vs 6-9 ms)."""
    threads = torch.get_num_threads()
    if threads == 1:
        return _raw_image(ex, spec, tensors)
    torch.set_num_threads(1)
    try:
        return _raw_image(ex, spec, tensors)
    finally:
        torch.set_num_threads(threads)


def _raw_image(ex: dict, spec, tensors: dict) -> torch.Tensor:
    size = bands.PATCH_SIZE
    image = torch.empty((len(spec.channels), size, size), dtype=torch.float32)
    for g, pos in zip(spec.groups, tensors["positions"], strict=True):
        a = np.asarray(ex[g.feature])
        if len(g.index) != a.shape[0]:
            a = a[list(g.index)]
        x = torch.from_numpy(a.astype(np.float32))
        w = tensors.get(g.feature)
        if w is not None:
            x = torch.matmul(torch.matmul(w, x), w.T)
        image[pos] = x
    if spec.norm is not None:
        if spec.norm.clip:  # as transforms.normalize: maximum with lo, then minimum with hi
            torch.maximum(image, tensors["lo"], out=image)
            torch.minimum(image, tensors["hi"], out=image)
        image.sub_(tensors["offset"]).div_(tensors["scale"])
    return image


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
        storage_options: dict | None = None,
        band_subset=None,
        resampling: str | None = None,
        statistics=None,
    ):
        manifest_schema.check_split(split)  # torchgeo's "val" is refused with the hint: this format says "validation"
        if storage_options is not None:
            storage.set_options(storage_options)
        self.root, self.split = str(root), split
        self.manifest = read_manifest(self.root)
        if split not in self.manifest["splits"] or not self.manifest["splits"][split]["written"]:
            have = ", ".join(s for s, e in sorted(self.manifest["splits"].items()) if e["written"]) or "none"
            raise ValueError(f"the dataset at {self.root} holds no patches of split {split!r} (it has: {have})")
        info = self.manifest["splits"][split]
        # shard paths come from an editable file: each must stay inside the dataset (ValueError otherwise)
        self.shards = [(check_relative(s["path"], self.root, what="shard"), int(s["records"])) for s in info["shards"]]
        self.channels = bands.channels_for(modalities)
        spec = read_spec(
            self.manifest, self.channels, band_subset=band_subset, resampling=resampling, statistics=statistics
        )
        self.raw_spec, self.raw_tensors = spec, raw_tensors(spec) if spec is not None else None
        self.channels = spec.channels if spec is not None else self.channels
        self.picks = [
            (MODALITY_FEATURE[m], [names.index(c) for c in self.channels if c in names])
            for m, names in bands.MODALITIES.items()
            if any(c in names for c in self.channels)
        ]
        self.multi_hot, self.with_ids = multi_hot, with_ids
        self.shuffle, self.shuffle_buffer, self.seed = shuffle, int(shuffle_buffer), int(seed)
        self.rank, self.world_size = _rank_and_world(rank, world_size)
        self.storage_options = storage.options()
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
        if self.raw_spec is not None:
            image = raw_image(ex, self.raw_spec, self.raw_tensors)
        else:
            parts = [ex[feat][..., idx] for feat, idx in self.picks]
            image = np.concatenate(parts, axis=-1) if len(parts) > 1 else parts[0]
            image = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32))
        out = {
            "image": image,
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
                yield from iter_records(url, self.manifest["compression"])

    def __iter__(self):
        storage.set_options(self.storage_options)  # worker processes start with the defaults
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
