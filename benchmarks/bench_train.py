"""Quality and throughput of the trainer on synthetic data; prints figures, asserts nothing.

    python benchmarks/bench_train.py [--n 2000] [--epochs 6] [--batch 16] [--workdir DIR]

Runs the product end to end through the ``benbeam`` CLI: ``synth`` N patches (their real
official splits), ``convert``, ``train`` the default U-Net (~1.09 M parameters) on the
train split with validation after each epoch, then ``evaluate`` the best model on the
validation and test splits. Prints training throughput (patches/s, from the history) and
validation / test mIoU and pixel accuracy next to the quality bar (mIoU >= 0.6, pixel
accuracy >= 0.85; chance is about 0.05). ``--workdir`` keeps (and reuses) the synthetic
sample and the converted dataset between runs.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(argv: list[str]) -> float:
    from bigearthnet_beam.beam_pipeline.cli import main

    t0 = time.perf_counter()
    rc = main(argv)
    if rc != 0:
        raise SystemExit(f"benbeam {' '.join(argv)} failed with exit code {rc}")
    return time.perf_counter() - t0


def main() -> int:
    """Run the benchmark from the command line."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="synthetic patches (default: %(default)s)")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--width", type=int, default=None, help="U-Net width (default: the trainer's)")
    ap.add_argument("--modalities", default="s2,s1")
    ap.add_argument("--extra", default="", help="more `benbeam train` flags, space separated")
    ap.add_argument("--workdir", default=None, help="keep and reuse data here (default: a temporary folder)")
    args = ap.parse_args()

    tmp = None
    if args.workdir is None:
        tmp = tempfile.TemporaryDirectory()
        work = tmp.name
    else:
        work = args.workdir
        os.makedirs(work, exist_ok=True)
    reben, data, run = (os.path.join(work, p) for p in ("reben", "dataset", "run"))
    if not os.path.exists(os.path.join(reben, "metadata.parquet")):
        dt = _run(["synth", "--out", reben, "--n", str(args.n), "--seed", "0"])
        print(f"synth: {args.n} patches in {dt:.1f} s")
    if not os.path.exists(os.path.join(data, "dataset.json")):
        dt = _run(["convert", "--meta", os.path.join(reben, "metadata.parquet"), "--out", data])
        print(f"convert: {dt:.1f} s")
    with open(os.path.join(data, "dataset.json")) as fh:
        man = json.load(fh)
    counts = {s: e["written"] for s, e in man["splits"].items()}
    print(f"dataset: {counts}")

    model = os.path.join(run, "unet.keras")
    argv = [
        "train",
        "--data",
        data,
        "--epochs",
        str(args.epochs),
        "--batch",
        str(args.batch),
        "--lr",
        str(args.lr),
        "--save",
        model,
        "--modalities",
        args.modalities,
        "--augment",
        *args.extra.split(),
    ]
    if args.width:
        argv += ["--width", str(args.width)]
    dt = _run(argv)
    with open(os.path.join(run, "unet.history.csv")) as fh:
        hist = list(csv.DictReader(fh))
    from bigearthnet_beam.trainer.train import seg_metric

    for row in hist:
        m = {(("val_" if v else "") + k): seg_metric(row, k, v) for k in ("loss", "miou", "pixel_acc") for v in (0, 1)}
        print(
            "  epoch {epoch}: loss {loss:.4f} miou {miou:.4f} acc {pixel_acc:.4f} | val loss {val_loss:.4f} "
            "val miou {val_miou:.4f} val acc {val_pixel_acc:.4f} | {pps:.1f} patches/s".format(
                epoch=int(row["epoch"]) + 1, pps=float(row["patches_per_s"]), **m
            )
        )
    pps = [float(r["patches_per_s"]) for r in hist]
    print(
        f"train: {len(hist)} epochs on {counts.get('train')} patches in {dt:.0f} s; training throughput "
        f"{max(pps):.1f} patches/s (best epoch), {sum(pps) / len(pps):.1f} mean, on {os.cpu_count()} CPU cores"
    )

    results = {}
    for split in ("validation", "test"):
        if not counts.get(split):
            continue
        out = os.path.join(run, f"eval_{split}")
        _run(["evaluate", "--model", model, "--data", data, "--split", split, "--out", out])
        with open(os.path.join(out, "metrics.json")) as fh:
            results[split] = json.load(fh)
    for split, r in results.items():
        ok = r["miou"] >= 0.6 and r["pixel_accuracy"] >= 0.85
        print(
            f"{split}: mIoU {r['miou']:.4f}, pixel accuracy {r['pixel_accuracy']:.4f} on {r['patches']} patches "
            f"-> bar (mIoU >= 0.6, acc >= 0.85) {'met' if ok else 'NOT met'}"
        )
        worst = sorted((c for c in r["per_class"] if c["iou"] is not None), key=lambda c: c["iou"])[:4]
        print("  lowest IoU: " + ", ".join(f"{c['name']} {c['iou']:.3f} ({c['support']} px)" for c in worst))
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
