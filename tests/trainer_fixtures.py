"""A tiny converted dataset for the trainer's tests: shards + a complete ``dataset.json``.

``make_tiny_dataset(dirpath, ...)`` writes what ``benbeam convert`` writes — TFRecord shards
of ``tf.train.Example`` following ``schemas.tfrecord.features()`` and a manifest that passes
``schemas.manifest.validate`` — with a learnable signal: every pixel's channels are a fixed
class-dependent mean plus noise, and label maps are blocks of a few classes with a patch of
ignored (255) pixels. It returns the arrays it wrote so tests can compare. Swap it for
real pipeline output (``benbeam synth`` + ``benbeam convert``) where a test needs that.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field

import numpy as np

from bigearthnet_beam.schemas import bands, tfrecord
from bigearthnet_beam.schemas import classes as class_table
from bigearthnet_beam.schemas import manifest as manifest_schema

SIZE = bands.PATCH_SIZE


@dataclass
class TinyDataset:
    """A tiny converted dataset on disk and the arrays it holds."""

    path: str
    manifest: dict
    # split -> patch_id -> {"s2", "s1", "label", "multi_hot"} (arrays as written, image dtype)
    arrays: dict[str, dict[str, dict[str, np.ndarray]]] = field(default_factory=dict)

    def split_arrays(self, split: str, modalities: str = "s2,s1"):
        """(ids, image float32[N,H,W,C], label uint8[N,H,W], multi_hot[N,19]) in write order."""
        chans = bands.channels_for(modalities)
        ids = list(self.arrays[split])
        imgs, labels, mh = [], [], []
        for pid in ids:
            a = self.arrays[split][pid]
            full = np.concatenate([a["s2"].astype(np.float32), a["s1"].astype(np.float32)], -1)
            imgs.append(full[..., [bands.ALL_NAMES.index(c) for c in chans]])
            labels.append(a["label"])
            mh.append(a["multi_hot"])
        return ids, np.stack(imgs), np.stack(labels), np.stack(mh)


def class_means(seed: int = 1234) -> np.ndarray:
    """float32[19, 14]: the per-class channel means (normalised units) of the fixture."""
    return (
        np.random.default_rng(seed).normal(0.0, 1.0, (class_table.NUM_CLASSES, len(bands.ALL_NAMES))).astype(np.float32)
    )


def _patch(rng: np.random.Generator, means: np.ndarray, noise: float):
    """One patch: a 4×4 grid of 30-pixel blocks drawn from 2–5 classes, one ignored square."""
    k = int(rng.integers(2, 6))
    classes = rng.choice(class_table.NUM_CLASSES, k, replace=False)
    grid = rng.choice(classes, (4, 4))
    label = np.kron(grid, np.ones((SIZE // 4, SIZE // 4), dtype=np.int64)).astype(np.uint8)
    y0, x0 = rng.integers(0, SIZE - 16, 2)
    label[y0 : y0 + 16, x0 : x0 + 16] = class_table.IGNORE_INDEX
    img = means[np.where(label == class_table.IGNORE_INDEX, 0, label)]  # ignored pixels look like class 0 + noise
    img = img + rng.normal(0.0, noise, img.shape).astype(np.float32)
    present = sorted({int(c) for c in np.unique(label) if c != class_table.IGNORE_INDEX})
    multi_hot = np.zeros(class_table.NUM_CLASSES, dtype=np.int64)
    multi_hot[present] = 1
    return img.astype(np.float32), label, multi_hot


def serialize(values: dict, image_dtype: str = "float32") -> bytes:
    """A ``tf.train.Example`` with every feature of ``schemas.tfrecord.features(image_dtype)``."""
    import tensorflow as tf

    feats = {}
    for f in tfrecord.features(image_dtype):
        v = values[f.name]
        if f.kind == "float":
            feats[f.name] = tf.train.Feature(float_list=tf.train.FloatList(value=np.asarray(v, np.float32).ravel()))
        elif f.kind == "int64":
            feats[f.name] = tf.train.Feature(int64_list=tf.train.Int64List(value=np.asarray(v, np.int64).ravel()))
        elif f.kind == "raw":
            arr = np.ascontiguousarray(np.asarray(v).astype(np.dtype(f.dtype).newbyteorder("<")))
            if arr.shape != f.shape:
                raise ValueError(f"{f.name}: shape {arr.shape}, expected {f.shape}")
            feats[f.name] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[arr.tobytes()]))
        else:
            feats[f.name] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[str(v).encode()]))
    return tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString()


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for b in iter(lambda: fh.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


def _shard_of(i: int, split: str, shards: int, shard_sizes: dict | None) -> int:
    sizes = (shard_sizes or {}).get(split)
    if not sizes:
        return i % shards
    assert len(sizes) == shards, (sizes, shards)
    return int(np.searchsorted(np.cumsum(sizes), i, side="right"))


def make_tiny_dataset(
    dirpath,
    n_train: int = 24,
    n_val: int = 8,
    n_test: int = 8,
    shards: int = 2,
    image_dtype: str = "float32",
    compression: str = "none",
    seed: int = 0,
    noise: float = 0.3,
    shard_sizes: dict | None = None,
) -> TinyDataset:
    """Write a tiny dataset under ``dirpath``; returns its manifest and the arrays written.
    ``shard_sizes``: ``{split: [records per shard]}`` fills that split's shards in order (unequal
    sizes); other splits deal their records round-robin."""
    import tensorflow as tf

    dirpath = str(dirpath)
    os.makedirs(dirpath, exist_ok=True)
    rng = np.random.default_rng(seed)
    means = class_means()
    s2n = len(bands.S2_NAMES)
    counts = {"train": n_train, "validation": n_val, "test": n_test}
    splits, arrays = {}, {}
    all_train = []
    for split, n in counts.items():
        if n <= 0:
            continue
        arrays[split] = {}
        shard_lists = [[] for _ in range(shards)]
        pix = np.zeros(class_table.NUM_CLASSES, dtype=np.int64)
        ignored = 0
        for i in range(n):
            row = (i // 100) + {"train": 0, "validation": 30, "test": 60}[split]
            pid = f"S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_{i % 100:02d}_{row:02d}"
            img, label, mh = _patch(rng, means, noise)
            if image_dtype == "float16":
                img = img.astype(np.float16)
            s2, s1 = img[..., :s2n], img[..., s2n:]
            arrays[split][pid] = {"s2": s2, "s1": s1, "label": label, "multi_hot": mh}
            values = {
                tfrecord.PATCH_ID: pid,
                tfrecord.S2: s2,
                tfrecord.S1: s1,
                tfrecord.LABEL: label,
                tfrecord.MULTI_HOT: mh,
                tfrecord.SPLIT: split,
                tfrecord.COUNTRY: "Austria",
            }
            shard_lists[_shard_of(i, split, shards, shard_sizes)].append(serialize(values, image_dtype))
            valid = label[label != class_table.IGNORE_INDEX]
            pix += np.bincount(valid, minlength=class_table.NUM_CLASSES)
            ignored += int((label == class_table.IGNORE_INDEX).sum())
            if split == "train":
                all_train.append(img.astype(np.float32))
        entries = []
        for k, recs in enumerate(shard_lists):
            rel = manifest_schema.shard_path(split, k, shards, compression)
            full = os.path.join(dirpath, rel)
            os.makedirs(os.path.dirname(full), exist_ok=True)
            opts = tf.io.TFRecordOptions(compression_type="GZIP" if compression == "gzip" else "")
            with tf.io.TFRecordWriter(full, opts) as w:
                for r in recs:
                    w.write(r)
            entries.append({"path": rel, "records": len(recs), "sha256": _sha256(full), "bytes": os.path.getsize(full)})
        total = int(pix.sum()) + ignored
        splits[split] = {
            "input": n,
            "written": n,
            "failed": 0,
            "shards": entries,
            "class_pixel_counts": [int(v) for v in pix],
            "ignored_pixels": ignored,
            "label_disagreements": 0,
            "class_pixel_frequencies": [float(v) / total for v in pix],
        }
    stats_bands = {}
    if all_train:
        stack = np.stack(all_train)
        for c, name in enumerate(bands.ALL_NAMES):
            ch = stack[..., c]
            stats_bands[name] = {
                "count": int(ch.size),
                "mean": float(ch.mean()),
                "std": float(ch.std()),
                "min": float(ch.min()),
                "max": float(ch.max()),
            }
    manifest = {
        "schema_version": manifest_schema.SCHEMA_VERSION,
        "package_version": "test",
        "created_by": "tests.trainer_fixtures.make_tiny_dataset",
        "options": {"seed": seed, "noise": noise, "shards": shards},
        "input": {"metadata": [], "rows_selected": sum(counts.values())},
        **manifest_schema.contract(image_dtype, compression),
        "statistics": {
            "source": "fixture (values already normalised)",
            "split": "train",
            "clip": False,
            "clip_percentiles": [1.0, 99.0],
            "bands": stats_bands,
            "band_order": list(bands.ALL_NAMES),
        },
        "splits": splits,
        "failures": {"total": 0, "by_stage": {}, "by_reason": {}, "file": manifest_schema.FAILURES_JSONL},
        "files": {"failures": manifest_schema.FAILURES_JSONL},
    }
    manifest_schema.validate(manifest)
    with open(os.path.join(dirpath, manifest_schema.FAILURES_JSONL), "w") as fh:
        fh.write("")
    with open(os.path.join(dirpath, manifest_schema.MANIFEST), "w") as fh:
        fh.write(manifest_schema.dumps(manifest))
    return TinyDataset(dirpath, json.loads(manifest_schema.dumps(manifest)), arrays)
