"""The XLA-compiled tf.data decoding of raw records (``trainer.raw_tf``): the banded upsampling
(``transforms.resample.phases``) against the conversion-time resampler, every method, border
pixels included; whole images against the conversion's ``upsample`` + ``normalize`` for band
subsets, statistics choices, batches of 1 and padded last batches; and ``make_dataset`` with
``raw_xla=True`` against the normalised records of the same run.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from bigearthnet_beam.schemas import bands, tfrecord
from bigearthnet_beam.trainer import data, raw_tf
from bigearthnet_beam.transforms import raw_decode
from bigearthnet_beam.transforms.normalize import NormParams, normalize
from bigearthnet_beam.transforms.resample import RESAMPLING_METHODS, phases, upsample, weights

from . import helpers

TOL = 1e-5  # normalised units; the readers' contract is 1e-3


@pytest.mark.parametrize("method", RESAMPLING_METHODS)
@pytest.mark.parametrize("n, factor", [(60, 2), (20, 6), (7, 3), (5, 1)])
def test_phases_rebuild_the_weight_matrix_bit_for_bit(method, n, factor):
    pad, by_phase = phases(n, factor, method)
    assert len(by_phase) == factor
    eye = np.eye(n, dtype=np.float32)
    xp = np.concatenate([eye[:1]] * pad + [eye] + [eye[-1:]] * pad)
    got = np.zeros((n * factor, n), dtype=np.float32)
    for r, taps in enumerate(by_phase):
        acc = np.zeros((n, n), dtype=np.float32)
        for d, w in taps:
            acc = acc + w[:, None] * xp[pad + d : pad + d + n]
        got[r::factor] = acc
    np.testing.assert_array_equal(got, weights(n, factor, method))
    taps_per_row = 1 if method in ("nearest", "average") or factor == 1 else (2 if method == "bilinear" else 4)
    assert max(len(t) for t in by_phase) == taps_per_row


def _random_bands(rng, b, k, n, lo=0.0, hi=6000.0):
    return rng.uniform(lo, hi, size=(b, k, n, n)).astype(np.float32)


@pytest.mark.parametrize("method", RESAMPLING_METHODS)
@pytest.mark.parametrize("n, factor", [(60, 2), (20, 6)])
@pytest.mark.parametrize("jit", [pytest.param(True, marks=pytest.mark.slow), False])  # XLA: the slow tier
def test_banded_upsampling_equals_the_conversion_time_resampler(method, n, factor, jit):
    rng = np.random.default_rng(factor)
    x = _random_bands(rng, 2, 3, n)
    x[0, 0, 0, :] = 60000.0  # a bright first row and last column: the borders' renormalised taps
    x[1, 2, :, -1] = 0.0

    def f(t):
        return raw_tf.upsample_axis(raw_tf.upsample_axis(t, factor, method, 2), factor, method, 3)

    got = tf.function(f, jit_compile=jit)(tf.constant(x)).numpy()
    want = np.stack([upsample(x[i], factor, method) for i in range(len(x))])
    assert got.shape == want.shape == (2, 3, n * factor, n * factor)
    scale = np.abs(want).max()
    worst = np.abs(got - want).max() / scale
    assert worst <= 1e-6, worst
    for edge in (np.s_[:, :, :factor], np.s_[:, :, -factor:], np.s_[..., :factor], np.s_[..., -factor:]):
        assert np.abs(got[edge] - want[edge]).max() / scale <= 1e-6
    if method in ("nearest", "average"):
        np.testing.assert_array_equal(got, want)


def _spec(channels, method, statistics):
    stats = NormParams(
        bands.ALL_NAMES,
        np.asarray([150.0] * 12 + [-24.0, -30.0], dtype=np.float32),
        np.asarray([3500.0] * 12 + [-4.0, -9.0], dtype=np.float32),
        np.linspace(600.0, 2600.0, 14, dtype=np.float32) * np.asarray([1] * 12 + [-0.01, -0.01], dtype=np.float32),
        np.linspace(200.0, 1200.0, 14, dtype=np.float32) * np.asarray([1] * 12 + [0.01, 0.01], dtype=np.float32),
        True,
    )
    chosen = {
        "clipped": stats,
        "none": "none",
        "user": {c: (1000.0 + i, 300.0 + 7 * i) for i, c in enumerate(channels)},
    }
    return raw_decode.make_spec({"options": {"resampling": "bilinear"}}, channels, method, chosen[statistics])


def _raw_batch(rng, b):
    return {
        tfrecord.S2_10M: rng.integers(0, 6000, (b, 4, 120, 120)).astype(np.uint16),
        tfrecord.S2_20M: rng.integers(0, 6000, (b, 6, 60, 60)).astype(np.uint16),
        tfrecord.S2_60M: rng.integers(0, 6000, (b, 2, 20, 20)).astype(np.uint16),
        tfrecord.S1_DB: rng.uniform(-35.0, 2.0, (b, 2, 120, 120)).astype(np.float32),
    }


def _conversion(ex: dict, i: int, spec) -> np.ndarray:
    """What ``convert`` writes for patch ``i``: ``upsample`` of each band, channels-last, ``normalize``."""
    planes = {}
    for feat, n, names in raw_decode.GROUPS:
        for j, name in enumerate(names):
            planes[name] = upsample(ex[feat][i, j].astype(np.float32), 120 // n, spec.resampling)
    img = np.stack([planes[c] for c in spec.channels], axis=-1)
    return img if spec.norm is None else normalize(img, spec.norm)


SUBSETS = {
    "all": bands.ALL_NAMES,
    "permuted": ("B09", "B04", "VH", "B8A", "B05", "B02", "B01", "B12"),
    "one 60m band": ("B01",),
    "s1": ("VV", "VH"),
}


# Every method on the full image in the fast tier; the statistics and band-subset variants (an XLA
# compilation each) with the slow tests, which `make test` runs.
CASES = [(m, "clipped", "all") for m in RESAMPLING_METHODS] + [
    pytest.param(*case, marks=pytest.mark.slow)
    for case in (
        ("bilinear", "none", "permuted"),
        ("cubic", "user", "one 60m band"),
        ("nearest", "clipped", "s1"),
        ("average", "user", "permuted"),
        ("cubic", "clipped", "permuted"),
    )
]


@pytest.mark.parametrize("method, statistics, subset", CASES)
def test_xla_images_equal_the_conversion(method, statistics, subset):
    spec = _spec(SUBSETS[subset], method, statistics)
    rng = np.random.default_rng(len(subset))
    ex = _raw_batch(rng, 3)
    tensors = {k: tf.constant(v) for k, v in ex.items()}
    full = raw_tf.raw_image(tensors, spec).numpy()
    one = raw_tf.raw_image({k: v[:1] for k, v in tensors.items()}, spec).numpy()  # a batch of 1
    padded = tf.function(lambda t: raw_tf.raw_image(t, spec, batch_size=4))(tensors).numpy()  # padded to 4
    plain = tf.function(lambda t: data.raw_image(t, spec))(tensors).numpy()
    assert full.shape == (3, 120, 120, len(spec.channels)) and one.shape == (1, *full.shape[1:])
    np.testing.assert_array_equal(one[0], full[0])
    np.testing.assert_array_equal(padded, full)
    for i in range(3):
        want = _conversion(ex, i, spec)
        tol = TOL * (np.abs(want).max() if spec.norm is None else 1.0)  # raw DN / dB: relative
        assert np.abs(full[i] - want).max() <= tol
        assert np.abs(plain[i] - want).max() <= 100 * tol  # the TensorFlow-ops path, for comparison
        for edge in (np.s_[:6], np.s_[-6:], np.s_[:, :6], np.s_[:, -6:]):
            assert np.abs(full[i][edge] - want[edge]).max() <= tol


def test_the_compiled_function_is_shared_by_equal_specs():
    a, b = _spec(SUBSETS["permuted"], "cubic", "clipped"), _spec(SUBSETS["permuted"], "cubic", "clipped")
    assert a is not b and raw_tf.compiled(a) is raw_tf.compiled(b)
    assert raw_tf.compiled(_spec(SUBSETS["permuted"], "bilinear", "clipped")) is not raw_tf.compiled(a)
    for spec in (a, _spec(bands.ALL_NAMES, "nearest", "none")):
        runs = raw_tf.runs(spec)  # the output channels as slices of the groups, merged where consecutive
        assert [spec.groups[g].names[j] for g, lo, hi in runs for j in range(lo, hi)] == list(spec.channels)
        assert all(a[0] != b[0] or a[2] != b[1] for a, b in zip(runs, runs[1:], strict=False))


def test_long_and_endless_streams_are_compiled():
    assert raw_tf.use_xla(None) and raw_tf.use_xla(raw_tf.XLA_MIN_PATCHES)
    assert not raw_tf.use_xla(raw_tf.XLA_MIN_PATCHES - 1)


@pytest.fixture(scope="module")
def raw_of_converted(replica, converted, tmp_path_factory):
    """The session's ``converted`` dataset (normalised) and the same conversion with ``--encoding raw``."""
    out = tmp_path_factory.mktemp("raw-read") / "raw"
    flags = ["--shard_size", "8", "--max_failure_fraction", "1", *helpers.IN_PROCESS]
    assert helpers.convert(replica, out, *flags, "--encoding", "raw") == 0
    return converted, out


