"""Dataset-wide band statistics as a fixed-memory, mergeable accumulator (numpy, no Beam).

Per band (``schemas.bands.ALL_BANDS``): a fixed-bin histogram over the band's
``[hist_min, hist_max]`` (values outside land in the first/last bin; exact min and max
are kept) and the exact count, sum and sum of squares (shifted by the band's published
mean for numerical safety). Mean and std are exact; percentiles come from the histogram
(within one bin width); clipped mean/std from the histogram (each value within half a bin
width). ``BandStats`` holds the maths in the create/add/merge/extract shape of a
CombineFn; ``transforms.combiners`` wraps it for Beam.

Determinism: partial float sums are "sealed" into integers (units of 2^-24) after a
deterministic sequence of adds (one shard, in patch-id order), and merges add integers,
so the result does not depend on the order in which a runner merges accumulators.
"""

from __future__ import annotations

import io
import math
import zipfile
import zlib
from dataclasses import dataclass

import numpy as np

from bigearthnet_beam.schemas.bands import ALL_BANDS, HIST_BINS

_SCALE = 2.0**24  # exact sums are integers in units of 2^-24


@dataclass
class BandStatsAccumulator:
    """Partial band statistics: per-band histograms, counts, sums, extremes (sealed totals exact)."""

    counts: np.ndarray  # int64[B, bins]
    count: np.ndarray  # int64[B]
    sum: np.ndarray  # float64[B]  local (unsealed) sum of (x - shift)
    sumsq: np.ndarray  # float64[B]
    min: np.ndarray  # float64[B]
    max: np.ndarray  # float64[B]
    x_sum: list | None = None  # sealed totals: Python ints in units of 2^-24
    x_sumsq: list | None = None

    # Accumulators cross stage boundaries (one per shard, then per fanout key) and runners
    # buffer them: the 14 x 4,000 int64 bin counts are mostly zeros, so they travel
    # compressed (~450 kB -> a few kB), keeping what a runner holds small.
    def __getstate__(self):
        state = dict(self.__dict__)
        c = np.ascontiguousarray(state.pop("counts"), dtype="<i8")
        state["counts_z"] = (c.shape, zlib.compress(c.tobytes(), 1))
        return state

    def __setstate__(self, state):
        state = dict(state)
        shape, data = state.pop("counts_z")
        state["counts"] = np.frombuffer(zlib.decompress(data), dtype="<i8").reshape(shape).copy()
        self.__dict__.update(state)


def _to_exact(a: np.ndarray) -> list[int]:
    return [int(v) for v in np.rint(a * _SCALE).tolist()]


