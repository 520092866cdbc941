"""The statistics kernel (``BandStats.add``) against the alternatives tried for it, on
decoded synthetic patches, on a worker thread; prints CPU-ms per patch, asserts nothing.

    python benchmarks/bench_histogram.py [--patches 100] [--rounds 10]

Variants of the binning step (each is checked to give the same counts): the current one
(bands-first float32, int32 cast, integer clip), binning channels-last (no transpose),
clipping in the float domain with ``np.fmax``/``np.fmin``, and ``intp`` indices (what
``np.bincount`` counts, saving its cast). Also ``maximum``+``minimum`` against a fused
``np.clip`` for the normalisation.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def variants(st):
    """name -> function(pixels (H, W, B)) returning the flat bin counts."""
    nb, bins, lo, inv = st.nb, st.bins, st._lo32, st._inv_width
    off32 = np.arange(nb, dtype=np.int32) * bins
    off64 = off32.astype(np.intp)

    def current(x):
        return np.bincount(
            st.bin_index(np.ascontiguousarray(x.reshape(-1, nb).T, dtype=np.float32)).ravel(), minlength=nb * bins
        )

    def channels_last(x):
        idx = ((x.reshape(-1, nb) - lo) * inv).astype(np.int32)
        np.clip(idx, 0, bins - 1, out=idx)
        idx += off32
        return np.bincount(idx.ravel(), minlength=nb * bins)

    def float_clip_intp(x):
        t = np.subtract(x.reshape(-1, nb), lo, dtype=np.float32)
        t *= inv
        np.fmax(t, 0, out=t)
        np.fmin(t, bins - 1, out=t)
        idx = t.astype(np.intp)
        idx += off64
        return np.bincount(idx.ravel(), minlength=nb * bins)

    def bands_first_intp(x):
        xt = np.ascontiguousarray(x.reshape(-1, nb).T, dtype=np.float32)
        idx = ((xt - lo[:, None]) * inv[:, None]).astype(np.intp)
        np.clip(idx, 0, bins - 1, out=idx)
        idx += off64[:, None]
        return np.bincount(idx.ravel(), minlength=nb * bins)

    return {f.__name__: f for f in (current, channels_last, float_clip_intp, bands_first_intp)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patches", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=10)
    args = ap.parse_args()
    import pyarrow.parquet as pq

    from bigearthnet_beam.schemas.naming import object_urls
    from bigearthnet_beam.synth.generator import generate
    from bigearthnet_beam.transforms.histogram import BandStats
    from bigearthnet_beam.transforms.patch import decode_patch, fetch_objects

    with tempfile.TemporaryDirectory() as tmp:
        generate(tmp, args.patches, seed=1)
        rows = pq.read_table(os.path.join(tmp, "metadata.parquet")).to_pylist()
        pixels = [
            decode_patch(r["patch_id"], fetch_objects(object_urls(tmp, r["patch_id"], r["s1_name"]))).pixels
            for r in rows
        ]
    st = BandStats()
    fns = variants(st)
    for x in pixels[:10]:
        want = fns["current"](x)
        for name, f in fns.items():
            assert np.array_equal(f(x), want), name

    rng = np.random.default_rng(0)
    lo, hi = rng.normal(0, 10, 14).astype(np.float32), rng.normal(2000, 10, 14).astype(np.float32)
    off, sc = rng.normal(1000, 1, 14).astype(np.float32), np.float32(300) + np.arange(14, dtype=np.float32)

    def norm_max_min(x):
        np.maximum(x, lo, out=x)
        np.minimum(x, hi, out=x)
        x -= off
        x /= sc

    def norm_clip(x):
        np.clip(x, lo, hi, out=x)
        x -= off
        x /= sc

    def full_add(x):
        st.add(st.create(), x)

    timed = {
        **{f"binning: {k}": v for k, v in fns.items()},
        "BandStats.add (whole)": full_add,
        "normalise: maximum+minimum": norm_max_min,
        "normalise: np.clip": norm_clip,
    }

    def run():
        res = {k: [] for k in timed}
        for _ in range(args.rounds):
            for name, f in timed.items():
                data = [x.copy() for x in pixels] if name.startswith("normalise") else pixels
                t0 = time.thread_time()
                for x in data:
                    f(x)
                res[name].append((time.thread_time() - t0) / len(data) * 1e3)
        for name, v in res.items():
            print(f"{name:32s} {min(v):.3f} CPU-ms/patch (median {np.median(v):.3f})")

    th = threading.Thread(target=run)  # a worker thread, as in the pipeline (see bench_convert.in_thread)
    th.start()
    th.join()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
