"""Augmentation inside the model (trainer.augment): each of the 8 flips / rotations and its
inverse, the training-time wrapper ``T^-1(unet(T(x)))`` and its loss (equal to the plain
model's on transformed image and label), an input pipeline that does no augmentation work,
and a saved model that is the plain U-Net."""

import json
import subprocess
import sys
import zipfile

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from bigearthnet_beam.trainer import augment as augmentation  # noqa: E402
from bigearthnet_beam.trainer import data as trainer_data  # noqa: E402
from bigearthnet_beam.trainer import model as unet_model  # noqa: E402
from bigearthnet_beam.trainer.config import TrainConfig  # noqa: E402
from bigearthnet_beam.trainer.train import train  # noqa: E402
from tests.trainer_fixtures import make_tiny_dataset  # noqa: E402

FAST = dict(width=4, batch=8, tensorboard=False, verbose=0)


def _aligned_batch(n=3, h=6, c=4, seed=0):
    """Images whose channel 0 *is* the label map (so alignment is checkable pixel by pixel)."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 255, (n, h, h)).astype(np.uint8)
    image = rng.normal(size=(n, h, h, c)).astype(np.float32)
    image[..., 0] = label
    return image, label


def _numpy_batch(a, k):
    return np.stack([augmentation.dihedral_numpy(p, k) for p in a])


def test_every_transform_keeps_label_and_image_aligned_and_the_8_are_distinct():
    image, label = _aligned_batch()
    seen = set()
    for k in range(augmentation.NUM_TRANSFORMS):
        xi = augmentation.dihedral(tf.constant(image), k).numpy()
        yi = augmentation.dihedral(tf.constant(label), k).numpy()
        np.testing.assert_array_equal(xi[..., 0], yi)  # the label moved with its pixels
        np.testing.assert_array_equal(xi, _numpy_batch(image, k))  # the TF map is the numpy map, per patch
        np.testing.assert_array_equal(yi, _numpy_batch(label, k))
        seen.add(yi.tobytes())
    assert len(seen) == augmentation.NUM_TRANSFORMS  # the 8 symmetries of the square, no repeats
    np.testing.assert_array_equal(augmentation.dihedral(tf.constant(label), 0).numpy(), label)  # 0 is the identity


def test_the_switch_runs_the_drawn_transform_and_the_inverse_undoes_it():
    image, label = _aligned_batch(seed=1)
    for k in range(augmentation.NUM_TRANSFORMS):
        xi, yi = augmentation.apply_dihedral(tf.constant(k), [tf.constant(image), tf.constant(label)])
        np.testing.assert_array_equal(xi.numpy(), _numpy_batch(image, k))
        np.testing.assert_array_equal(yi.numpy(), _numpy_batch(label, k))
        (back,) = augmentation.apply_inverse(tf.constant(k), [xi])
        np.testing.assert_array_equal(back.numpy(), image)
        # INVERSE is the inverse in the numpy map too (not only of the TF ops)
        np.testing.assert_array_equal(_numpy_batch(_numpy_batch(image, k), augmentation.INVERSE[k]), image)


@pytest.fixture(scope="module")
def wrapped():
    """A narrow two-head U-Net (8×8 patches), compiled with class weights, and its wrapper."""
    tf.keras.utils.set_random_seed(0)
    net = unet_model.build_unet(3, width=4, depth=1, task="both", size=8, info={})
    unet_model.compile_model(net, class_weights=list(np.linspace(0.5, 2.0, unet_model.NUM_CLASSES)), task="both")
    return net, augmentation.augmented(net, seed=3)


def test_the_wrapper_is_the_inverse_transform_of_the_unet_of_the_transformed_batch(wrapped):
    net, model = wrapped
    x = np.random.default_rng(2).normal(size=(2, 8, 8, 3)).astype(np.float32)
    plain = net(x, training=False)
    np.testing.assert_array_equal(model(x, training=False)[unet_model.SEG].numpy(), plain[unet_model.SEG].numpy())
    outs = []
    for k in range(augmentation.NUM_TRANSFORMS):
        got = model.transformed(tf.constant(x), tf.constant(k), training=False)
        ref = net(_numpy_batch(x, k), training=False)
        np.testing.assert_allclose(
            got[unet_model.SEG].numpy(),
            _numpy_batch(ref[unet_model.SEG].numpy(), augmentation.INVERSE[k]),
            rtol=0,
            atol=1e-6,
        )
        np.testing.assert_array_equal(
            got[unet_model.MULTI].numpy(), ref[unet_model.MULTI].numpy()
        )  # not spatial: as it is
        outs.append(got[unet_model.SEG].numpy())
    # the U-Net is not equivariant itself, so the 8 wrapped outputs differ: the transform really ran
    assert max(np.abs(o - outs[0]).max() for o in outs[1:]) > 1e-4
    # training=True draws one of the 8 per call (batch norm then uses batch statistics)
    train_outs = [
        model.transformed(tf.constant(x), tf.constant(k), training=True)[unet_model.SEG].numpy()
        for k in range(augmentation.NUM_TRANSFORMS)
    ]
    drawn = set()
    for _ in range(12):
        d = model(x, training=True)[unet_model.SEG].numpy()
        ks = [k for k, o in enumerate(train_outs) if np.allclose(d, o, rtol=0, atol=1e-6)]
        assert ks, "a training call matched none of the 8 transforms"
        drawn.update(ks)
    assert len(drawn) > 1  # a fresh transform per call


def test_the_wrappers_loss_equals_the_plain_models_on_the_transformed_image_and_label(wrapped):
    net, model = wrapped
    rng = np.random.default_rng(4)
    x = rng.normal(size=(2, 8, 8, 3)).astype(np.float32)
    seg = rng.integers(0, unet_model.NUM_CLASSES, (2, 8, 8)).astype(np.uint8)
    seg[0, :2] = 255  # ignored pixels move with the label too
    multi = rng.integers(0, 2, (2, unet_model.NUM_CLASSES)).astype(np.float32)
    losses = set()
    for k in range(augmentation.NUM_TRANSFORMS):
        y = {unet_model.SEG: tf.constant(seg), unet_model.MULTI: tf.constant(multi)}
        wrapper_loss = model.compute_loss(x, y, model.transformed(tf.constant(x), tf.constant(k), training=False))
        tx = _numpy_batch(x, k)
        ty = {unet_model.SEG: tf.constant(_numpy_batch(seg, k)), unet_model.MULTI: tf.constant(multi)}
        plain_loss = net.compute_loss(tx, ty, net(tx, training=False))
        np.testing.assert_allclose(float(wrapper_loss), float(plain_loss), rtol=1e-5)
        losses.add(round(float(plain_loss), 6))
    assert len(losses) > 1  # the losses of the 8 transformed batches differ: the check can fail


@pytest.mark.slow
def test_train_augment_feeds_the_unaugmented_pipeline_and_saves_the_plain_unet(tmp_path, monkeypatch):
    """The input pipeline of `train --augment` yields exactly the batches of `train` without it; the
    saved model is the plain U-Net (plain Keras loads it without the project); --resume works."""
    from tests.test_trainer import PLAIN_KERAS_LOAD

    tiny = make_tiny_dataset(tmp_path / "tiny", n_train=16, n_val=4, n_test=4, shards=2)
    built = []
    real = trainer_data.make_dataset

    def spy(ds, split, **kwargs):
        out = real(ds, split, **kwargs)
        if split == "train":
            built.append(
                (kwargs, [x.numpy() for x, _ in out.take(2)], [y[unet_model.SEG].numpy() for _, y in out.take(2)])
            )
        return out

    monkeypatch.setattr(trainer_data, "make_dataset", spy)
    runs = {}
    for aug in (False, True):
        runs[aug] = str(tmp_path / f"aug{int(aug)}" / "m.keras")
        train(
            TrainConfig(
                data=tiny.path, save=runs[aug], epochs=1, max_train_patches=16, augment=aug, deterministic=True, **FAST
            )
        )
    (kw0, x0, y0), (kw1, x1, y1) = built
    assert kw0 == kw1
    for a, b in zip(x0 + y0, x1 + y1, strict=True):
        np.testing.assert_array_equal(a, b)
    # the augmentation did act: other weights than without it
    w = [unet_model.load_model(runs[a])[0].get_weights() for a in (False, True)]
    assert any(not np.array_equal(p, q) for p, q in zip(*w, strict=True))
    with zipfile.ZipFile(runs[True]) as z:
        config = z.read("config.json").decode()
    assert "dihedral" not in config.lower() and json.loads(config)["class_name"] != "DihedralAugment"
    x = np.zeros((1, 120, 120, 14), np.float32)
    np.save(tmp_path / "x.npy", x)
    (tmp_path / "load.py").write_text(PLAIN_KERAS_LOAD)
    r = subprocess.run(
        [sys.executable, "load.py", runs[True], "x.npy", "seg.npy"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    m = train(
        TrainConfig(data=tiny.path, save=runs[True], epochs=2, max_train_patches=16, augment=True, resume=True, **FAST)
    )
    assert m["epochs_completed"] == 2 and m["epochs_this_run"] == 1