class BandStats:
    """create / add / seal / merge / extract for per-band histogram statistics."""

    def __init__(self, bands=ALL_BANDS, bins: int = HIST_BINS):
        self.names = tuple(b.name for b in bands)
        self.nb = len(bands)
        self.bins = bins
        self.lo = np.array([b.hist_min for b in bands], dtype=np.float64)
        self.hi = np.array([b.hist_max for b in bands], dtype=np.float64)
        self.width = (self.hi - self.lo) / bins
        self.shift = np.array([b.published_mean for b in bands], dtype=np.float64)
        self._inv_width = (1.0 / self.width).astype(np.float32)
        self._lo32 = self.lo.astype(np.float32)
        self._offsets = np.arange(self.nb, dtype=np.int32) * bins

    def create(self) -> BandStatsAccumulator:
        """An empty accumulator."""
        nb, k = self.nb, self.bins
        return BandStatsAccumulator(
            counts=np.zeros((nb, k), np.int64),
            count=np.zeros(nb, np.int64),
            sum=np.zeros(nb),
            sumsq=np.zeros(nb),
            min=np.full(nb, np.inf),
            max=np.full(nb, -np.inf),
        )

    def bin_index(self, bands_first: np.ndarray) -> np.ndarray:
        """Flat bin index (band offset included) of every pixel of a (B, N) array."""
        with np.errstate(over="ignore", invalid="ignore"):  # huge values -> +inf -> last bin; NaN -> first bin
            t = (bands_first - self._lo32[:, None]) * self._inv_width[:, None]
            np.minimum(t, self.bins, out=t)  # +inf, or past the int32 range, would wrap to the first bin on the cast
            idx = t.astype(np.int32)
        np.clip(idx, 0, self.bins - 1, out=idx)
        idx += self._offsets[:, None]
        return idx

    def add(self, acc: BandStatsAccumulator, pixels: np.ndarray) -> BandStatsAccumulator:
        """Add one patch (channels-last float array (..., B)); returns ``acc``."""
        x = np.asarray(pixels)
        if x.shape[-1] != self.nb:
            raise ValueError(f"pixels must have {self.nb} channels last, got shape {x.shape}")
        # bands-first contiguous copy: reductions along rows are several times faster
        xt = np.ascontiguousarray(x.reshape(-1, self.nb).T, dtype=np.float32)
        if xt.shape[1] == 0:
            return acc
        acc.counts += np.bincount(self.bin_index(xt).ravel(), minlength=self.nb * self.bins).reshape(self.nb, self.bins)
        d = xt.astype(np.float64)
        d -= self.shift[:, None]
        acc.count += xt.shape[1]
        acc.sum += d.sum(axis=1)
        acc.sumsq += np.einsum("ij,ij->i", d, d)
        np.minimum(acc.min, xt.min(axis=1), out=acc.min)
        np.maximum(acc.max, xt.max(axis=1), out=acc.max)
        return acc

    def seal(self, acc: BandStatsAccumulator) -> BandStatsAccumulator:
        """Move the local float sums into the exact integer totals (in place).

        Call it after a deterministic sequence of ``add`` (e.g. one shard's patches in
        patch-id order); ``merge`` and ``extract`` seal their inputs themselves.
        """
        xs, xq = _to_exact(acc.sum), _to_exact(acc.sumsq)
        if acc.x_sum is None:
            acc.x_sum, acc.x_sumsq = xs, xq
        else:
            acc.x_sum = [a + b for a, b in zip(acc.x_sum, xs, strict=True)]
            acc.x_sumsq = [a + b for a, b in zip(acc.x_sumsq, xq, strict=True)]
        acc.sum[...] = 0.0
        acc.sumsq[...] = 0.0
        return acc

    def merge(self, accs) -> BandStatsAccumulator:
        """Merge into the first accumulator, in place; exact and order-independent."""
        accs = iter(accs)
        first = next(accs, None)
        if first is None:
            return self.seal(self.create())
        self.seal(first)
        for a in accs:
            self.seal(a)
            first.counts += a.counts
            first.count += a.count
            first.x_sum = [p + q for p, q in zip(first.x_sum, a.x_sum, strict=True)]
            first.x_sumsq = [p + q for p, q in zip(first.x_sumsq, a.x_sumsq, strict=True)]
            np.minimum(first.min, a.min, out=first.min)
            np.maximum(first.max, a.max, out=first.max)
        return first

    def totals(self, acc: BandStatsAccumulator) -> tuple[np.ndarray, np.ndarray]:
        """(sum, sumsq) of (x - shift) as float64, from the sealed totals."""
        self.seal(acc)
        return (np.array([v / _SCALE for v in acc.x_sum]), np.array([v / _SCALE for v in acc.x_sumsq]))

    def _percentile(self, counts: np.ndarray, b: int, q: float) -> float:
        """q-th percentile (0..100) from band b's histogram, linear inside the bin."""
        n = counts.sum()
        target = q / 100.0 * n
        cum = np.cumsum(counts)
        i = min(int(np.searchsorted(cum, target, side="left")), self.bins - 1)
        before = cum[i - 1] if i > 0 else 0
        inside = counts[i]
        frac = (target - before) / inside if inside else 0.0
        return float(self.lo[b] + (i + min(max(frac, 0.0), 1.0)) * self.width[b])

    def _clipped_moments(
        self, counts: np.ndarray, b: int, p_lo: float, p_hi: float, vmin: float, vmax: float
    ) -> tuple[float, float]:
        """Mean and std of the values clipped to [p_lo, p_hi], from the histogram: every
        value counts as its bin centre (within half a bin width), clipped."""
        centres = self.lo[b] + (np.arange(self.bins) + 0.5) * self.width[b]
        centres = np.clip(centres, max(p_lo, vmin), min(p_hi, vmax))
        c = counts.astype(np.float64)
        n = c.sum()
        mean = float((c * centres).sum() / n)
        var = float((c * (centres - mean) ** 2).sum() / n)
        return mean, float(np.sqrt(max(var, 0.0)))

    def extract(self, acc: BandStatsAccumulator, clip_percentiles=(1.0, 99.0)) -> dict:
        """Per band: count, mean, std, min, max, p_low, p_high, clipped_mean, clipped_std."""
        lo_q, hi_q = clip_percentiles
        sums, sumsqs = self.totals(acc)
        out = {}
        for b, name in enumerate(self.names):
            n = int(acc.count[b])
            if n == 0:
                out[name] = {"count": 0}
                continue
            mean_d = sums[b] / n
            var = max(sumsqs[b] / n - mean_d * mean_d, 0.0)
            counts = acc.counts[b]
            vmin, vmax = float(acc.min[b]), float(acc.max[b])
            p_lo = min(max(self._percentile(counts, b, lo_q), vmin), vmax)
            p_hi = min(max(self._percentile(counts, b, hi_q), vmin), vmax)
            cm, cs = self._clipped_moments(counts, b, p_lo, p_hi, vmin, vmax)
            out[name] = {
                "count": n,
                "mean": float(mean_d + self.shift[b]),
                "std": float(math.sqrt(var)),
                "min": vmin,
                "max": vmax,
                "p_low": p_lo,
                "p_high": p_hi,
                "clip_percentiles": [float(lo_q), float(hi_q)],
                "clipped_mean": cm,
                "clipped_std": cs,
                "hist_min": float(self.lo[b]),
                "hist_max": float(self.hi[b]),
                "bins": self.bins,
            }
        return out

    def bin_edges(self) -> np.ndarray:
        """float64[B, bins+1] bin edges."""
        return self.lo[:, None] + np.arange(self.bins + 1)[None, :] * self.width[:, None]


def to_npz_bytes(acc: BandStatsAccumulator, stats: BandStats | None = None) -> bytes:
    """``histograms.npz`` content: counts, bin edges, band names and moments (deterministic)."""
    stats = stats or BandStats()
    sums, sumsqs = stats.totals(acc)
    arrays = {
        "bands": np.array(stats.names),
        "counts": acc.counts,
        "bin_edges": stats.bin_edges(),
        "count": acc.count,
        "sum_shifted": sums,
        "sumsq_shifted": sumsqs,
        "shift": stats.shift,
        "min": acc.min,
        "max": acc.max,
    }
    buf = io.BytesIO()
    # np.savez stamps the current time into the zip entries; write them with a fixed date.
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, arr in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.asarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, member.getvalue())
    return buf.getvalue()


def from_npz_bytes(data: bytes) -> BandStatsAccumulator:
    """An (unsealed) accumulator from ``histograms.npz`` content."""
    z = np.load(io.BytesIO(data))
    return BandStatsAccumulator(
        counts=z["counts"],
        count=z["count"],
        sum=z["sum_shifted"].copy(),
        sumsq=z["sumsq_shifted"].copy(),
        min=z["min"],
        max=z["max"],
    )
