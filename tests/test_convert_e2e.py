"""End to end through the real CLI: synth (with every fault kind) -> index -> validate -> convert.

Checks the dead letters against the generator's ground truth, the accounting invariant,
the TFRecords against an independent rasterio reference, the statistics against numpy,
and byte-identical reruns.
"""

import json
from collections import Counter

import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
from rasterio.enums import Resampling
from rasterio.io import MemoryFile

from bigearthnet_beam.beam_pipeline.cli import main
from bigearthnet_beam.schemas import bands, classes, manifest, tfrecord
from bigearthnet_beam.schemas.failures import FAULT_EXPECTATIONS, FAULT_KINDS
from bigearthnet_beam.schemas.naming import object_urls
from tests.helpers import IN_PROCESS
from tests.helpers import read_failures as _failures
from tests.helpers import read_manifest as _manifest


@pytest.fixture(scope="module")
def reben(replica):
    """The session's replica (tests/conftest.py): 36 patches, every fault kind once; read-only."""
    assert len(json.loads((replica / "injected_faults.json").read_text())) == len(FAULT_KINDS)
    return replica


def convert(reben, out, *extra):
    argv = [
        "convert",
        "--max_failure_fraction",
        "1",
        "--meta",
        str(reben / "metadata.parquet"),
        "--out",
        str(out),
        "--shard_size",
        "8",
        *IN_PROCESS,  # (test_rerun_is_byte_identical_and_index_path_matches runs the worker processes)
        *extra,
    ]
    return main(argv)


@pytest.fixture(scope="module")
def dataset(converted):
    """The session's conversion of the replica, with the flags of ``convert`` above; read-only."""
    return converted


@pytest.mark.slow
def test_every_injected_fault_is_dead_lettered_and_no_clean_patch(reben, dataset):
    injected = json.loads((reben / "injected_faults.json").read_text())
    assert sorted(f["kind"] for f in injected) == sorted(FAULT_KINDS)
    got = {d["patch_id"]: d for d in _failures(dataset)}
    for f in injected:
        stage, reason = FAULT_EXPECTATIONS[f["kind"]]
        assert f["patch_id"] in got, f"injected {f['kind']} not dead-lettered"
        d = got[f["patch_id"]]
        assert (d["stage"], d["reason"]) == (stage, reason), (f, d)
        assert d["detail"]
    assert set(got) == {f["patch_id"] for f in injected}


def test_accounting_invariant_and_manifest(reben, dataset):
    man = _manifest(dataset)
    manifest.validate(man)
    meta = pq.read_table(reben / "metadata.parquet").to_pylist()
    per_split = Counter(r["split"] for r in meta)
    assert {s: e["input"] for s, e in man["splits"].items()} == dict(per_split)
    for e in man["splits"].values():
        assert e["written"] + e["failed"] == e["input"]
        for sh in e["shards"]:
            assert (dataset / sh["path"]).exists()
    assert man["failures"]["total"] == len(FAULT_KINDS)
    assert man["input"]["metadata"][0]["rows"] == len(meta)
    # no temp files left behind, no stray files outside the declared ones
    leftovers = [p for p in dataset.rglob("*") if p.name.startswith(".tmp")]
    assert leftovers == []


def _reference_patch(reben, rec, stats):
    """Independent reference: rasterio reads + rasterio resampling + the stats.json params."""
    urls = object_urls(str(reben), rec["patch_id"], rec["s1_name"])
    chans = []
    for band in bands.ALL_BANDS:
        with rasterio.open(urls[band.name]) as ds:
            native, profile = ds.read(1).astype(np.float32), ds.profile
        # GDAL resamples in the file's dtype (rounding uint16 results); resample a float32
        # copy of the same raster so the reference is exact.
        profile.update(dtype="float32", nodata=None)
        with MemoryFile() as mem:
            with mem.open(**profile) as tmp:
                tmp.write(native, 1)
            with mem.open() as tmp:
                chans.append(
                    tmp.read(1, out_shape=(bands.PATCH_SIZE, bands.PATCH_SIZE), resampling=Resampling.bilinear)
                )
    with rasterio.open(urls["reference_map"]) as ds:
        label = classes.map_reference(ds.read(1))
    x = np.stack(chans, -1).astype(np.float64)
    norm = stats["normalization"]
    lo, hi = np.array(norm["lo"]), np.array(norm["hi"])
    off, scale = np.array(norm["offset"]), np.array(norm["scale"])
    x = (np.clip(x, lo, hi) - off) / scale if stats["clip"] else (x - off) / scale
    return x, label


