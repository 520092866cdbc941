"""Band statistics: the accumulator against numpy, merging in any order, the CombineFn in
a pipeline, and normalisation."""

import pickle

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that

from bigearthnet_beam.schemas.bands import ALL_BANDS, ALL_NAMES, S2_NAMES
from bigearthnet_beam.transforms.combiners import BandStatsCombineFn
from bigearthnet_beam.transforms.histogram import BandStats, from_npz_bytes, to_npz_bytes
from bigearthnet_beam.transforms.normalize import NormParams, normalize


def _patches(n, seed=0):
    """Realistic channels-last patches: S2 DN with heavy tails, S1 dB, some out-of-range values."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        x = np.empty((40, 40, len(ALL_BANDS)), dtype=np.float32)
        for i, b in enumerate(ALL_BANDS):
            v = rng.normal(b.published_mean, b.published_std, (40, 40))
            if b.modality == "s2":
                v = np.abs(v) + rng.exponential(200, (40, 40))
            x[..., i] = v
        x[0, 0, 1] = 25000.0  # above the S2 histogram range
        x[0, 1, 12] = -75.0  # below the S1 range
        out.append(x)
    return out


def _numpy_ref(patches):
    return np.concatenate([p.reshape(-1, len(ALL_BANDS)) for p in patches]).astype(np.float64)


def test_mean_std_percentiles_clipped_moments_against_numpy():
    patches = _patches(6)
    st = BandStats()
    acc = st.create()
    for p in patches:
        st.add(acc, p)
    res = st.extract(acc, (1.0, 99.0))
    ref = _numpy_ref(patches)
    for i, name in enumerate(ALL_NAMES):
        r = res[name]
        x = ref[:, i]
        assert r["count"] == len(x)
        assert r["mean"] == pytest.approx(np.mean(x), rel=1e-6)
        assert r["std"] == pytest.approx(np.std(x), rel=1e-6)
        assert r["min"] == x.min() and r["max"] == x.max()
        assert abs(r["p_low"] - np.percentile(x, 1)) <= st.width[i]
        assert abs(r["p_high"] - np.percentile(x, 99)) <= st.width[i]
        c = np.clip(x, r["p_low"], r["p_high"])
        # clipped moments from the histogram: each value within half a bin width
        assert abs(r["clipped_mean"] - c.mean()) <= st.width[i] / 2
        assert abs(r["clipped_std"] - c.std()) <= st.width[i] / 2


def test_merge_order_and_empty_accumulators_do_not_matter():
    patches = _patches(5, seed=1)
    st = BandStats()

    def partials():  # one sealed accumulator per "shard"
        out = []
        for group in (patches[:2], patches[2:4], patches[4:]):
            a = st.create()
            for p in group:
                st.add(a, p)
            out.append(st.seal(a))
        return out

    orders = [(0, 1, 2), (2, 1, 0), (1, 2, 0)]
    results = []
    for order in orders:
        parts = partials()
        seq = [parts[i] for i in order]
        seq.insert(1, st.create())  # an empty accumulator in the middle
        results.append(st.extract(st.merge(seq)))
    assert results[0] == results[1] == results[2]  # bit-identical, whatever the order
    # a different grouping of the same patches agrees to float precision
    whole = st.create()
    for p in patches:
        st.add(whole, p)
    other = st.extract(whole)
    for name in ALL_NAMES:
        assert other[name]["mean"] == pytest.approx(results[0][name]["mean"], rel=1e-12)
        assert other[name]["count"] == results[0][name]["count"]
        assert other[name]["p_high"] == results[0][name]["p_high"]
    assert st.extract(st.merge([])) == {n: {"count": 0} for n in ALL_NAMES}


@pytest.mark.slow
def test_combinefn_in_a_pipeline_with_fanout():
    patches = _patches(8, seed=2)
    expected = BandStats()
    acc = expected.create()
    for p in patches:
        expected.seal(expected.add(acc, p))
    want = expected.extract(acc)
    fn = pickle.loads(pickle.dumps(BandStatsCombineFn()))

    def check(outputs):
        assert len(outputs) == 1
        assert BandStats().extract(outputs[0]) == want

    with TestPipeline() as p:
        out = p | beam.Create(patches, reshuffle=False) | beam.CombineGlobally(fn).with_fanout(3)
        assert_that(out, check, label="stats")


def test_histograms_npz_is_deterministic_and_round_trips():
    st = BandStats()
    acc = st.add(st.create(), _patches(1)[0])
    a, b = to_npz_bytes(acc), to_npz_bytes(acc)
    assert a == b
    back = from_npz_bytes(a)
    assert st.extract(back) == st.extract(acc)


def test_normalize_with_and_without_clipping():
    patches = _patches(3, seed=3)
    st = BandStats()
    acc = st.create()
    for p in patches:
        st.add(acc, p)
    res = st.extract(acc)
    x = np.stack(patches)
    plain = NormParams.from_stats(res, clip=False)
    z = normalize(x, plain).reshape(-1, len(ALL_NAMES)).astype(np.float64)
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(z.std(0), 1, atol=1e-4)
    clipped = NormParams.from_stats(res, clip=True)
    zc = normalize(x, clipped)
    lo = (clipped.lo - clipped.offset) / clipped.scale
    hi = (clipped.hi - clipped.offset) / clipped.scale
    assert (zc >= lo - 1e-5).all() and (zc <= hi + 1e-5).all()
    back = NormParams.from_dict(clipped.to_dict())
    np.testing.assert_array_equal(normalize(x, back), zc)
    sub = clipped.select(list(S2_NAMES[:3]))
    np.testing.assert_array_equal(normalize(x[..., :3], sub), zc[..., :3])
    with pytest.raises(ValueError, match="channels"):
        normalize(x[..., :3], clipped)


def test_accumulators_travel_small_and_come_back_equal():
    """Runners buffer partial accumulators between stages: they pickle compressed, and a
    round trip changes nothing (bins, exact sums, min/max) and stays mergeable."""
    st = BandStats()
    acc = st.create()
    for x in _patches(3, seed=4):
        st.add(acc, x)
    st.seal(acc)
    data = pickle.dumps(acc)
    assert len(data) < 60_000 < acc.counts.nbytes
    back = pickle.loads(data)
    assert np.array_equal(back.counts, acc.counts) and back.counts.dtype == np.int64
    assert back.x_sum == acc.x_sum and back.x_sumsq == acc.x_sumsq
    assert np.array_equal(back.min, acc.min) and np.array_equal(back.count, acc.count)
    merged = st.merge([back, pickle.loads(data)])  # in place: the array must be writable
    assert np.array_equal(merged.counts, 2 * acc.counts)


def _edge_values(st: BandStats, rng) -> np.ndarray:
    """(N, B) values on and around every band's bin edges, range ends, and NaN / -inf."""
    rows = []
    for i in range(st.nb):
        lo, hi, w = st.lo[i], st.hi[i], st.width[i]
        k = rng.integers(0, st.bins + 1, 300)
        edges = lo + k * w  # exact edges (in float64), then their float32 neighbours
        v = np.concatenate(
            [
                edges,
                np.nextafter(edges, -np.inf),
                np.nextafter(edges, np.inf),
                [lo, hi, lo - w, hi + w, lo - 1e6, hi + 1e6, np.nan, -np.inf],
            ]
        )
        rows.append(v.astype(np.float32))
    n = max(len(r) for r in rows)
    return np.stack([np.resize(r, n) for r in rows], axis=1)


