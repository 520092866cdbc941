"""The PyTorch dataset (``trainer.torch_data``): with DataLoader workers and ranks every record
comes exactly once per epoch, with the trainer's arrays channel-first; no TensorFlow import."""

import os
import subprocess
import sys

import numpy as np
import pytest

from bigearthnet_beam.schemas import bands, classes
from tests.trainer_fixtures import make_tiny_dataset

if os.environ.get("CI"):  # torch is in the [dev] extra: a CI run without it fails instead of skipping
    import torch
else:
    torch = pytest.importorskip("torch")

from torch.utils.data import DataLoader

from bigearthnet_beam.trainer.torch_data import BenDataset, shard_order

N_TRAIN = 13


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_dataset(tmp_path_factory.mktemp("tiny"), n_train=N_TRAIN, n_val=5, n_test=4, shards=4)


def _trainer_arrays(path: str, split: str, modalities: str = "s2,s1") -> dict:
    from bigearthnet_beam.trainer import data
    from bigearthnet_beam.trainer.model import MULTI, SEG

    ds = data.open_dataset(path)
    out = {}
    for img, tgt, ids in data.make_dataset(
        ds, split, batch_size=4, modalities=modalities, with_multi_hot=True, with_ids=True
    ):
        for i, pid in enumerate(ids.numpy()):
            out[pid.decode()] = (img[i].numpy(), tgt[SEG][i].numpy(), tgt[MULTI][i].numpy())
    return out


def _collect(loader) -> list[dict]:
    out = []
    for batch in loader:
        for i, pid in enumerate(batch["patch_id"]):
            out.append({"patch_id": pid, **{k: batch[k][i].numpy() for k in ("image", "mask", "label")}})
    return out


@pytest.mark.parametrize("split", ["train", "validation", "test"])
def test_two_workers_yield_every_record_once_with_the_trainers_arrays(tiny, split):
    ds = BenDataset(tiny.path, split, multi_hot=True, with_ids=True)
    got = _collect(DataLoader(ds, batch_size=3, num_workers=2))
    want = _trainer_arrays(tiny.path, split)
    assert sorted(g["patch_id"] for g in got) == sorted(want)  # exactly once: no duplicates, none missing
    assert len(got) == len(ds) == len(want)
    for g in got:
        img, label, mh = want[g["patch_id"]]
        assert g["image"].dtype == np.float32 and g["image"].shape == (14, 120, 120)
        np.testing.assert_array_equal(g["image"], img.transpose(2, 0, 1))  # channel-first
        assert g["mask"].dtype == np.int64
        np.testing.assert_array_equal(g["mask"], label.astype(np.int64))
        assert g["label"].dtype == np.int64
        np.testing.assert_array_equal(g["label"], mh.astype(np.int64))
    assert any((g["mask"] == classes.IGNORE_INDEX).any() for g in got)


def test_per_epoch_shuffling_is_seeded_and_complete(tiny):
    ds = BenDataset(tiny.path, "train", with_ids=True, shuffle=True, shuffle_buffer=4, seed=3)

    def order(epoch):
        ds.set_epoch(epoch)
        return [pid for b in DataLoader(ds, batch_size=None, num_workers=2) for pid in [b["patch_id"]]]

    e0, e0_again, e1 = order(0), order(0), order(1)
    assert e0 == e0_again  # same seed and epoch: same order
    assert e0 != e1  # a new epoch: a new order
    assert sorted(e0) == sorted(e1) == sorted(tiny.arrays["train"])
    plain = [b["patch_id"] for b in BenDataset(tiny.path, "train", with_ids=True)]
    assert plain != e0 and sorted(plain) == sorted(e0)


def test_ranks_and_workers_partition_the_split(tiny):
    # 13 records over 2 ranks: 7 each, the second rank padding with one record of the first
    seen = []
    for rank in range(2):
        ds = BenDataset(tiny.path, "train", with_ids=True, shuffle=True, seed=1, rank=rank, world_size=2)
        got = [b["patch_id"] for b in DataLoader(ds, batch_size=None, num_workers=2)]
        assert len(got) == ds.per_rank() == 7
        seen += got
    assert set(seen) == set(tiny.arrays["train"]) and len(seen) == 14
    cut = []
    for rank in range(2):
        ds = BenDataset(tiny.path, "train", with_ids=True, rank=rank, world_size=2, drop_last=True)
        cut += [b["patch_id"] for b in DataLoader(ds, batch_size=None, num_workers=2)]
        assert ds.per_rank() == 6
    assert len(cut) == len(set(cut)) == 12 and set(cut) <= set(tiny.arrays["train"])
    for n in (4, 7, 2):
        assert sorted(shard_order(n, seed=9, epoch=2)) == list(range(n))


def test_modalities_select_channels_in_the_formats_order(tiny):
    s1 = next(iter(BenDataset(tiny.path, "test", modalities="s1", with_ids=True)))
    pid = s1["patch_id"]
    np.testing.assert_array_equal(s1["image"].numpy(), tiny.arrays["test"][pid]["s1"].transpose(2, 0, 1))
    assert s1["image"].shape == (len(bands.S1_NAMES), 120, 120) and "label" not in s1
    s2 = next(iter(BenDataset(tiny.path, "test", modalities="s2")))
    assert s2["image"].shape == (len(bands.S2_NAMES), 120, 120) and set(s2) == {"image", "mask"}


def test_float16_dataset_gives_float32_tensors(tmp_path):
    t = make_tiny_dataset(tmp_path / "f16", n_train=3, n_val=0, n_test=0, shards=1, image_dtype="float16")
    got = {s["patch_id"]: s for s in BenDataset(t.path, "train", with_ids=True)}
    for pid, a in t.arrays["train"].items():
        img = np.concatenate([a["s2"], a["s1"]], -1).astype(np.float32).transpose(2, 0, 1)
        assert got[pid]["image"].dtype == torch.float32
        np.testing.assert_array_equal(got[pid]["image"].numpy(), img)


def test_torchgeo_split_name_is_refused_with_the_fix(tiny):
    with pytest.raises(ValueError, match="'validation'"):
        BenDataset(tiny.path, "val")


def test_no_tensorflow_import(tiny):
    code = (
        "import sys\nfrom bigearthnet_beam.trainer.torch_data import BenDataset\n"
        "from torch.utils.data import DataLoader\n"
        f"n = sum(len(b['mask']) for b in DataLoader(BenDataset({tiny.path!r}, 'train'), batch_size=4))\n"
        "assert n == %d, n\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'apache_beam'))\n"
        "assert not bad, bad\nprint('ok')" % N_TRAIN
    )
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


@pytest.mark.slow
def test_reads_gs_with_two_workers(tiny, monkeypatch):
    from bigearthnet_beam.transforms import storage
    from tests.servers import fake_gcs

    with fake_gcs() as endpoint:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", endpoint)
        storage.configure()
        try:
            storage.filesystem("gs://").mkdir("torch")
            storage.upload_tree(tiny.path, "gs://torch/tiny")
            ds = BenDataset("gs://torch/tiny", "train", multi_hot=True, with_ids=True)
            got = _collect(DataLoader(ds, batch_size=4, num_workers=2))
        finally:
            storage.configure()
    assert sorted(g["patch_id"] for g in got) == sorted(tiny.arrays["train"])
    for g in got:
        a = tiny.arrays["train"][g["patch_id"]]
        np.testing.assert_array_equal(g["image"], np.concatenate([a["s2"], a["s1"]], -1).transpose(2, 0, 1))
