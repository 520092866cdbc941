"""The tf.data decoding of raw-encoded records compiled with XLA, for long streams
(``trainer.data.make_dataset`` picks it: ``use_xla``).

The whole image of a batch is one XLA computation: the cast, the banded upsampling of the 20 m
and 60 m bands (``transforms.resample.phases``: per output phase, weighted sums of shifted
slices of the edge-padded band — the conversion-time resampler's own weights, two or four taps
instead of a 60-wide dense matrix row), the clipping and ``(x - offset) / scale`` in the order
``transforms.normalize`` applies them, and the channel order as a concatenation of slices, all
channels-last (each band transposed at its native size). XLA fuses these into a few loops that read
the native bands once and write the image once; run as separate TensorFlow ops
(``trainer.data.raw_image``) each is a pass over the whole image. Compiling takes 0.2-1 CPU s per
batch shape, hence long streams only.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from bigearthnet_beam.transforms.resample import phases

XLA_MIN_PATCHES = 4096  # make_dataset compiles for streams at least this long (or endless ones)
_CACHE_SIZE = 16
_compiled: dict = {}  # spec key -> the jit-compiled tf.function (one XLA compilation per key and shape)


def use_xla(patches: int | None) -> bool:
    """Whether a stream of ``patches`` patches (None: endless) is long enough to compile for."""
    return patches is None or patches >= XLA_MIN_PATCHES


def spec_key(spec) -> tuple:
    """A hashable key of a ``RawSpec`` (its arrays by value)."""
    norm = spec.norm
    nkey = None
    if norm is not None:
        nkey = (
            norm.clip,
            *(np.asarray(getattr(norm, k), dtype=np.float32).tobytes() for k in ("lo", "hi", "offset", "scale")),
        )
    groups = tuple((g.feature, g.index) for g in spec.groups)
    return spec.channels, spec.resampling, groups, spec.order, nkey


def runs(spec) -> list[tuple[int, int, int]]:
    """The output channels as runs ``(group, start, stop)`` of consecutive bands of one group."""
    where = [(gi, j) for gi, g in enumerate(spec.groups) for j in range(len(g.index))]
    out: list[tuple[int, int, int]] = []
    for p in spec.order:
        gi, j = where[p]
        if out and out[-1][0] == gi and out[-1][2] == j:
            out[-1] = (gi, out[-1][1], j + 1)
        else:
            out.append((gi, j, j + 1))
    return out


def _take(x: tf.Tensor, index: tuple[int, ...], axis: int = 1) -> tf.Tensor:
    """``x``'s entries ``index`` along ``axis`` as a concatenation of slices (no gather: XLA fuses it)."""
    if index == tuple(range(x.shape[axis])):
        return x
    pieces, start = [], 0
    for k in range(1, len(index) + 1):
        if k == len(index) or index[k] != index[k - 1] + 1:
            sl = [slice(None)] * len(x.shape)
            sl[axis] = slice(index[start], index[k - 1] + 1)
            pieces.append(x[tuple(sl)])
            start = k
    return pieces[0] if len(pieces) == 1 else tf.concat(pieces, axis=axis)