def test_histogram_kernel_bins_like_numpy_on_edges_and_out_of_range_values():
    """Every value lands in the bin numpy's float32 floor/clip rule gives — random data,
    uint16-valued S2 data, values on and next to bin edges, range ends, out-of-range
    values, NaN and -inf (first bin) — and the moments are numpy's float64 row sums."""
    st = BandStats()
    rng = np.random.default_rng(7)
    ints = np.stack([rng.integers(1, 20000, (60, 60)) for _ in range(st.nb)], axis=-1).astype(np.float32)
    cases = _patches(3, seed=5) + [ints, _edge_values(st, rng)]
    for x in cases:
        acc = st.add(st.create(), x)
        flat = x.reshape(-1, st.nb)
        for i in range(st.nb):
            v = flat[:, i]
            t = (v - np.float32(st.lo[i])) * np.float32(1.0 / st.width[i])  # float32, as documented
            ref = np.clip(np.nan_to_num(np.floor(t), nan=0.0, neginf=0.0), 0, st.bins - 1).astype(np.int64)
            np.testing.assert_array_equal(acc.counts[i], np.bincount(ref, minlength=st.bins))
        # moments: the same float64 reductions as before, bit for bit
        xt = np.ascontiguousarray(flat.T, dtype=np.float32)
        d = xt.astype(np.float64) - st.shift[:, None]
        assert np.array_equal(acc.sum, d.sum(axis=1), equal_nan=True)
        assert np.array_equal(acc.sumsq, np.einsum("ij,ij->i", d, d), equal_nan=True)
    # first and last bins hold the values below / above the range
    acc = st.add(st.create(), np.stack([st.lo - 1e6, st.hi + 1e6]).astype(np.float32))
    assert (acc.counts[:, 0] == 1).all() and (acc.counts[:, -1] == 1).all() and acc.counts.sum() == 2 * st.nb


def test_values_past_the_int32_range_land_in_the_last_bin():
    """+inf and huge values (e.g. a hostile S1 file) count in the last bin (a plain cast to
    int32 would wrap them into the first one)."""
    st = BandStats()
    x = np.full((3, st.nb), np.inf, dtype=np.float32)
    x[1] = 3e38
    x[2] = st.lo + st.width * 2.5e9
    acc = st.add(st.create(), x)
    assert (acc.counts[:, -1] == 3).all() and acc.counts.sum() == 3 * st.nb