def test_tfrecords_parse_back_to_the_normalised_arrays(reben, dataset):
    import tensorflow as tf

    man = _manifest(dataset)
    stats = json.loads((dataset / manifest.STATS_JSON).read_text())
    meta = {r["patch_id"]: r for r in pq.read_table(reben / "metadata.parquet").to_pylist()}
    spec = tfrecord.parsing_spec(man["image_dtype"])
    seen = 0
    for split, e in man["splits"].items():
        for sh in e["shards"]:
            ids = []
            for raw in tf.data.TFRecordDataset(str(dataset / sh["path"])):
                ex = tfrecord.decode_parsed(tf.io.parse_single_example(raw, spec))
                pid = ex[tfrecord.PATCH_ID].numpy().decode()
                ids.append(pid)
                rec = meta[pid]
                x, label = _reference_patch(reben, rec, stats)
                got = np.concatenate([ex[tfrecord.S2].numpy(), ex[tfrecord.S1].numpy()], -1)
                assert got.shape == (120, 120, 14) and got.dtype == np.float32
                np.testing.assert_allclose(got, x, atol=1e-4, rtol=0)
                np.testing.assert_array_equal(ex[tfrecord.LABEL].numpy(), label)
                np.testing.assert_array_equal(ex[tfrecord.MULTI_HOT].numpy(), classes.multi_hot(rec["labels"]))
                assert ex[tfrecord.SPLIT].numpy().decode() == split == rec["split"]
                assert ex[tfrecord.COUNTRY].numpy().decode() == rec["country"]
                seen += 1
            assert ids == sorted(ids)
            assert len(ids) == sh["records"]
    assert seen == sum(e["written"] for e in man["splits"].values()) == len(meta) - len(FAULT_KINDS)


def test_statistics_equal_numpy_over_the_training_pixels(reben, dataset):
    from bigearthnet_beam.transforms.patch import decode_patch, fetch_objects

    stats = json.loads((dataset / manifest.STATS_JSON).read_text())
    bad = {d["patch_id"] for d in _failures(dataset)}
    rows = [
        r
        for r in pq.read_table(reben / "metadata.parquet").to_pylist()
        if r["split"] == "train" and r["patch_id"] not in bad
    ]
    assert rows
    pix = []
    for r in rows:
        p = decode_patch(r["patch_id"], fetch_objects(object_urls(str(reben), r["patch_id"], r["s1_name"])))
        pix.append(np.concatenate([p.s2, p.s1], -1).reshape(-1, 14))
    pix = np.concatenate(pix)
    for i, name in enumerate(bands.ALL_NAMES):
        s = stats["bands"][name]
        assert s["count"] == len(pix)
        assert s["mean"] == pytest.approx(np.mean(pix[:, i], dtype=np.float64), rel=1e-6)
        assert s["std"] == pytest.approx(np.std(pix[:, i], dtype=np.float64), rel=1e-6)
        width = (bands.BAND_BY_NAME[name].hist_max - bands.BAND_BY_NAME[name].hist_min) / bands.HIST_BINS
        assert abs(s["p_low"] - np.percentile(pix[:, i], 1)) <= width
        assert abs(s["p_high"] - np.percentile(pix[:, i], 99)) <= width


