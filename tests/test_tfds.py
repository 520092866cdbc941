"""TFDS reads a converted dataset: ``tfds.builder_from_directory(OUT).as_dataset(split=...)``
yields, for every split, the same arrays as the trainer's reader (``trainer.data``)."""

import json
import os

import numpy as np
import pytest

from bigearthnet_beam.schemas import bands, classes, tfrecord
from bigearthnet_beam.schemas import manifest as manifest_schema
from bigearthnet_beam.transforms import tfds_meta
from tests.helpers import IN_PROCESS
from tests.trainer_fixtures import make_tiny_dataset

if os.environ.get("CI"):  # the [dev] extra has it: a CI run without it fails instead of skipping
    import tensorflow_datasets as tfds
else:
    tfds = pytest.importorskip("tensorflow_datasets")


def _trainer_arrays(path: str, split: str) -> dict:
    """patch id -> (image float32[H,W,14], label uint8[H,W], multi-hot float32[19]) through trainer.data."""
    from bigearthnet_beam.trainer import data
    from bigearthnet_beam.trainer.model import MULTI, SEG

    ds = data.open_dataset(path)
    out = {}
    for img, tgt, ids in data.make_dataset(ds, split, batch_size=5, with_multi_hot=True, with_ids=True):
        for i, pid in enumerate(ids.numpy()):
            out[pid.decode()] = (img[i].numpy(), tgt[SEG][i].numpy(), tgt[MULTI][i].numpy())
    return out


def _tfds_arrays(path: str, split: str) -> dict:
    builder = tfds.builder_from_directory(path)
    out = {}
    for ex in tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)):
        image = np.concatenate([ex[tfrecord.S2].astype(np.float32), ex[tfrecord.S1].astype(np.float32)], -1)
        out[ex[tfrecord.PATCH_ID].decode()] = (image, ex[tfrecord.LABEL], ex[tfrecord.MULTI_HOT].astype(np.float32), ex)
    return out


def _assert_same(path: str, manifest: dict) -> None:
    builder = tfds.builder_from_directory(path)
    assert set(builder.info.splits) == {s for s, e in manifest["splits"].items() if e["shards"]}
    for split, entry in manifest["splits"].items():
        info = builder.info.splits[split]
        assert info.num_examples == entry["written"]
        assert list(info.shard_lengths) == [s["records"] for s in entry["shards"]]
        want, got = _trainer_arrays(path, split), _tfds_arrays(path, split)
        assert sorted(got) == sorted(want) and len(got) == entry["written"]
        for pid, (img, label, mh) in want.items():
            g_img, g_label, g_mh, ex = got[pid]
            np.testing.assert_array_equal(g_img, img)
            np.testing.assert_array_equal(g_label, label)
            np.testing.assert_array_equal(g_mh, mh)
            assert ex[tfrecord.S2].dtype == np.dtype(manifest["image_dtype"]) and ex[tfrecord.S2].shape == (
                120,
                120,
                12,
            )
            assert ex[tfrecord.LABEL].dtype == np.uint8 and ex[tfrecord.MULTI_HOT].dtype == np.int64
            assert ex[tfrecord.SPLIT].decode() == split


@pytest.mark.parametrize("image_dtype", ["float32", "float16"])
def test_tfds_reads_every_split_like_the_trainer(tmp_path, image_dtype):
    tiny = make_tiny_dataset(tmp_path / "ds", n_train=7, n_val=5, n_test=3, shards=3, image_dtype=image_dtype)
    before = {
        p: open(os.path.join(tiny.path, p), "rb").read()
        for e in tiny.manifest["splits"].values()
        for p in (s["path"] for s in e["shards"])
    }
    assert tfds_meta.write(tiny.path, tiny.manifest) == sorted(tfds_meta.FILES)
    _assert_same(tiny.path, tiny.manifest)
    # shard names and bytes unchanged: TFDS reads the existing layout
    assert {p: open(os.path.join(tiny.path, p), "rb").read() for p in before} == before
    builder = tfds.builder_from_directory(tiny.path)
    assert builder.info.metadata["classes"] == list(classes.CLASS_NAMES)
    assert builder.info.metadata["bands"] == {"s2": list(bands.S2_NAMES), "s1": list(bands.S1_NAMES)}
    assert set(builder.info.features) == {f.name for f in tfrecord.features(image_dtype)}


def test_tfds_files_are_derived_deterministically(tmp_path):
    tiny = make_tiny_dataset(tmp_path / "ds", n_train=4, n_val=2, n_test=0, shards=2)
    first = tfds_meta.documents(tiny.manifest)
    assert first == tfds_meta.documents(json.loads(manifest_schema.dumps(tiny.manifest)))
    info = json.loads(first[tfds_meta.DATASET_INFO])
    assert [s["name"] for s in info["splits"]] == ["train", "validation"]
    assert info["splits"][0]["shardLengths"] == ["2", "2"]


def test_verify_checks_the_tfds_files_against_the_manifest(tmp_path):
    from bigearthnet_beam.beam_pipeline.verify import verify

    tiny = make_tiny_dataset(tmp_path / "ds", n_train=4, n_val=2, n_test=0, shards=2)
    assert verify(tiny.path) == []  # no TFDS files (an older dataset): nothing to check
    tfds_meta.write(tiny.path, tiny.manifest)
    assert verify(tiny.path) == []
    info = tmp_path / "ds" / tfds_meta.DATASET_INFO
    info.write_text(info.read_text().replace('"2"', '"3"', 1))  # a shard length that is not the manifest's
    assert verify(tiny.path) == [
        f"{tfds_meta.DATASET_INFO}: differs from what dataset.json derives (re-run `benbeam convert`)"
    ]


def test_gzip_dataset_gets_no_tfds_files_and_stale_ones_go(tmp_path):
    tiny = make_tiny_dataset(tmp_path / "ds", n_train=4, n_val=0, n_test=0, shards=1, compression="gzip")
    for name in tfds_meta.FILES:  # as an earlier uncompressed run into the same folder left them
        (tmp_path / "ds" / name).write_text("{}")
    assert tfds_meta.write(tiny.path, tiny.manifest) == []
    assert not any((tmp_path / "ds" / name).exists() for name in tfds_meta.FILES)


@pytest.mark.slow
def test_convert_writes_tfds_metadata_readable_like_the_trainer(tmp_path):
    from bigearthnet_beam.beam_pipeline.cli import main

    root, out = tmp_path / "reben", tmp_path / "out"
    assert main(["synth", "--out", str(root), "--n", "14", "--seed", "3", "--workers", "1"]) == 0
    assert (
        main(
            [
                "convert",
                "--meta",
                str(root / "metadata.parquet"),
                "--out",
                str(out),
                "--shard_size",
                "3",
                "--no_report",
                *IN_PROCESS,
            ]
        )
        == 0
    )
    man = json.loads((out / manifest_schema.MANIFEST).read_text())
    assert all((out / name).exists() for name in tfds_meta.FILES)
    assert (out / tfds_meta.DATASET_INFO).read_bytes() == tfds_meta.documents(man)[tfds_meta.DATASET_INFO]
    _assert_same(str(out), man)
