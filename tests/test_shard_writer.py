"""The per-shard work without Beam: ``write_shard`` and ``shard_statistics`` on a synthetic
replica, checked against numpy on the patches loaded one by one."""

from __future__ import annotations

import hashlib
from collections import Counter

import numpy as np
import pytest

from bigearthnet_beam.schemas import failures, manifest, tfrecord
from bigearthnet_beam.schemas.classes import IGNORE_INDEX, NUM_CLASSES
from bigearthnet_beam.synth.generator import generate
from bigearthnet_beam.transforms.encode import decode_example, iter_records
from bigearthnet_beam.transforms.histogram import BandStats
from bigearthnet_beam.transforms.normalize import NormParams
from bigearthnet_beam.transforms.objcache import PatchCache
from bigearthnet_beam.transforms.plan import RowPlan
from bigearthnet_beam.transforms.shard_reader import load_patch
from bigearthnet_beam.transforms.shard_writer import ShardConfig, labels_agree, shard_statistics, write_shard

FAULTS = ["truncated_tiff", "s1_nan", "missing_band_file"]


@pytest.fixture(scope="module")
def replica(tmp_path_factory):
    root = tmp_path_factory.mktemp("replica")
    generate(str(root), 12, seed=4, faults=FAULTS, workers=1)
    plan = RowPlan.create([str(root / "metadata.parquet")], str(root), ("train", "validation", "test"), 1.0, 100)
    key = max((k for k in plan.homes() if k[0]), key=lambda k: len(plan.records(k)))
    return root, plan, key


def _counter():
    counts = Counter()

    def count(name, n=1):
        counts[name] += n

    return counts, count


def _one_by_one(recs):
    out = []
    for rec in recs:
        try:
            out.append(load_patch(rec, "bilinear"))
        except failures.PatchError as e:
            out.append(e)
    return out


def _norm(plan, key):
    stats = BandStats()
    acc = shard_statistics(ShardConfig(plan), key, stats, 1.0)
    return NormParams.from_stats(stats.extract(acc)).to_dict(), acc


def test_shard_statistics_counts_every_pixel_of_the_clean_patches(replica):
    _, plan, key = replica
    loaded = _one_by_one(plan.records(key))
    clean = [p for p in loaded if not isinstance(p, failures.PatchError)]
    counts, count = _counter()
    acc = shard_statistics(ShardConfig(plan), key, BandStats(), 1.0, count=count)
    extracted = BandStats().extract(acc)
    pixels = np.stack([p.pixels for p in clean])
    for c, s in enumerate(extracted.values()):
        assert s["count"] == pixels[..., c].size
        assert s["mean"] == pytest.approx(float(pixels[..., c].astype(np.float64).mean()), rel=1e-6)
    assert counts["stats_patches"] == len(clean) and 0 < len(clean) < len(loaded)


def test_write_shard_writes_the_normalised_patches_and_dead_letters_the_rest(replica, tmp_path):
    _, plan, key = replica
    norm, _ = _norm(plan, key)
    params = NormParams.from_dict(norm)
    recs = plan.records(key)
    loaded = _one_by_one(recs)
    counts, count = _counter()
    record, dead = write_shard(ShardConfig(plan, str(tmp_path)), key, norm, count=count)

    clean = [(r, p) for r, p in zip(recs, loaded, strict=True) if not isinstance(p, failures.PatchError)]
    assert record.path == manifest.shard_path(*key) and (record.split, record.index, record.count) == key
    data = (tmp_path / record.path).read_bytes()
    assert (record.records, record.bytes, record.sha256) == (len(clean), len(data), hashlib.sha256(data).hexdigest())
    examples = [decode_example(b) for b in iter_records(str(tmp_path / record.path))]
    assert [e[tfrecord.PATCH_ID] for e in examples] == [r["patch_id"] for r, _ in clean]
    for ex, (_, p) in zip(examples, clean, strict=True):
        want = (np.clip(p.pixels, params.lo, params.hi) - params.offset) / params.scale
        np.testing.assert_allclose(
            np.concatenate([ex[tfrecord.S2], ex[tfrecord.S1]], axis=-1), want, rtol=1e-5, atol=1e-5
        )
        assert np.array_equal(ex[tfrecord.LABEL], p.label)
    values = np.bincount(np.concatenate([p.label.ravel() for _, p in clean]), minlength=256)
    assert list(record.class_pixel_counts) == values[:NUM_CLASSES].tolist()
    assert record.ignored_pixels == values[IGNORE_INDEX]
    assert record.label_disagreements == sum(
        not labels_agree(r, np.bincount(p.label.ravel(), minlength=256)) for r, p in clean
    )
    want_dead = sorted(
        (r["patch_id"], p.stage, p.reason)
        for r, p in zip(recs, loaded, strict=True)
        if isinstance(p, failures.PatchError)
    )
    assert sorted((d["patch_id"], d["stage"], d["reason"]) for d in dead) == want_dead and want_dead
    assert all(d["split"] == key[0] and d["detail"] for d in dead)
    assert counts["patches_written"] == len(clean) and counts["shards_written"] == 1
    assert counts["bytes_written"] == len(data)
    assert sum(v for k, v in counts.items() if k.startswith("failed_")) == len(dead)


