"""``benbeam synth-tile`` on the command line: flags, checks and the summary it prints."""

from __future__ import annotations

import sys
import time

from bigearthnet_beam.synth.tiles import LAYOUTS, LEVELS, check_args, make_tile, tile_ids
from bigearthnet_beam.transforms import flagtypes


def run(argv: list[str] | None = None) -> int:
    """``benbeam synth-tile ARGV``; returns the exit code."""
    ap = flagtypes.Parser(
        prog="benbeam synth-tile",
        allow_abbrev=False,
        description="Write synthetic Sentinel-2 tiles (SAFE folders or GeoTIFFs) with a "
        "ground-truth class map, for benbeam predict.",
    )
    ap.add_argument("--out", type=flagtypes.local_output, required=True, help="output folder (local)")
    ap.add_argument("--n", type=flagtypes.positive_int, default=1, help="number of tiles (distinct tile ids and seeds)")
    ap.add_argument(
        "--size", type=flagtypes.positive_int, default=1098, help="pixels of 10 m a side, a multiple of 6 (real: 10980)"
    )
    ap.add_argument(
        "--seed", type=flagtypes.seed, default=0, help="random seed: the same seed writes the same bytes (default 0)"
    )
    ap.add_argument(
        "--layout",
        choices=LAYOUTS,
        default="safe",
        help="safe: a real .SAFE product folder (JPEG 2000 bands); geotiff: one 12-band GeoTIFF "
        "on the 10 m grid (default safe)",
    )
    ap.add_argument(
        "--level",
        choices=LEVELS,
        default="L2A",
        help="processing level of a safe product: L2A (12 bands, as reBEN) or L1C (13, with B10) (default L2A)",
    )
    ap.add_argument("--s1", action="store_true", help="also write a co-registered S1 raster <tile>_s1.tif")
    ap.add_argument(
        "--nodata_border",
        type=flagtypes.nonneg_int,
        default=0,
        metavar="N",
        help="N columns on the left outside the swath (0 in all S2 bands)",
    )
    args = ap.parse_args(argv)
    if args.n < 1:
        print(f"benbeam synth-tile: error: --n must be at least 1, got {args.n}", file=sys.stderr)
        return 2
    try:
        ids = tile_ids(args.n)
        check_args(args.size, args.layout, args.level, ids[0], "20240715T101031", args.nodata_border)
    except ValueError as e:
        print(f"benbeam synth-tile: error: {e}", file=sys.stderr)
        return 2
    for i, tid in enumerate(ids):
        t = time.perf_counter()
        info = make_tile(
            args.out,
            size=args.size,
            seed=(args.seed + i) % (flagtypes.MAX_SEED + 1),
            layout=args.layout,
            level=args.level,
            s1=args.s1,
            tile=tid,
            nodata_border=args.nodata_border,
        )
        fmt = "JPEG 2000" if info["format"] == "JP2" else "GeoTIFF"
        print(
            f"tile {info['name']}: {args.level} {args.layout} ({fmt}), {args.size}x{args.size} px of 10 m, "
            f"EPSG:{info['crs'].to_epsg()}, {time.perf_counter() - t:.1f} s"
        )
        print(f"  product: {info['path']}")
        print(f"  truth:   {info['truth']}")
        if info["s1"]:
            print(f"  s1:      {info['s1']}")
    return 0
