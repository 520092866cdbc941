"""The Beam transforms on their own: row checks and de-duplication, the shard plan (which
rows each shard holds), and pickling of everything that ships to workers."""

import pickle

import apache_beam as beam
import pytest
from apache_beam.internal import pickler
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from bigearthnet_beam.schemas.manifest import shard_path
from bigearthnet_beam.transforms import metadata as md
from bigearthnet_beam.transforms.combiners import BandStatsCombineFn
from bigearthnet_beam.transforms.plan import INVALID, RowPlan, check_rows
from bigearthnet_beam.transforms.ptransforms import (
    CheckRows,
    CheckShards,
    ComputeBandStats,
    GroupByShard,
    ShardStatsFn,
    WriteShardFn,
    WriteShards,
)
from bigearthnet_beam.transforms.shard_writer import ShardConfig
from bigearthnet_beam.transforms.storage import Storage

PIDS = [f"S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_{x:02d}_{y:02d}" for x in range(3) for y in range(4)]


def _row(i, pid, split="train", **kw):
    r = {
        "patch_id": pid,
        "s1_name": "S1A_IW_GRDH_1SDV_20170613T165043_33UUP_" + pid[-5:].replace("_0", "_"),
        "split": split,
        "labels": ["Pastures"],
        "country": "Austria",
        "_source": 0,
        "_row": i,
    }
    r.update(kw)
    return r


@pytest.mark.slow
def test_check_rows_dead_letters_duplicates_and_bad_rows():
    rows = [_row(i, p) for i, p in enumerate(PIDS)]
    rows.append(_row(50, PIDS[3], split="test"))  # duplicate id: the later row is dropped
    rows.append(_row(51, "not-an-id"))
    rows.append(_row(52, PIDS[0][:-1] + "9", split="val"))
    with TestPipeline() as p:
        out = p | beam.Create(rows) | CheckRows("/data", ("train", "validation", "test"))
        assert_that(out["patches"] | beam.Map(lambda r: r["patch_id"]), equal_to(PIDS), label="patches")
        assert_that(
            out["dead"] | beam.Map(lambda d: (d["patch_id"], d["reason"], d["split"])),
            equal_to(
                [
                    (PIDS[3], "duplicate_patch_id", "test"),
                    ("not-an-id", "malformed_patch_id", "train"),
                    (PIDS[0][:-1] + "9", "unknown_split", "val"),
                ]
            ),
            label="dead",
        )
        assert_that(out["selected"], equal_to(["train"] * 13 + ["test", "val"]), label="selected")


@pytest.mark.slow
def test_check_rows_selects_splits_and_samples_deterministically():
    rows = [_row(i, p, split=("train", "validation")[i % 2]) for i, p in enumerate(PIDS)]
    keep = [p for i, p in enumerate(PIDS) if i % 2 == 0 and md.sampled(p, 0.8)]
    assert 0 < len(keep) < len(PIDS) // 2
    with TestPipeline() as p:
        out = p | beam.Create(rows) | CheckRows("/data", ("train",), frac=0.8)
        assert_that(out["patches"] | beam.Map(lambda r: r["patch_id"]), equal_to(keep))