@pytest.mark.slow
def test_rerun_is_byte_identical_and_index_path_matches(reben, dataset, tmp_path):
    out2 = tmp_path / "again"
    idx = tmp_path / "indexed.parquet"
    assert main(["index", "--meta", str(reben / "metadata.parquet"), "--out", str(idx)]) == 0
    # the index carries the URLs; kept outside the dataset, it needs the root named (an index
    # never decides what may be read): same shards; and the multi-process runner gives the
    # bytes of the session dataset, which was converted in one process (tests/conftest.py)
    argv = ["convert", "--max_failure_fraction", "1", "--meta", str(idx), "--root", str(reben), "--out", str(out2)]
    assert main([*argv, "--shard_size", "8"]) == 0
    a, b = _manifest(dataset), _manifest(out2)
    for split in a["splits"]:
        assert [s["sha256"] for s in a["splits"][split]["shards"]] == [
            s["sha256"] for s in b["splits"][split]["shards"]
        ]
    for sh in a["splits"]["train"]["shards"]:
        assert (dataset / sh["path"]).read_bytes() == (out2 / sh["path"]).read_bytes()
    assert (dataset / manifest.FAILURES_JSONL).read_bytes() == (out2 / manifest.FAILURES_JSONL).read_bytes()
    assert a["statistics"] == b["statistics"]


def test_verify_accepts_the_dataset_and_catches_one_corrupt_byte(dataset, tmp_path, capsys):
    import shutil

    assert main(["verify", str(dataset)]) == 0
    copy = tmp_path / "copy"
    shutil.copytree(dataset, copy)
    shard = copy / _manifest(copy)["splits"]["train"]["shards"][0]["path"]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["verify", str(copy)]) == 1
    err = capsys.readouterr().err
    assert "sha256" in err and "CRC" in err
    (copy / manifest.MANIFEST).unlink()
    assert main(["verify", str(copy)]) == 2


@pytest.mark.slow
def test_validate_reports_missing_objects_and_deep_finds_the_rest(reben, tmp_path):
    rep_path = tmp_path / "validation.json"
    # the replica fails on purpose: more than --max_failure_fraction (0.05) of it, so exit 1 after the report
    assert main(["validate", "--meta", str(reben / "metadata.parquet"), "--out", str(rep_path), *IN_PROCESS]) == 1
    rep = json.loads(rep_path.read_text())
    injected = {f["patch_id"]: f["kind"] for f in json.loads((reben / "injected_faults.json").read_text())}
    shallow = {k for k, (stage, _) in FAULT_EXPECTATIONS.items() if stage == "fetch"}
    failing = {f["patch_id"]: f for f in rep["failures"]}
    assert {injected[p] for p in failing} == shallow
    for pid, f in failing.items():
        assert f["reasons"][0]["reason"] == FAULT_EXPECTATIONS[injected[pid]][1]
    assert rep["totals"]["patches"] == pq.read_metadata(reben / "metadata.parquet").num_rows
    assert rep["totals"]["failed"] == len(shallow)
    deep_path = tmp_path / "deep.json"
    assert (
        main(
            [
                "validate",
                "--meta",
                str(reben / "metadata.parquet"),
                "--out",
                str(deep_path),
                "--deep",
                "--max_failure_fraction",
                "1",
                *IN_PROCESS,
            ]
        )
        == 0
    )
    deep = json.loads(deep_path.read_text())
    assert {f["patch_id"] for f in deep["failures"]} == set(injected)


