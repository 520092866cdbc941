"""Dataset-wide band statistics as a fixed-memory, mergeable accumulator (numpy, no Beam).

Per band (``schemas.bands.ALL_BANDS``): a fixed-bin histogram over the band's
``[hist_min, hist_max]`` (values outside land in the first/last bin; exact min and max
are kept), per-bin sums and sums of squares (so clipped moments are near-exact), and the
exact count, sum and sum of squares (shifted by the band's published mean for numerical
safety). ``BandStats`` holds the maths in the create/add/merge/extract shape of a
CombineFn; ``transforms.combiners`` wraps it for Beam.
"""

from __future__ import annotations

import io
import math
import zipfile
from dataclasses import dataclass

import numpy as np

from schemas.bands import ALL_BANDS, HIST_BINS


_SCALE = 2.0**24  # exact sums are integers in units of 2^-24


@dataclass
class BandStatsAccumulator:
    counts: np.ndarray  # int64[B, bins]
    bin_sum: np.ndarray  # float64[B, bins]  local (unsealed) sum of (x - shift) per bin
    bin_sumsq: np.ndarray  # float64[B, bins]
    count: np.ndarray  # int64[B]
    sum: np.ndarray  # float64[B]  local sum of (x - shift)
    sumsq: np.ndarray  # float64[B]
    min: np.ndarray  # float64[B]
    max: np.ndarray  # float64[B]
    # Sealed totals: Python ints (object arrays) in units of 2^-24. Integer addition is
    # associative, so merged results do not depend on the order Beam merges in.
    x_bin_sum: np.ndarray | None = None
    x_bin_sumsq: np.ndarray | None = None
    x_sum: np.ndarray | None = None
    x_sumsq: np.ndarray | None = None


def _to_exact(a: np.ndarray) -> np.ndarray:
    flat = np.rint(a * _SCALE).ravel().tolist()
    return np.array([int(v) for v in flat], dtype=object).reshape(a.shape)


def _from_exact(a: np.ndarray) -> np.ndarray:
    return np.array([float(v) / _SCALE for v in a.ravel().tolist()], dtype=np.float64).reshape(a.shape)