def test_a_patch_that_cannot_be_encoded_is_a_dead_letter_and_the_shard_stays_valid(replica, tmp_path):
    _, plan, key = replica
    norm, _ = _norm(plan, key)
    wrong = NormParams.from_dict(norm).select(("B02", "B03")).to_dict()  # 2 channels for 14: normalise raises
    counts, count = _counter()
    record, dead = write_shard(ShardConfig(plan, str(tmp_path)), key, wrong, count=count)
    encode_errors = [d for d in dead if d["reason"] == "encode_error"]
    assert record.records == 0 and (tmp_path / record.path).read_bytes() == b""
    assert encode_errors and all(d["stage"] == failures.WRITE and "channels" in d["detail"] for d in encode_errors)
    assert counts["failed_write_encode_error"] == len(encode_errors)


def test_gzip_float16_and_the_object_cache_change_nothing_but_the_encoding(replica, tmp_path):
    _, plan, key = replica
    norm, _ = _norm(plan, key)
    plain, dead = write_shard(
        ShardConfig(plan, str(tmp_path / "plain"), compression="gzip", image_dtype="float16"), key, norm
    )
    cache = PatchCache(str(tmp_path / "cache"), reserve_bytes=0)
    config = ShardConfig(plan, str(tmp_path / "cached"), compression="gzip", image_dtype="float16", cache=cache)
    counts, count = _counter()
    shard_statistics(config, key, BandStats(), 1.0, count=count)  # keeps the fetched objects
    cached, dead_cached = write_shard(config, key, norm, count=count)  # reads them back
    assert plain.path.endswith(".tfrecord.gz") and plain.sha256 == cached.sha256 and dead == dead_cached
    assert counts["object_cache_puts"] == counts["object_cache_hits"] > 0
    ex = decode_example(next(iter_records(str(tmp_path / "plain" / plain.path), "gzip")), "float16")
    assert ex[tfrecord.S2].dtype == np.float16


def test_shard_record_build_and_its_manifest_entry():
    info = {"records": 3, "bytes": 120, "sha256": "ab" * 32}
    values = np.zeros(256, dtype=np.int64)
    values[[0, 5, IGNORE_INDEX]] = [7, 2, 9]
    rec = manifest.ShardRecord.build(("validation", 1, 4), "gzip", info, values, 1, 0.5)
    assert rec.path == "validation/validation-00001-of-00004.tfrecord.gz"
    assert rec.class_pixel_counts[0] == 7 and rec.class_pixel_counts[5] == 2 and sum(rec.class_pixel_counts) == 9
    assert len(rec.class_pixel_counts) == NUM_CLASSES and rec.ignored_pixels == 9
    assert rec.entry().to_dict() == {"path": rec.path, "records": 3, "sha256": "ab" * 32, "bytes": 120}
    empty = manifest.ShardRecord.build(("test", 0, 1), "none", {"records": 0, "bytes": 0, "sha256": "0" * 64})
    assert empty.class_pixel_counts == (0,) * NUM_CLASSES and empty.ignored_pixels == 0
