"""Windows per second of a reBEN authors' classifier: the model alone (CPU, and CUDA when torch
sees a GPU) and ``benbeam predict --tile`` end to end on synthetic tiles (peak RSS too).

The model is ``--model`` (a folder or a cached hub id such as
``BIFOLD-BigEarthNetv2-0/resnet50-s2-v0.2.0``) or, by default, an untrained network of the same
architecture and channel count written in the authors' layout (``--arch resnet50 --channels 10``:
the cost does not depend on the weights, and nothing is downloaded).

    python benchmarks/bench_pretrained.py [--arch resnet50] [--channels 10] [--batches 16 64]
        [--sizes 1098] [--stride 120] [--device cpu cuda] [--model ORG/NAME]

A full tile is ``--sizes 10980`` (8,281 windows at stride 120). Prints figures and asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def write_untrained(folder: str, arch: str, channels: int) -> str:
    """An untrained ``arch`` saved as the authors save theirs (config.json + model.safetensors)."""
    from safetensors.torch import save_file

    from bigearthnet_beam.trainer.pretrained.model import build_module

    cfg = {"timm_model_name": arch, "channels": channels, "classes": 19, "image_size": 120, "network_type": 0}
    net = build_module(cfg)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as fh:
        json.dump(cfg, fh)
    state = {f"model.vision_encoder.{k}": v.contiguous() for k, v in net.state_dict().items()}
    save_file(state, os.path.join(folder, "model.safetensors"))
    return folder


def bench_model(ref: str, device: str, batches, seconds: float = 5.0) -> None:
    """Windows/s of the module alone on random normalised input, per batch size."""
    import numpy as np
    import torch

    from bigearthnet_beam.pretrained import load

    m = load(ref, device=device)
    for b in batches:
        x = np.random.default_rng(0).normal(size=(b, len(m.bands), 120, 120)).astype(np.float32)
        m.proba_normalised(x, batch_size=b)  # warm-up
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            m.proba_normalised(x, batch_size=b)
            n += b
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        print(
            f"model {m.architecture} ({len(m.bands)} ch) on {device}, batch {b}: {n / dt:,.1f} windows/s "
            f"(torch threads {torch.get_num_threads()})"
        )


def bench_tile(ref: str, size: int, stride: int, batch: int, device: str, work: str) -> None:
    """``benbeam predict --tile`` on a synthetic tile of ``size`` px in a fresh process."""
    from bigearthnet_beam.synth.tiles import make_tile

    tiles = os.path.join(work, f"tiles{size}")
    if not os.path.isdir(tiles):
        make_tile(tiles, size=size, seed=0, layout="safe")
    tile = next(os.path.join(tiles, f) for f in sorted(os.listdir(tiles)) if f.endswith(".SAFE"))
    out = os.path.join(work, f"out{size}-{stride}-{device}-{time.time_ns()}")
    argv = [sys.executable, "-m", "bigearthnet_beam", "predict", "--model", ref, "--tile", tile, "--out", out]
    argv += ["--stride", str(stride), "--batch_size", str(batch), "--device", device]
    t0 = time.perf_counter()
    r = subprocess.run(argv, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode:
        print(f"tile {size} px on {device}: failed (exit {r.returncode}): {r.stderr.strip()[-500:]}")
        return
    s = json.load(open(next(os.path.join(out, f) for f in os.listdir(out) if f.endswith("_summary.json"))))
    print(
        f"tile {size}x{size} px, stride {stride}, batch {batch}, {device}: {s['windows_run']} windows in "
        f"{s['seconds']:.1f} s = {s['windows_run'] / s['seconds']:,.1f} windows/s, {s['pixels_per_s']:,.0f} px/s; "
        f"peak RSS {s['peak_rss_bytes'] / 2**20:,.0f} MiB (at start {s['rss_start_bytes'] / 2**20:,.0f} MiB); "
        f"process wall {wall:.1f} s"
    )


def main(argv=None) -> int:
    """Parse the flags and print the figures."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="folder or hub id; default: an untrained --arch")
    ap.add_argument("--arch", default="resnet50", help="timm architecture of the untrained model")
    ap.add_argument("--channels", type=int, default=10, help="2 (S1), 10 (S2) or 12 (S1+S2)")
    ap.add_argument("--batches", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--sizes", type=int, nargs="*", default=[1098], help="synthetic tile sizes (px) to map")
    ap.add_argument("--stride", type=int, default=120)
    ap.add_argument("--device", nargs="+", default=None, help="default: cpu, and cuda when torch sees a GPU")
    ap.add_argument("--seconds", type=float, default=5.0, help="time per model measurement")
    args = ap.parse_args(argv)
    import torch

    devices = args.device or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    print(f"load average {os.getloadavg()}, {os.cpu_count()} CPUs; torch {torch.__version__}")
    if torch.cuda.is_available():
        print(f"GPU: {torch.cuda.get_device_name(0)}")
    with tempfile.TemporaryDirectory(prefix="bench-pretrained-") as work:
        ref = args.model or write_untrained(os.path.join(work, "model"), args.arch, args.channels)
        for dev in devices:
            bench_model(ref, dev, args.batches, args.seconds)
        if args.sizes and args.channels != 10 and not args.model:
            print("note: tiles are mapped by S2 models only here (--channels 10): the synthetic tiles carry no S1")
            return 0
        for dev in devices:
            for size in args.sizes:
                bench_tile(ref, size, args.stride, max(args.batches), dev, work)
    print(f"load average after {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
