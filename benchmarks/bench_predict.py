"""Throughput and peak memory of ``benbeam predict`` on large synthetic tiles.

Writes synthetic GeoTIFF tiles (``synth.tiles.make_tile``) of the given sizes and a U-Net of
the given width with a valid inference contract (untrained: the cost does not depend on the
weights), then runs ``benbeam predict --tile`` once per (tile size, chunk size) in a fresh
process and prints pixels/s, the process's peak RSS, and the RSS when the tile started (the
model and TensorFlow loaded): the difference is what the tile's processing costs. The same
chunk size on two tile sizes shows whether peak memory grows with the tile (it should not).

    python benchmarks/bench_predict.py --sizes 1098 2196 --chunks 512 1024 [--width 24] [--batch 16]

Prints figures and asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def make_model(path: str, width: int) -> None:
    """Save an untrained U-Net of ``width`` with a valid inference contract."""
    from bigearthnet_beam.schemas import bands, classes
    from bigearthnet_beam.trainer.model import INFO_FORMAT, INFO_VERSION, build_unet, save_model

    stats = {}
    for b in bands.ALL_BANDS:
        m, s = b.published_mean, b.published_std
        stats[b.name] = {
            "count": 1,
            "mean": m,
            "std": s,
            "p_low": max(b.hist_min, m - 2 * s),
            "p_high": m + 3 * s,
            "clipped_mean": m,
            "clipped_std": s,
        }
    chans = list(bands.S2_NAMES)
    info = {
        "format": INFO_FORMAT,
        "version": INFO_VERSION,
        "modalities": "s2",
        "channels": chans,
        "input_shape": [bands.PATCH_SIZE, bands.PATCH_SIZE, len(chans)],
        "task": "seg",
        "classes": list(classes.CLASS_NAMES),
        "class_colors": [list(c) for c in classes.class_colors()],
        "ignore_index": classes.IGNORE_INDEX,
        "statistics": {"clip": True, "bands": stats},
        "image_dtype": "float32",
    }
    save_model(build_unet(len(chans), width=width, info=info), path)


def main() -> None:
    """Run the benchmark from the command line."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1098, 2196], help="tile sizes, px (multiples of 6)")
    ap.add_argument("--chunks", type=int, nargs="+", default=[512, 1024], help="chunk sizes (multiples of 128)")
    ap.add_argument("--width", type=int, default=24, help="U-Net width (24: the default model)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--overlap", type=int, default=32)
    ap.add_argument("--work", default="bench_out/predict")
    args = ap.parse_args()
    os.makedirs(args.work, exist_ok=True)
    model = os.path.join(args.work, f"unet_w{args.width}.keras")
    if not os.path.exists(model):
        make_model(model, args.width)
    from bigearthnet_beam.synth.tiles import make_tile

    tiles = {}
    for size in args.sizes:
        d = os.path.join(args.work, f"tile_{size}")
        t0 = time.perf_counter()
        tiles[size] = make_tile(d, size=size, seed=0, layout="geotiff")
        print(f"tile {size}×{size} px written in {time.perf_counter() - t0:.1f} s", flush=True)
    print(f"model width {args.width}, batch {args.batch}, overlap {args.overlap}, {os.cpu_count()} cores")
    print(
        f"{'tile px':>8} {'chunk':>6} {'seconds':>8} {'px/s':>9} {'peak RSS':>10} {'RSS at start':>13} "
        f"{'tile cost':>10} {'windows':>8}"
    )
    for size in args.sizes:
        for chunk in args.chunks:
            out = os.path.join(args.work, f"out_{size}_{chunk}")
            cmd = [
                sys.executable,
                "-m",
                "bigearthnet_beam",
                "predict",
                "--model",
                model,
                "--tile",
                tiles[size]["path"],
                "--out",
                out,
                "--chunk_size",
                str(chunk),
                "--batch_size",
                str(args.batch),
                "--overlap",
                str(args.overlap),
            ]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode != 0:
                print(res.stdout[-2000:], res.stderr[-2000:])
                raise SystemExit(f"predict failed ({res.returncode})")
            with open(os.path.join(out, f"{tiles[size]['name']}_summary.json")) as fh:
                s = json.load(fh)
            mib = 2**20
            print(
                f"{size:>8} {chunk:>6} {s['seconds']:>8.1f} {s['pixels_per_s']:>9,.0f} "
                f"{s['peak_rss_bytes'] / mib:>7,.0f} MiB {s['rss_start_bytes'] / mib:>9,.0f} MiB "
                f"{(s['peak_rss_bytes'] - s['rss_start_bytes']) / mib:>6,.0f} MiB {s['windows_run']:>8}",
                flush=True,
            )


if __name__ == "__main__":
    main()
