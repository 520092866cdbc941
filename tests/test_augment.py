"""Batch augmentation (trainer.augment): each of the 8 flips / rotations keeps a label map
aligned with its image, the switch runs the drawn transform, and the input pipeline
applies one transform per batch to images and labels alike."""

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from tests.trainer_fixtures import make_tiny_dataset  # noqa: E402
from trainer import augment as A  # noqa: E402
from trainer import data as D  # noqa: E402
from trainer import model as TM  # noqa: E402


def _aligned_batch(n=3, h=6, c=4, seed=0):
    """Images whose channel 0 *is* the label map (so alignment is checkable pixel by pixel)."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 255, (n, h, h)).astype(np.uint8)
    image = rng.normal(size=(n, h, h, c)).astype(np.float32)
    image[..., 0] = label
    return image, label


def test_every_transform_keeps_label_and_image_aligned_and_the_8_are_distinct():
    image, label = _aligned_batch()
    seen = set()
    for k in range(A.NUM_TRANSFORMS):
        xi = A.dihedral(tf.constant(image), k).numpy()
        yi = A.dihedral(tf.constant(label), k).numpy()
        np.testing.assert_array_equal(xi[..., 0], yi)  # the label moved with its pixels
        for b in range(len(image)):  # the TF map is the numpy map, per patch
            np.testing.assert_array_equal(xi[b], A.dihedral_numpy(image[b], k))
            np.testing.assert_array_equal(yi[b], A.dihedral_numpy(label[b], k))
        seen.add(yi.tobytes())
    assert len(seen) == A.NUM_TRANSFORMS  # the 8 symmetries of the square, no repeats
    np.testing.assert_array_equal(A.dihedral(tf.constant(label), 0).numpy(), label)  # 0 is the identity


def test_the_switch_runs_the_drawn_transform_on_every_tensor():
    image, label = _aligned_batch(seed=1)
    for k in range(A.NUM_TRANSFORMS):
        xi, yi = A.apply_dihedral(tf.constant(k), [tf.constant(image), tf.constant(label)])
        np.testing.assert_array_equal(xi.numpy(), A.dihedral(tf.constant(image), k).numpy())
        np.testing.assert_array_equal(yi.numpy(), A.dihedral(tf.constant(label), k).numpy())
    assert {int(A.draw(tf.constant(v, tf.int64))) for v in range(-9, 9)} == set(range(8))


def test_the_pipeline_transforms_each_batch_and_its_labels_alike(tmp_path):
    tiny = make_tiny_dataset(tmp_path / "tiny", n_train=24, n_val=8, n_test=8, shards=2)
    ds = D.open_dataset(tiny.path)
    plain = list(D.make_dataset(ds, "train", batch_size=4))
    used = set()
    for seed in (1, 2, 3):
        aug = list(D.make_dataset(ds, "train", batch_size=4, augment=True, seed=seed))
        assert len(aug) == len(plain)
        for (x0, y0), (x1, y1) in zip(plain, aug, strict=True):
            x0, l0, x1, l1 = x0.numpy(), y0[TM.SEG].numpy(), x1.numpy(), y1[TM.SEG].numpy()
            ks = [k for k in range(A.NUM_TRANSFORMS)
                  if all(np.array_equal(A.dihedral_numpy(x0[b], k), x1[b])
                         and np.array_equal(A.dihedral_numpy(l0[b], k), l1[b]) for b in range(len(x0)))]
            assert ks, "a batch's images and labels were not transformed alike"
            used.update(ks)
        again = list(D.make_dataset(ds, "train", batch_size=4, augment=True, seed=seed))
        for (xa, _), (xb, _) in zip(aug, again, strict=True):  # the same seed draws the same transforms
            np.testing.assert_array_equal(xa.numpy(), xb.numpy())
    assert len(used) >= 4  # 18 batches draw several of the 8 transforms
