"""Flip / 90° rotation augmentation, run inside the fitted model (on the accelerator).

``DihedralAugment`` wraps the U-Net for training only: ``x -> T(x) -> unet -> T^-1(out)``
for one element ``T`` of the dihedral group D4 (the 8 symmetries of a square) drawn per
batch from a seeded ``keras.random.SeedGenerator``. The per-pixel loss and metrics are
invariant under the pixel permutation ``T^-1``, so this equals training the U-Net on
``(T(x), T(y))``: image and label map transformed alike, with no augmentation work left in
the ``tf.data`` pipeline. Outside training (validation) the wrapper is the plain U-Net,
and ``--save`` always gets the plain U-Net (``unwrap``), never the wrapper.

One switch between 8 branches runs only the drawn transform (at most one transpose and
one reverse per tensor); the multi-label head's output, not spatial, is left as it is.

Transform ``k`` (0..7): bit 2 = transpose rows and columns, then bit 1 = reverse the
columns (left-right flip), then bit 0 = reverse the rows (up-down flip); 0 is the
identity. ``dihedral_numpy`` is the same map on numpy arrays (tests, tools).
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

NUM_TRANSFORMS = 8
# INVERSE[k]: the transform undoing k (5 and 6 are the two 90° rotations; the rest are involutions)
INVERSE = (0, 1, 2, 3, 4, 6, 5, 7)


def _parts(k: int) -> tuple[bool, bool, bool]:
    return bool(k & 4), bool(k & 2), bool(k & 1)


def _flip_rows(x: tf.Tensor) -> tf.Tensor:
    # a gather of whole rows: ~1.5x cheaper than tf.reverse on axis 1 (measured)
    return tf.gather(x, tf.range(tf.shape(x)[1] - 1, -1, -1), axis=1)


def _flip_cols(x: tf.Tensor) -> tf.Tensor:
    return tf.gather(x, tf.range(tf.shape(x)[2] - 1, -1, -1), axis=2)


def _transpose(x: tf.Tensor) -> tf.Tensor:
    return tf.transpose(x, [0, 2, 1] + list(range(3, x.shape.rank)))


# Transform k as the cheapest ops found for it (the equalities hold for square patches).
_OPS = {
    0: lambda x: x,
    1: _flip_rows,
    2: _flip_cols,
    3: lambda x: tf.reverse(x, [1, 2]),  # both flips = a 180° rotation: one reverse
    4: _transpose,
    5: lambda x: _flip_rows(_transpose(x)),
    6: lambda x: _transpose(_flip_rows(x)),  # = flip_cols(transpose(x)), rows cheaper than columns
    7: lambda x: tf.reverse(_transpose(x), [1, 2]),
}


def dihedral(x: tf.Tensor, k: int) -> tf.Tensor:
    """Transform ``k`` (a Python int) of a batch ``[B, H, W, ...]`` (H == W when k >= 4)."""
    return _OPS[k](x)


def dihedral_numpy(a: np.ndarray, k: int) -> np.ndarray:
    """Transform ``k`` of one ``[H, W, ...]`` numpy array (the same map as ``dihedral``)."""
    transpose, lr, ud = _parts(k)
    if transpose:
        a = np.swapaxes(a, 0, 1)
    if lr:
        a = a[:, ::-1]
    if ud:
        a = a[::-1]
    return a


def apply_dihedral(k, tensors: list[tf.Tensor]) -> list[tf.Tensor]:
    """The same transform ``k`` (an int32 scalar tensor in [0, 8)) of each batch tensor;
    only the branch of ``k`` runs."""
    branches = [lambda i=i: [dihedral(t, i) for t in tensors] for i in range(NUM_TRANSFORMS)]
    out = tf.switch_case(tf.cast(k, tf.int32), branches)
    for t, o in zip(tensors, out, strict=True):
        o.set_shape(t.shape)
    return out


def apply_inverse(k, tensors: list[tf.Tensor]) -> list[tf.Tensor]:
    """The inverse of transform ``k`` (an int32 scalar tensor) of each batch tensor."""
    return apply_dihedral(tf.gather(tf.constant(INVERSE, tf.int32), tf.cast(k, tf.int32)), tensors)


class DihedralAugment(keras.Model):
    """Training-time wrapper ``x -> T^-1(net(T(x)))``, ``T`` drawn per batch; the plain ``net`` otherwise."""

    def __init__(self, net: keras.Model, seed: int | None = None, **kwargs):
        super().__init__(name="dihedral_augment", **kwargs)
        self.net = net
        self.seed_generator = keras.random.SeedGenerator(seed)

    def draw(self) -> tf.Tensor:
        """The transform index of the next batch (seeded stream)."""
        return tf.cast(keras.random.randint((), 0, NUM_TRANSFORMS, seed=self.seed_generator), tf.int32)

    def call(self, x, training=None):
        """``net(x)`` for inference; ``T^-1(net(T(x)))`` with a fresh ``T`` when training."""
        if not training:
            return self.net(x, training=training)
        return self.transformed(x, self.draw(), training=training)

    def transformed(self, x, k, training=None):
        """``T_k^-1(net(T_k(x)))``: spatial outputs ``[B, H, W, C]`` mapped back, others as they are."""
        out = self.net(apply_dihedral(k, [x])[0], training=training)
        return tf.nest.map_structure(lambda t: apply_inverse(k, [t])[0] if t.shape.rank == 4 else t, out)


def augmented(net: keras.Model, seed: int | None) -> DihedralAugment:
    """``net`` wrapped in ``DihedralAugment`` and compiled as ``net`` is (the same optimizer object,
    so its state is what ``net``'s checkpoint saves; loss and metrics from ``net``'s compile config)."""
    model = DihedralAugment(net, seed=seed)
    config = keras.saving.deserialize_keras_object(net.get_compile_config())
    config["optimizer"] = net.optimizer
    model.compile(**config)
    return model


def unwrap(model: keras.Model) -> keras.Model:
    """The plain network inside a ``DihedralAugment`` (what gets saved); any other model as it is."""
    return model.net if isinstance(model, DihedralAugment) else model
