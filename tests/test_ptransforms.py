"""The Beam transforms on their own: row checks and de-duplication, shard assignment, and
pickling of everything that ships to workers."""

import pickle

import apache_beam as beam
from apache_beam.internal import pickler
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from schemas.manifest import shard_path
from transforms import metadata as md
from transforms.combiners import BandStatsCombineFn
from transforms.ptransforms import (AssignShards, CheckRows, ComputeBandStats, ShardStatsFn, WriteShardFn,
                                    WriteShards)

PIDS = [f"S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_{x:02d}_{y:02d}" for x in range(3) for y in range(4)]


def _row(i, pid, split="train", **kw):
    r = {"patch_id": pid, "s1_name": "S1A_IW_GRDH_1SDV_20170613T165043_33UUP_" + pid[-5:].replace("_0", "_"),
         "split": split, "labels": ["Pastures"], "country": "Austria", "_source": 0, "_row": i}
    r.update(kw)
    return r


def test_check_rows_dead_letters_duplicates_and_bad_rows():
    rows = [_row(i, p) for i, p in enumerate(PIDS)]
    rows.append(_row(50, PIDS[3], split="test"))  # duplicate id: the later row is dropped
    rows.append(_row(51, "not-an-id"))
    rows.append(_row(52, PIDS[0][:-1] + "9", split="val"))
    with TestPipeline() as p:
        out = p | beam.Create(rows) | CheckRows("/data", ("train", "validation", "test"))
        assert_that(out["patches"] | beam.Map(lambda r: r["patch_id"]), equal_to(PIDS), label="patches")
        assert_that(out["dead"] | beam.Map(lambda d: (d["patch_id"], d["reason"], d["split"])),
                    equal_to([(PIDS[3], "duplicate_patch_id", "test"), ("not-an-id", "malformed_patch_id", "train"),
                              (PIDS[0][:-1] + "9", "unknown_split", "val")]), label="dead")
        assert_that(out["selected"], equal_to(["train"] * 13 + ["test", "val"]), label="selected")


def test_check_rows_selects_splits_and_samples_deterministically():
    rows = [_row(i, p, split=("train", "validation")[i % 2]) for i, p in enumerate(PIDS)]
    keep = [p for i, p in enumerate(PIDS) if i % 2 == 0 and md.sampled(p, 0.5)]
    with TestPipeline() as p:
        out = p | beam.Create(rows) | CheckRows("/data", ("train",), frac=0.5)
        assert_that(out["patches"] | beam.Map(lambda r: r["patch_id"]), equal_to(keep))


def test_assign_shards_is_deterministic_and_sorted():
    recs = [{"patch_id": p, "split": "train"} for p in PIDS] + [{"patch_id": p, "split": "test"} for p in PIDS[:3]]
    n_train = md.shard_count(len(PIDS), 5)

    def expected():
        out = {}
        for r in recs:
            n = n_train if r["split"] == "train" else 1
            out.setdefault((r["split"], md.shard_index(r["patch_id"], n), n), []).append(r["patch_id"])
        return [(k, sorted(v)) for k, v in out.items()]

    with TestPipeline() as p:
        out = (p | beam.Create(recs) | AssignShards(5)
               | beam.MapTuple(lambda k, rs: (k, [r["patch_id"] for r in rs])))
        assert_that(out, equal_to(expected()))
    assert shard_path("train", 2, 12) == "train/train-00002-of-00012.tfrecord"
    assert shard_path("test", 0, 1, "gzip") == "test/test-00000-of-00001.tfrecord.gz"


def test_everything_that_ships_to_workers_pickles():
    for obj in (ShardStatsFn("bilinear", 1.0, {}), WriteShardFn("/out", "bilinear", "none", "float32", {}),
                BandStatsCombineFn(), CheckRows("/data", ("train",), 0.5), AssignShards(10),
                ComputeBandStats("cubic", 0.5, {"s3": {"anon": True}})):
        back = pickler.loads(pickler.dumps(obj))
        assert type(back) is type(obj)
    fn = pickle.loads(pickle.dumps(WriteShardFn("/o", "nearest", "gzip", "float16", {})))
    assert (fn.out, fn.resampling, fn.compression, fn.image_dtype) == ("/o", "nearest", "gzip", "float16")
    assert WriteShards.__dataclass_fields__["compression"]


def test_read_ahead_gives_the_same_patches_and_errors_in_the_same_order(tmp_path):
    """`loaded_patches` fetches ahead on threads; what it yields equals loading one patch after
    the other: same order, same arrays, same dead-letter reasons."""
    import numpy as np
    import pyarrow.parquet as pq

    from beam_pipeline.cli import main
    from schemas import failures as F
    from schemas.naming import object_urls
    from transforms.ptransforms import load_patch, loaded_patches

    assert main(["synth", "--out", str(tmp_path), "--n", "14", "--seed", "5",
                 "--faults", "missing_band_file,truncated_tiff,s1_nan"]) == 0
    rows = pq.read_table(tmp_path / "metadata.parquet").to_pylist()
    recs = [{"patch_id": r["patch_id"], "urls": object_urls(str(tmp_path), r["patch_id"], r["s1_name"])}
            for r in sorted(rows, key=lambda r: r["patch_id"])]

    def one_by_one(rec):
        try:
            return load_patch(rec, "bilinear")
        except F.PatchError as e:
            return e

    expected = [one_by_one(r) for r in recs]
    for ahead in (0, 1, 4, 32):
        got = list(loaded_patches(recs, "bilinear", 30.0, read_ahead=ahead))
        assert [r["patch_id"] for r, _ in got] == [r["patch_id"] for r in recs]
        for (_, g), e in zip(got, expected):
            if isinstance(e, F.PatchError):
                assert isinstance(g, F.PatchError) and (g.stage, g.reason, g.detail) == (e.stage, e.reason, e.detail)
            else:
                assert np.array_equal(g.pixels, e.pixels) and np.array_equal(g.label, e.label)
    assert sum(isinstance(e, F.PatchError) for e in expected) == 3