class BandStats:
    """create / add / merge / extract for per-band histogram statistics."""

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
        self._offsets = (np.arange(self.nb, dtype=np.int64) * bins)

    def create(self) -> BandStatsAccumulator:
        nb, k = self.nb, self.bins
        return BandStatsAccumulator(
            counts=np.zeros((nb, k), np.int64), bin_sum=np.zeros((nb, k)), bin_sumsq=np.zeros((nb, k)),
            count=np.zeros(nb, np.int64), sum=np.zeros(nb), sumsq=np.zeros(nb),
            min=np.full(nb, np.inf), max=np.full(nb, -np.inf))

    def bin_index(self, pixels: np.ndarray) -> np.ndarray:
        """Flat bin index (band offset included) of every pixel of a (..., B) array."""
        x = pixels.reshape(-1, self.nb)
        idx = ((x - self._lo32) * self._inv_width).astype(np.int64)
        np.clip(idx, 0, self.bins - 1, out=idx)
        idx += self._offsets
        return idx

    def add(self, acc: BandStatsAccumulator, pixels: np.ndarray) -> BandStatsAccumulator:
        """Add one patch (channels-last float array (..., B)); returns ``acc``."""
        x = np.asarray(pixels)
        if x.shape[-1] != self.nb:
            raise ValueError(f"pixels must have {self.nb} channels last, got shape {x.shape}")
        x = x.reshape(-1, self.nb)
        if x.shape[0] == 0:
            return acc
        d = x.astype(np.float64) - self.shift
        idx = self.bin_index(x).ravel()
        size = self.nb * self.bins
        dflat = d.ravel()
        acc.counts += np.bincount(idx, minlength=size).reshape(self.nb, self.bins)
        acc.bin_sum += np.bincount(idx, weights=dflat, minlength=size).reshape(self.nb, self.bins)
        acc.bin_sumsq += np.bincount(idx, weights=dflat * dflat, minlength=size).reshape(self.nb, self.bins)
        acc.count += x.shape[0]
        acc.sum += d.sum(axis=0)
        acc.sumsq += (d * d).sum(axis=0)
        np.minimum(acc.min, x.min(axis=0), out=acc.min)
        np.maximum(acc.max, x.max(axis=0), out=acc.max)
        return acc

    def seal(self, acc: BandStatsAccumulator) -> BandStatsAccumulator:
        """Move the local float sums into the exact integer totals (in place).

        Call it after a deterministic sequence of ``add`` (e.g. one shard's patches in
        patch-id order); ``merge`` and ``extract`` seal their inputs themselves.
        """
        if acc.x_sum is None:
            acc.x_bin_sum, acc.x_bin_sumsq = _to_exact(acc.bin_sum), _to_exact(acc.bin_sumsq)
            acc.x_sum, acc.x_sumsq = _to_exact(acc.sum), _to_exact(acc.sumsq)
        elif acc.sum.any() or acc.sumsq.any() or acc.bin_sum.any() or acc.bin_sumsq.any():
            acc.x_bin_sum = acc.x_bin_sum + _to_exact(acc.bin_sum)
            acc.x_bin_sumsq = acc.x_bin_sumsq + _to_exact(acc.bin_sumsq)
            acc.x_sum = acc.x_sum + _to_exact(acc.sum)
            acc.x_sumsq = acc.x_sumsq + _to_exact(acc.sumsq)
        for f in (acc.bin_sum, acc.bin_sumsq, acc.sum, acc.sumsq):
            f[...] = 0.0
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
            first.x_bin_sum = first.x_bin_sum + a.x_bin_sum
            first.x_bin_sumsq = first.x_bin_sumsq + a.x_bin_sumsq
            first.x_sum = first.x_sum + a.x_sum
            first.x_sumsq = first.x_sumsq + a.x_sumsq
            np.minimum(first.min, a.min, out=first.min)
            np.maximum(first.max, a.max, out=first.max)
        return first

    def totals(self, acc: BandStatsAccumulator) -> dict[str, np.ndarray]:
        """Float64 views of the sealed totals (sums of x - shift)."""
        self.seal(acc)
        return {"sum": _from_exact(acc.x_sum), "sumsq": _from_exact(acc.x_sumsq),
                "bin_sum": _from_exact(acc.x_bin_sum), "bin_sumsq": _from_exact(acc.x_bin_sumsq)}

    def _percentile(self, counts: np.ndarray, b: int, q: float) -> float:
        """q-th percentile (0..100) from band b's histogram, linear inside the bin."""
        n = counts.sum()
        target = q / 100.0 * n
        cum = np.cumsum(counts)
        i = int(np.searchsorted(cum, target, side="left"))
        i = min(i, self.bins - 1)
        before = cum[i - 1] if i > 0 else 0
        inside = counts[i]
        frac = (target - before) / inside if inside else 0.0
        return float(self.lo[b] + (i + min(max(frac, 0.0), 1.0)) * self.width[b])

    def extract(self, acc: BandStatsAccumulator, clip_percentiles=(1.0, 99.0)) -> dict:
        """Per band: count, mean, std, min, max, p_low, p_high, clipped_mean, clipped_std.

        Mean and std are exact (population std). Percentiles are exact to within one bin
        width. Clipped moments use exact per-bin sums for every bin strictly inside the
        clip range, the clip values for the tails, and the bin mean for the two partial
        boundary bins (error bounded by a fraction of one bin width).
        """
        lo_q, hi_q = clip_percentiles
        t = self.totals(acc)
        out = {}
        for b, name in enumerate(self.names):
            n = int(acc.count[b])
            if n == 0:
                out[name] = {"count": 0}
                continue
            s = self.shift[b]
            mean_d = t["sum"][b] / n
            var = max(t["sumsq"][b] / n - mean_d * mean_d, 0.0)
            counts = acc.counts[b]
            p_lo = max(self._percentile(counts, b, lo_q), float(acc.min[b]))
            p_hi = min(self._percentile(counts, b, hi_q), float(acc.max[b]))
            cm, cs = self._clipped_moments(acc, t, b, p_lo, p_hi)
            out[name] = {
                "count": n,
                "mean": float(mean_d + s),
                "std": float(math.sqrt(var)),
                "min": float(acc.min[b]),
                "max": float(acc.max[b]),
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

    def _clipped_moments(self, acc, t, b, p_lo, p_hi) -> tuple[float, float]:
        s = self.shift[b]
        counts = acc.counts[b].astype(np.float64)
        n = counts.sum()
        edges_lo = self.lo[b] + np.arange(self.bins) * self.width[b]
        edges_hi = edges_lo + self.width[b]
        i_lo = int(np.clip((p_lo - self.lo[b]) // self.width[b], 0, self.bins - 1))
        i_hi = int(np.clip((p_hi - self.lo[b]) // self.width[b], 0, self.bins - 1))
        m1 = 0.0  # sum of clipped (x - s)
        m2 = 0.0
        # whole bins strictly inside (i_lo, i_hi): exact
        if i_hi > i_lo + 1:
            m1 += t["bin_sum"][b, i_lo + 1:i_hi].sum()
            m2 += t["bin_sumsq"][b, i_lo + 1:i_hi].sum()
        # tails: every value below p_lo counts as p_lo, above p_hi as p_hi
        below = counts[:i_lo].sum()
        above = counts[i_hi + 1:].sum()
        dlo, dhi = p_lo - s, p_hi - s
        m1 += below * dlo + above * dhi
        m2 += below * dlo * dlo + above * dhi * dhi
        # boundary bins: values beyond the clip value (a linear share of the bin) count as
        # the clip value, the rest with the bin's exact mean
        if i_lo == i_hi:
            c = counts[i_lo]
            if c:
                v = min(max(t["bin_sum"][b, i_lo] / c + s, p_lo), p_hi) - s
                m1 += c * v
                m2 += c * v * v
        else:
            for i, clip_v, is_low in ((i_lo, p_lo, True), (i_hi, p_hi, False)):
                c = counts[i]
                if not c:
                    continue
                f = min(max((clip_v - edges_lo[i]) / (edges_hi[i] - edges_lo[i]), 0.0), 1.0)
                part_out = c * (f if is_low else 1.0 - f)
                part_in = c - part_out
                dv = clip_v - s
                m1 += part_out * dv + part_in * t["bin_sum"][b, i] / c
                m2 += part_out * dv * dv + part_in * t["bin_sumsq"][b, i] / c
        mean_d = m1 / n
        var = max(m2 / n - mean_d * mean_d, 0.0)
        return float(mean_d + s), float(math.sqrt(var))

    def bin_edges(self) -> np.ndarray:
        """float64[B, bins+1] bin edges."""
        return self.lo[:, None] + np.arange(self.bins + 1)[None, :] * self.width[:, None]


def to_npz_bytes(acc: BandStatsAccumulator, stats: BandStats | None = None) -> bytes:
    """``histograms.npz`` content: counts, bin edges, band names and exact moments (deterministic)."""
    stats = stats or BandStats()
    t = stats.totals(acc)
    arrays = {
        "bands": np.array(stats.names), "counts": acc.counts, "bin_edges": stats.bin_edges(),
        "count": acc.count, "sum_shifted": t["sum"], "sumsq_shifted": t["sumsq"], "shift": stats.shift,
        "min": acc.min, "max": acc.max, "bin_sum_shifted": t["bin_sum"], "bin_sumsq_shifted": t["bin_sumsq"],
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
    return BandStatsAccumulator(counts=z["counts"], bin_sum=z["bin_sum_shifted"].copy(),
                                bin_sumsq=z["bin_sumsq_shifted"].copy(), count=z["count"],
                                sum=z["sum_shifted"].copy(), sumsq=z["sumsq_shifted"].copy(),
                                min=z["min"], max=z["max"])