@pytest.mark.slow
def test_stats_reuse_frac_subset_and_failure_threshold(reben, dataset, tmp_path):
    # --stats applies the training statistics to a validation-only conversion
    out = tmp_path / "val"
    assert (
        convert(
            reben,
            out,
            "--splits",
            "validation",
            "--stats",
            str(dataset / manifest.STATS_JSON),
            "--compression",
            "gzip",
            "--dtype",
            "float16",
        )
        == 0
    )
    man = _manifest(out)
    assert set(man["splits"]) == {"validation"}
    assert man["statistics"]["normalization"] == _manifest(dataset)["statistics"]["normalization"]
    assert man["compression"] == "gzip" and man["image_dtype"] == "float16"
    assert all(sh["path"].endswith(".tfrecord.gz") for sh in man["splits"]["validation"]["shards"])
    # float16 + gzip parse with the schema spec and match the float32 dataset's values
    import tensorflow as tf

    a = {}
    for sh in _manifest(dataset)["splits"]["validation"]["shards"]:
        for raw in tf.data.TFRecordDataset(str(dataset / sh["path"])):
            ex = tfrecord.decode_parsed(tf.io.parse_single_example(raw, tfrecord.parsing_spec("float32")))
            a[ex[tfrecord.PATCH_ID].numpy()] = ex[tfrecord.S2].numpy()
    n = 0
    for sh in man["splits"]["validation"]["shards"]:
        for raw in tf.data.TFRecordDataset(str(out / sh["path"]), compression_type="GZIP"):
            ex = tfrecord.decode_parsed(tf.io.parse_single_example(raw, tfrecord.parsing_spec("float16")), "float16")
            got = ex[tfrecord.S2].numpy()
            assert got.dtype == np.float16
            np.testing.assert_allclose(got.astype(np.float32), a[ex[tfrecord.PATCH_ID].numpy()], atol=4e-3, rtol=1e-3)
            n += 1
    assert n == man["splits"]["validation"]["written"] > 0
    assert main(["verify", str(out)]) == 0
    # without train and without --stats: a clear error, nothing written
    bad = tmp_path / "bad"
    assert convert(reben, bad, "--splits", "validation") == 2
    assert not (bad / manifest.MANIFEST).exists()
    # more than 1% failed -> exit 1, but everything is written
    thr = tmp_path / "thr"
    assert convert(reben, thr, "--max_failure_fraction", "0.01") == 1
    assert (thr / manifest.MANIFEST).exists()
    # frac sample is a subset
    small = tmp_path / "small"
    assert convert(reben, small, "--frac", "0.5") == 0
    sm = _manifest(small)
    assert 0 < sm["input"]["rows_selected"] < _manifest(dataset)["input"]["rows_selected"]


@pytest.mark.slow
def test_label_disagreements_are_counted_not_failed_and_stats_fraction(reben, dataset, tmp_path):
    import pyarrow as pa

    table = pq.read_table(reben / "metadata.parquet")
    rows = table.to_pylist()
    bad = {d["patch_id"] for d in _failures(dataset)}
    victim = next(r for r in rows if r["split"] == "train" and r["patch_id"] not in bad and len(r["labels"]) > 1)
    victim["labels"] = victim["labels"][:-1]  # metadata now lacks a class the map holds
    meta = tmp_path / "metadata.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), meta)
    out = tmp_path / "dis"
    assert (
        main(
            [
                "convert",
                "--max_failure_fraction",
                "1",
                "--meta",
                str(meta),
                "--root",
                str(reben),
                "--out",
                str(out),
                "--shard_size",
                "8",
                "--stats_fraction",
                "0.5",
                *IN_PROCESS,
            ]
        )
        == 0
    )
    man = _manifest(out)
    assert man["splits"]["train"]["label_disagreements"] == 1
    assert man["splits"]["train"]["written"] == _manifest(dataset)["splits"]["train"]["written"]
    # statistics from a deterministic half of the training patches
    full = _manifest(dataset)["statistics"]["bands"]["B02"]["count"]
    half = man["statistics"]["bands"]["B02"]["count"]
    assert 0 < half < full and half % (120 * 120) == 0
    # the TensorFlow Metadata schema is written and parses
    from google.protobuf import text_format
    from tensorflow_metadata.proto.v0 import schema_pb2

    schema = text_format.Parse((out / manifest.TFMD_SCHEMA).read_text(), schema_pb2.Schema())
    assert [f.name for f in schema.feature] == [f.name for f in tfrecord.features()]
