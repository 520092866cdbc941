"""This project's ``tf.data`` input pipeline against torchgeo's ``BigEarthNetV2`` loader on
the same synthetic patches; prints samples/s of each and the ratio, asserts nothing.

    python benchmarks/bench_torchgeo.py [--n 2000] [--batch 32] [--batches 30] [--workdir DIR] [--venv DIR]

torchgeo reads the raw reBEN GeoTIFFs (15 rasterio opens per patch, bilinear upsampling
by GDAL) through a torch ``DataLoader`` with one worker process per core; this project
streams the TFRecords that ``benbeam convert`` wrote (the conversion is paid once; its CPU
per patch is printed beside the figures). torch, torchvision and torchgeo live in their
own virtual environment (``--venv``, default ``<workdir>/torchgeo_venv``), created on the
first run with ``pip install torch==2.14.1 torchvision==0.29.1 torchgeo``: a CUDA build of
~5.5 GB, which takes several minutes; later runs reuse it. Both loaders read the training
split, shuffled, without augmentation.
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

# torchgeo 0.8 imports requests and reads parquet without declaring either
TORCH_PINS = ("torch==2.14.1", "torchvision==0.29.1", "torchgeo", "requests", "pyarrow")

# Runs inside the torchgeo environment: samples/s of BigEarthNetV2's train split.
_TORCHGEO = r"""
import json, os, sys, time
import torch
from torch.utils.data import DataLoader
from torchgeo.datasets import BigEarthNetV2

root, batch, batches, workers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
ds = BigEarthNetV2(root=root, split="train", bands="all")
loader = DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, persistent_workers=workers > 0,
                    drop_last=True, generator=torch.Generator().manual_seed(0))
rates = []
for _ in range(2):  # the first round includes the workers' start-up
    it = iter(loader)
    next(it)
    n, t0 = 0, time.perf_counter()
    for _ in range(batches):
        b = next(it)
        n += b["image_s2"].shape[0]
    rates.append(n / (time.perf_counter() - t0))
print(json.dumps({"samples_per_s": max(rates), "rates": rates, "len": len(ds), "torch": torch.__version__,
                  "shapes": {k: list(v.shape) for k, v in b.items()}}))
"""


def ensure_venv(venv: str) -> str:
    """The torchgeo environment's python, created (a large install) if absent."""
    py = os.path.join(venv, "bin", "python")
    if os.path.exists(py):
        check = subprocess.run([py, "-c", "import torchgeo, torch"], capture_output=True)
        if check.returncode == 0:
            return py
    print(f"creating {venv}: pip install {' '.join(TORCH_PINS)} (a ~5.5 GB CUDA build of torch; minutes)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    subprocess.run([py, "-m", "pip", "install", "-q", *TORCH_PINS], check=True)
    return py


def ensure_data(n: int, workdir: str) -> tuple[str, str, float | None]:
    """(reBEN root, float32 dataset, convert CPU-ms per patch or None when reused)."""
    from bigearthnet_beam.beam_pipeline.cli import main as cli

    reben = os.path.join(workdir, f"reben_{n}")
    if (
        not os.path.exists(os.path.join(reben, "metadata.parquet"))
        and cli(["synth", "--out", reben, "--n", str(n), "--seed", "0"]) != 0
    ):
        raise SystemExit("synth failed")
    data = os.path.join(workdir, f"dataset_{n}_float32")
    cpu = None
    if not os.path.exists(os.path.join(data, "dataset.json")):
        from benchmarks.bench_convert import run_convert

        _dt, _peak, cpu_s, _log = run_convert(os.path.join(reben, "metadata.parquet"), data, [])
        cpu = cpu_s / n * 1e3
    return reben, data, cpu


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="synthetic patches (about half are training patches)")
    ap.add_argument("--workdir", default=os.path.join(os.path.dirname(HERE), "bench_out"))
    ap.add_argument("--venv", default=None, help="torchgeo environment (default: <workdir>/torchgeo_venv)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--batches", type=int, default=30, help="batches timed per round")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="DataLoader worker processes")
    args = ap.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    py = ensure_venv(args.venv or os.path.join(args.workdir, "torchgeo_venv"))
    reben, data, convert_cpu = ensure_data(args.n, args.workdir)

    from benchmarks.bench_input import stream_rate
    from bigearthnet_beam.trainer import data as trainer_data

    cores = os.cpu_count() or 1
    print(f"machine: {cores} cores; batch {args.batch}; {args.batches} batches per round; same {args.n}-patch sample")
    ds = trainer_data.open_dataset(data)
    ours = []
    for _ in range(2):
        ours.append(stream_rate(ds, batch=args.batch, batches=args.batches)[0])
    t0 = time.perf_counter()
    res = subprocess.run(
        [py, "-c", _TORCHGEO, reben, str(args.batch), str(args.batches), str(args.workers)],
        capture_output=True,
        text=True,
    )
    if res.returncode != 0:
        print(res.stdout[-2000:], res.stderr[-4000:])
        raise SystemExit("the torchgeo loader failed")
    tg = json.loads(res.stdout.strip().splitlines()[-1])
    print(
        f"torchgeo {tg['torch']} BigEarthNetV2 (raw GeoTIFFs, rasterio, DataLoader with {args.workers} workers): "
        f"{tg['samples_per_s']:.0f} samples/s (rounds {', '.join(f'{r:.0f}' for r in tg['rates'])}; "
        f"{tg['len']} train patches; {time.perf_counter() - t0:.0f} s with start-up); batch {tg['shapes']}"
    )
    print(
        f"this project (tf.data over the converted TFRecords, float32): {max(ours):.0f} samples/s "
        f"(rounds {', '.join(f'{r:.0f}' for r in ours)})"
    )
    print(f"ratio: {max(ours) / tg['samples_per_s']:.1f}x torchgeo's samples/s")
    if convert_cpu is not None:
        print(f"(the one-off conversion cost {convert_cpu:.2f} CPU-ms per patch, start-up included)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