def upsample_axis(x: tf.Tensor, factor: int, method: str, axis: int) -> tf.Tensor:
    """``x`` upsampled by ``factor`` along ``axis`` with ``transforms.resample.weights``'s weights, banded
    (``transforms.resample.phases``): per output phase r, the weighted sum of the shifted slices of the
    edge-padded ``x`` that its taps name, in ``taps()``'s order; the phases interleaved by a stack.
    Nearest (one tap of weight 1, no shift): a broadcast."""
    n = x.shape[axis]
    if factor == 1:
        return x
    pad, by_phase = phases(n, factor, method)
    rank = len(x.shape)
    dims = tf.unstack(tf.shape(x))
    wide = dims[: axis + 1] + [factor] + dims[axis + 1 :]
    dims[axis] = n * factor
    if all(len(t) == 1 and t[0][0] == 0 and (t[0][1] == 1).all() for t in by_phase):
        return tf.reshape(tf.broadcast_to(tf.expand_dims(x, axis + 1), tf.stack(wide)), tf.stack(dims))

    def cut(t, start, stop):
        sl = [slice(None)] * rank
        sl[axis] = slice(start, stop)
        return t[tuple(sl)]

    xp = x
    if pad:
        xp = tf.concat([cut(x, 0, 1)] * pad + [x] + [cut(x, n - 1, n)] * pad, axis=axis)
    shape = [1] * rank
    shape[axis] = n
    outs = []
    for taps in by_phase:
        acc = None
        for d, w in taps:
            term = cut(xp, pad + d, pad + d + n)
            if not (w == 1).all():
                term = term * tf.constant(w.reshape(shape))
            acc = term if acc is None else acc + term
        outs.append(acc)
    return tf.reshape(tf.stack(outs, axis=axis + 1), tf.stack(dims))  # destination i * factor + r


def _image(feats: dict, spec) -> tf.Tensor:
    """The image of ``spec`` from the raw features, channels-last from the start: each group's bands are
    transposed at their native size (XLA reads them in place), upsampled along width then height,
    clipped and normalised per channel, and the runs of ``runs(spec)`` concatenated on the last axis."""
    parts = []
    for g in spec.groups:
        x = tf.cast(tf.transpose(_take(feats[g.feature], g.index), [0, 2, 3, 1]), tf.float32)
        if g.weights is not None:
            big, n = g.weights.shape
            # columns first: the rows' interleave then lies on a major axis, which XLA fuses better
            x = upsample_axis(upsample_axis(x, big // n, spec.resampling, 2), big // n, spec.resampling, 1)
        if spec.norm is not None:  # as transforms.normalize: clip (maximum, minimum), then (x - offset) / scale
            p = spec.norm.select(g.names)
            vec = lambda a: tf.constant(np.asarray(a, dtype=np.float32))  # noqa: E731
            if spec.norm.clip:
                x = tf.minimum(tf.maximum(x, vec(p.lo)), vec(p.hi))
            x = (x - vec(p.offset)) / vec(p.scale)
        parts.append(x)
    pieces = [_take(parts[gi], tuple(range(a, b)), axis=3) for gi, a, b in runs(spec)]
    return pieces[0] if len(pieces) == 1 else tf.concat(pieces, axis=3)


def compiled(spec):
    """The jit-compiled image function of ``spec`` (``{feature: tensor}`` -> float32[B,H,W,C]), shared
    by every stream of the same spec in this process, so XLA compiles once per batch shape."""
    key = spec_key(spec)
    fn = _compiled.get(key)
    if fn is None:
        if len(_compiled) >= _CACHE_SIZE:
            _compiled.pop(next(iter(_compiled)))
        fn = _compiled[key] = tf.function(lambda feats: _image(feats, spec), jit_compile=True)
    return fn


def raw_image(ex: dict, spec, batch_size: int | None = None) -> tf.Tensor:
    """float32[B,H,W,C] of a batch of decoded raw features (``tfrecord.decode_parsed``), computed by
    ``compiled(spec)``. ``batch_size``: a smaller (last) batch is padded to it, so XLA compiles
    one shape only; the padding's rows are dropped from the result."""
    feats = {g.feature: ex[g.feature] for g in spec.groups}
    fn = compiled(spec)
    if batch_size is None:
        return fn(feats)
    b = tf.shape(feats[spec.groups[0].feature])[0]

    def padded():
        grow = lambda t: tf.pad(t, [[0, batch_size - b]] + [[0, 0]] * (len(t.shape) - 1))  # noqa: E731
        return fn({k: grow(t) for k, t in feats.items()})[:b]

    return tf.cond(b < batch_size, padded, lambda: fn(feats))