def _read(ds, split, **opts):
    xs, ids = [], []
    for x, _, i in data.make_dataset(ds, split, batch_size=5, with_ids=True, **opts):
        xs.append(x.numpy())
        ids += [p.decode() for p in i.numpy()]
    return np.concatenate(xs), ids


@pytest.mark.slow
def test_make_dataset_with_xla_reads_the_normalised_records(raw_of_converted):
    norm_path, raw_path = raw_of_converted
    raw, norm = data.open_dataset(str(raw_path)), data.open_dataset(str(norm_path))
    assert raw.raw and not norm.raw
    seen = 0
    for split in raw.manifest["splits"]:
        want, want_ids = _read(norm, split)
        got, ids = _read(raw, split, raw_xla=True)  # 5 per batch: a padded last batch in most splits
        again, _ = _read(raw, split, raw_xla=True)
        assert ids == want_ids
        assert np.abs(got - want).max() <= TOL
        np.testing.assert_array_equal(again, got)  # deterministic
        plain, _ = _read(raw, split, raw_xla=False)
        assert np.abs(plain - got).max() <= TOL
        seen += len(ids)
    assert seen == sum(s["written"] for s in raw.manifest["splits"].values()) > 0
    subset = ("B8A", "VV", "B01")
    got, _ = _read(raw, "train", raw_xla=True, band_subset=subset, resampling="cubic", statistics="none")
    plain, _ = _read(raw, "train", raw_xla=False, band_subset=subset, resampling="cubic", statistics="none")
    assert got.shape[-1] == 3 and np.abs(got - plain).max() <= 1e-6 * np.abs(plain).max()