def _plan(tmp_path, tables, splits=("train", "validation", "test"), frac=1.0, shard_size=5):
    import pyarrow as pa
    import pyarrow.parquet as pq

    urls = []
    for i, rows in enumerate(tables):
        url = str(tmp_path / f"meta{i}.parquet")
        pq.write_table(pa.Table.from_pylist([{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]), url)
        urls.append(url)
    return RowPlan.create(urls, "/data", splits, frac, shard_size)


def test_plan_shards_hold_exactly_what_a_global_check_gives(tmp_path):
    """The plan's shards, each checked on its own, give the dead letters, clean records and
    selected counts of checking all rows at once; every clean record lies in the shard of its
    patch id, in patch-id order; duplicates across splits and files are resolved the same way."""
    t0 = [_row(i, p, split=("train", "validation", "test")[i % 3]) for i, p in enumerate(PIDS)]
    t0.append(_row(len(t0), PIDS[4], split="test"))  # duplicate in another split: the first is kept
    t0.append(_row(len(t0), "not-an-id"))
    t0.append(_row(len(t0), PIDS[0][:-1] + "9", split="val"))  # unknown split
    t0.append(_row(len(t0), PIDS[1][:-1] + "8", labels=["No such class"]))
    t1 = [
        _row(0, PIDS[2], split="validation", labels=["Unknown"]),  # bad duplicate: the clean one stays
        _row(1, PIDS[5], split="train"),
    ]  # a second file repeats an id
    plan = _plan(tmp_path, [t0, t1])
    rows = [dict(r, _source=0, _row=i) for i, r in enumerate(t0)] + [
        dict(r, _source=1, _row=i) for i, r in enumerate(t1)
    ]
    want_sel, want_dead, want_clean = check_rows(rows, "/data", plan.splits, 1.0)
    got_sel, got_dead, got_clean = type(want_sel)(), [], []
    n = plan.shard_counts()
    for home in plan.homes():
        sel, dead, clean = plan.check(home)
        got_sel.update(sel)
        got_dead += dead
        got_clean += clean
        assert [r["patch_id"] for r in clean] == sorted(r["patch_id"] for r in clean)
        for r in clean:
            assert home == (r["split"], md.shard_index(r["patch_id"], n[r["split"]]), n[r["split"]])
    key = lambda d: (d["patch_id"], d["reason"], d["split"])  # noqa: E731
    assert got_sel == want_sel and sum(got_sel.values()) == len(rows)
    assert sorted(map(key, got_dead)) == sorted(map(key, want_dead)) and len(want_dead) == 6
    assert sorted(r["patch_id"] for r in got_clean) == sorted(r["patch_id"] for r in want_clean) == PIDS
    assert {r["patch_id"]: r["split"] for r in got_clean}[PIDS[4]] == "validation"
    assert plan.check(INVALID)[1] and not plan.check(INVALID)[2]
    assert plan.homes()[-1] == INVALID and len(plan.homes()) == sum(n.values()) + 1


def test_plan_samples_selects_and_notices_a_changed_metadata_file(tmp_path):
    import pytest

    rows = [_row(i, p, split=("train", "validation")[i % 2]) for i, p in enumerate(PIDS)]
    plan = _plan(tmp_path, [rows], splits=("train",), frac=0.8)
    keep = [p for i, p in enumerate(PIDS) if i % 2 == 0 and md.sampled(p, 0.8)]
    assert 0 < len(keep) < len(PIDS) // 2
    assert sorted(r["patch_id"] for h in plan.homes() for r in plan.records(h)) == keep
    assert set(plan.shard_counts()) == {"train"}
    again = _plan(tmp_path, [rows], splits=("train",), frac=0.8)
    assert again == plan and hash(again) == hash(plan)  # a plan is a value: the per-process cache key
    changed = _plan(tmp_path, [rows[:-1]], splits=("train",), frac=0.8)  # rewrites meta0.parquet
    plan = pickle.loads(pickle.dumps(plan))  # as in a fresh worker process: the index is not pickled
    assert "_index_cache" not in plan.__dict__
    with pytest.raises(md.MetadataError, match="changed while the conversion ran"):
        plan.records(plan.homes()[0])
    # the new plan reads the rewritten file: the same sample without the dropped last row
    assert sorted(r["patch_id"] for h in changed.homes() for r in changed.records(h)) == [
        p for p in keep if p != PIDS[-1]
    ]


def _tricky_rows():
    t0 = [_row(i, p, split=("train", "validation", "test")[i % 3]) for i, p in enumerate(PIDS)]
    t0.append(_row(len(t0), PIDS[4], split="test"))  # duplicate in another split: the first is kept
    t0.append(_row(len(t0), "not-an-id"))
    t0.append(_row(len(t0), PIDS[0][:-1] + "9", split="val"))  # unknown split
    t0.append(_row(len(t0), PIDS[1][:-1] + "8", labels=["No such class"]))
    t1 = [_row(0, PIDS[2], split="validation", labels=["Unknown"]), _row(1, PIDS[5], split="train")]
    return t0, t1


@pytest.mark.slow
def test_grouping_rows_in_a_pipeline_gives_the_plans_shards(tmp_path):
    """GroupByShard + CheckShards on rows (ConvertDataset's way) give exactly the shards, records,
    dead letters and selected counts of the RowPlan of the same rows as files."""
    t0, t1 = _tricky_rows()
    plan = _plan(tmp_path, [t0, t1], shard_size=2)
    rows = [dict(r, _source=0, _row=i) for i, r in enumerate(t0)] + [
        dict(r, _source=1, _row=i) for i, r in enumerate(t1)
    ]
    want_shards = [(h, plan.records(h)) for h in plan.homes() if plan.records(h)]
    want_dead = sorted(d["patch_id"] + d["reason"] for h in plan.homes() for d in plan.check(h)[1])
    want_sel: dict = {}
    for h in plan.homes():
        for k, v in plan.check(h)[0].items():
            want_sel[k] = want_sel.get(k, 0) + v
    with TestPipeline() as p:
        out = (
            p | beam.Create(rows) | GroupByShard("/data", plan.splits, 1.0, 2) | CheckShards("/data", plan.splits, 1.0)
        )
        assert_that(out["shards"], equal_to(want_shards), label="shards")
        assert_that(out["selected"], equal_to(sorted(want_sel.items())), label="selected")
        assert_that(out["dead"] | beam.Map(lambda d: d["patch_id"] + d["reason"]), equal_to(want_dead), label="dead")
    assert len(want_shards) > 3 and len(want_dead) == 6
    assert shard_path("train", 2, 12) == "train/train-00002-of-00012.tfrecord"
    assert shard_path("test", 0, 1, "gzip") == "test/test-00000-of-00001.tfrecord.gz"


def test_everything_that_ships_to_workers_pickles():
    plan = RowPlan(("/m.parquet",), ("0" * 64,), (10,), "/data", ("train",), 1.0, 5, (("train", 10),))
    config = ShardConfig(plan, "/out", "cubic", "gzip", "float16", Storage(anon=True), 12.0)
    for obj in (
        ShardStatsFn(config, 1.0),
        WriteShardFn(config),
        BandStatsCombineFn(),
        CheckRows("/data", ("train",), 0.5),
        GroupByShard("/data", ("train",), 0.5, 7),
        CheckShards("/data", ("train",), 0.5),
        ComputeBandStats(config, 0.5),
        config,
    ):
        back = pickler.loads(pickler.dumps(obj))
        assert type(back) is type(obj)
    assert pickler.loads(pickler.dumps(WriteShardFn(config))).config.storage == Storage(anon=True)
    fn = pickle.loads(pickle.dumps(WriteShardFn(ShardConfig(plan, "/o", "nearest", "gzip", "float16"))))
    assert fn.config.plan == plan
    assert (fn.config.out, fn.config.resampling, fn.config.compression, fn.config.image_dtype) == (
        "/o",
        "nearest",
        "gzip",
        "float16",
    )
    assert pickle.loads(pickle.dumps(config)) == config  # a value: the DoFns share it as it is
    assert WriteShards.__dataclass_fields__["config"] and ComputeBandStats.__dataclass_fields__["config"]


def test_read_ahead_gives_the_same_patches_and_errors_in_the_same_order(tmp_path):
    """`loaded_patches` fetches ahead on threads; what it yields equals loading one patch after
    the other: same order, same arrays, same dead-letter reasons."""
    import numpy as np
    import pyarrow.parquet as pq

    from bigearthnet_beam.beam_pipeline.cli import main
    from bigearthnet_beam.schemas import failures
    from bigearthnet_beam.schemas.naming import object_urls
    from bigearthnet_beam.transforms.shard_reader import load_patch, loaded_patches

    assert (
        main(
            [
                "synth",
                "--out",
                str(tmp_path),
                "--n",
                "14",
                "--seed",
                "5",
                "--faults",
                "missing_band_file,truncated_tiff,s1_nan",
            ]
        )
        == 0
    )
    rows = pq.read_table(tmp_path / "metadata.parquet").to_pylist()
    recs = [
        {"patch_id": r["patch_id"], "urls": object_urls(str(tmp_path), r["patch_id"], r["s1_name"])}
        for r in sorted(rows, key=lambda r: r["patch_id"])
    ]

    def one_by_one(rec):
        try:
            return load_patch(rec, "bilinear")
        except failures.PatchError as e:
            return e

    expected = [one_by_one(r) for r in recs]
    for ahead in (0, 1, 4, 32):
        got = list(loaded_patches(recs, "bilinear", 30.0, read_ahead=ahead))
        assert [r["patch_id"] for r, _ in got] == [r["patch_id"] for r in recs]
        for (_, g), e in zip(got, expected, strict=True):
            if isinstance(e, failures.PatchError):
                assert isinstance(g, failures.PatchError) and (g.stage, g.reason, g.detail) == (
                    e.stage,
                    e.reason,
                    e.detail,
                )
            else:
                assert np.array_equal(g.pixels, e.pixels) and np.array_equal(g.label, e.label)
    assert sum(isinstance(e, failures.PatchError) for e in expected) == 3
