"""GPU figures in one run: the input pipeline from raw and float16 records on the machine's cores,
U-Net training with mixed precision at two batch sizes (and whether input or compute bounds it),
and the models of ``predict`` on GPU vs CPU.

    python benchmarks/gpu_figures.py --raw DIR --float16 DIR [--replicate 32] [--batches 32 128]
    python benchmarks/gpu_figures.py --n 64          # converts --n synthetic patches first (needs the full install)
    python benchmarks/gpu_figures.py --smoke         # tiny sizes: runs end to end on a CPU machine too

It needs only PyTorch, Keras 3 and this package (no TensorFlow, Beam or GDAL): GPU images
usually carry PyTorch, so the U-Net (``trainer.model.build_unet``, the model ``benbeam train``
trains) runs on Keras' torch backend and is fed by the project's PyTorch reader
(``trainer.torch_data.BenDataset``), which reads both encodings.

1. Records: ``--raw`` / ``--float16`` are converted datasets (``benbeam convert --encoding raw`` /
   ``--dtype float16`` of the same patches); their train split is replicated ``--replicate`` times
   (hard links to the same shard files, listed again in a copied ``dataset.json``) so an epoch is
   long enough to measure. Bytes per patch from the manifests.
2. Input pipeline: ``DataLoader(BenDataset(shuffle=True), num_workers=W)`` patches/s per encoding,
   batch size and worker count, after one warm-up batch per worker; and raw records decoded per
   batch on the device (``BenDataset(decode_on="batch")``: the workers send the stored bands, a
   third of the image bytes, and ``batch_decoder`` upsamples and normalises on the GPU).
3. Training under ``mixed_float16`` (and ``mixed_bfloat16``): ``fit`` steps/s on one batch held on
   the device (compute only), then fed by each pipeline of 2. with the most workers. Input
   bounds training when the fed rate is more than 10 % below the compute-only rate.
4. ``predict``'s models on GPU and on CPU (a fresh process with ``CUDA_VISIBLE_DEVICES=``): the
   U-Net forward pass on 120 x 120 windows (float32, as ``predict`` runs it) and the reBEN
   authors' ResNet-50 classifier (untrained weights in their layout; the cost does not depend on
   the weights), in pixels/s of windows. ``benbeam predict`` end to end also reads and writes
   GeoTIFFs (GDAL): ``benchmarks/bench_predict.py`` measures that where GDAL is installed.

Prints figures, asserts nothing. Without a GPU every figure is a CPU figure and says so.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "torch")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

PATCH = 120
RAW_LATE = "raw, decoded on the device"  # BenDataset(decode_on="batch") + batch_decoder


def load_line() -> str:
    """The load averages, for every heading."""
    return "load " + " ".join(f"{v:.2f}" for v in os.getloadavg())


def build_datasets(n: int, work: str) -> dict[str, str]:
    """``benbeam synth`` ``n`` patches and convert them raw and float16 (needs the full install)."""
    reben = os.path.join(work, f"reben-{n}")
    out = {}

    def cli(*argv):
        r = subprocess.run([sys.executable, "-m", "bigearthnet_beam", *argv], capture_output=True, text=True)
        if r.returncode:
            raise SystemExit(f"benbeam {argv[0]} failed ({r.returncode}): {r.stderr[-1500:]}")

    if not os.path.exists(os.path.join(reben, "metadata.parquet")):
        cli("synth", "--out", reben, "--n", str(n), "--seed", "0")
    for name, flags in (("raw", ["--encoding", "raw"]), ("float16", ["--dtype", "float16"])):
        out[name] = os.path.join(work, f"{name}-{n}")
        if not os.path.exists(os.path.join(out[name], "dataset.json")):
            cli("convert", "--meta", os.path.join(reben, "metadata.parquet"), "--out", out[name], "--no_report", *flags)
    return out


def replicate(src: str, dst: str, times: int, split: str = "train") -> str:
    """A copy of dataset ``src`` whose ``split`` lists its shards ``times`` times (hard links, or
    copies across file systems); other splits are dropped."""
    with open(os.path.join(src, "dataset.json")) as fh:
        man = json.load(fh)
    entry = man["splits"][split]
    if os.path.isdir(dst):
        shutil.rmtree(dst)
    os.makedirs(dst)
    shards = []
    for k in range(times):
        for sh in entry["shards"]:
            name = f"rep{k:03d}-{os.path.basename(sh['path'])}"
            try:
                os.link(os.path.join(src, sh["path"]), os.path.join(dst, name))
            except OSError:
                shutil.copyfile(os.path.join(src, sh["path"]), os.path.join(dst, name))
            shards.append({**sh, "path": name})
    # the accounting stays whole: written + failed = input, as the manifest's reader checks
    entry = {**entry, "shards": shards, "written": entry["written"] * times, "failed": 0}
    entry["input"] = entry["written"]
    man["splits"] = {split: entry}
    with open(os.path.join(dst, "dataset.json"), "w") as fh:
        json.dump(man, fh)
    return dst


def bytes_per_patch(root: str) -> float:
    """Shard bytes / records of one dataset's manifest."""
    with open(os.path.join(root, "dataset.json")) as fh:
        man = json.load(fh)
    shards = [sh for s in man["splits"].values() for sh in s["shards"]]
    return sum(sh["bytes"] for sh in shards) / sum(sh["records"] for sh in shards)


def to_keras(batch: dict):
    """A ``BenDataset`` batch -> ``(image NHWC float32, {"seg": mask})``, in the DataLoader worker."""
    import torch

    return batch["image"].permute(0, 2, 3, 1).contiguous(), {"seg": batch["mask"].to(dtype=torch.uint8)}


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def loader(root: str, batch: int, workers: int, *, keras_batches: bool = False, decode_on: str = "sample"):
    """An endless stream of batches of the train split (a new epoch order each pass). With
    ``decode_on="batch"`` (raw records) the workers send the stored bands and each batch is
    upsampled and normalised on the device (``BenDataset.batch_decoder``)."""
    import torch
    from torch.utils.data import DataLoader

    from bigearthnet_beam.trainer.torch_data import BenDataset

    ds = BenDataset(root, "train", shuffle=True, seed=0, decode_on=decode_on)
    late = decode_on == "batch"

    def collate(samples):
        b = torch.utils.data.default_collate(samples)
        return to_keras(b) if keras_batches and not late else b

    dl = DataLoader(
        ds,
        batch_size=batch,
        num_workers=workers,
        collate_fn=collate,
        persistent_workers=workers > 0,
        pin_memory=torch.cuda.is_available(),
        prefetch_factor=4 if workers else None,
        drop_last=True,
    )
    dev = device()
    epoch = 0
    while True:
        ds.set_epoch(epoch)
        for b in dl:
            if late:
                b = ds.batch_decoder(b, dev)
                if keras_batches:
                    image, y = to_keras(b)
                    b = (image, {"seg": y["seg"].to(dev, non_blocking=True)})
            yield b
        epoch += 1


def input_rate(root: str, batch: int, workers: int, seconds: float, decode_on: str = "sample") -> float:
    """Patches/s of the training input pipeline, after one warm-up batch per worker (with
    ``decode_on="batch"``: the batches decoded on the device, synchronised before the clock stops)."""
    import torch

    it = loader(root, batch, workers, decode_on=decode_on)
    for _ in range(max(1, workers)):
        next(it)
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        b = next(it)
        n += int(b["image"].shape[0])
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    rate = n / (time.perf_counter() - t0)
    it.close()
    return rate


def train_rates(roots: dict, batch: int, steps: int, width: int, workers: int, policy: str) -> dict[str, float]:
    """Steps/s of ``fit`` under ``policy``: on one batch held on the device ("compute"), then fed by
    each dataset's pipeline; a short warm-up ``fit`` before each timing."""
    import keras
    import torch

    from bigearthnet_beam.schemas import bands
    from bigearthnet_beam.trainer.model import build_unet, compile_model

    keras.mixed_precision.set_global_policy(policy)
    try:
        keras.utils.set_random_seed(0)
        model = compile_model(build_unet(len(bands.ALL_NAMES), width=width))
        first = next(loader(next(iter(roots.values())), batch, 0, keras_batches=True))
        dev = device()
        held = (first[0].to(dev), {"seg": first[1]["seg"].to(dev)})

        def repeat():
            while True:
                yield held

        streams = {"compute": repeat}
        for name, root in roots.items():
            streams[name] = lambda root=root: loader(root, batch, workers, keras_batches=True)
        streams[RAW_LATE] = lambda: loader(roots["raw"], batch, workers, keras_batches=True, decode_on="batch")
        out = {}
        for name, make in streams.items():
            stream = make()
            model.fit(stream, steps_per_epoch=max(3, steps // 5), epochs=1, verbose=0, shuffle=False)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            model.fit(stream, steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            out[name] = steps / (time.perf_counter() - t0)
            stream.close()
        return out
    finally:
        keras.mixed_precision.set_global_policy("float32")


def model_rates(width: int, batch: int, seconds: float, arch: str) -> list[str]:
    """Lines: windows/s and pixels/s of the U-Net forward pass and the authors' classifier on this
    process's device (``CUDA_VISIBLE_DEVICES`` decides)."""
    import tempfile

    import bench_pretrained
    import numpy as np
    import torch

    from bigearthnet_beam.schemas import bands
    from bigearthnet_beam.trainer.model import build_unet

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    where = f"{dev} ({torch.cuda.get_device_name(0) if dev == 'cuda' else f'{torch.get_num_threads()} threads'})"
    lines = []
    model = build_unet(len(bands.ALL_NAMES), width=width)
    x = np.random.default_rng(0).normal(size=(batch, PATCH, PATCH, len(bands.ALL_NAMES))).astype(np.float32)
    xt = torch.from_numpy(x).to(dev)

    def run():
        with torch.no_grad():
            model(xt, training=False)["seg"].cpu()  # the probabilities come back to the host, as in predict

    run()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        run()
        n += batch
    r = n / (time.perf_counter() - t0)
    lines.append(
        f"U-Net (width {width}) forward, batch {batch}, {where}: {r:,.0f} windows/s = {r * PATCH**2:,.0f} px/s"
    )
    with tempfile.TemporaryDirectory(prefix="gpu-figures-") as tmp:
        ref = bench_pretrained.write_untrained(os.path.join(tmp, "model"), arch, 10)
        from bigearthnet_beam.pretrained import load

        m = load(ref, device=dev)
        xw = np.random.default_rng(0).normal(size=(batch, len(m.bands), PATCH, PATCH)).astype(np.float32)
        m.proba_normalised(xw, batch_size=batch)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            m.proba_normalised(xw, batch_size=batch)
            n += batch
        r = n / (time.perf_counter() - t0)
        lines.append(
            f"authors' {arch} (10 ch), batch {batch}, {where}: {r:,.0f} windows/s = {r * PATCH**2:,.0f} px/s "
            "(stride 120)"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    """Run everything and print the figures."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--raw", help="a dataset converted with --encoding raw")
    ap.add_argument("--float16", help="the same patches converted with --dtype float16")
    ap.add_argument("--n", type=int, default=64, help="without --raw/--float16: synthetic patches to convert")
    ap.add_argument("--replicate", type=int, default=1024, help="times the train split's shards are listed")
    ap.add_argument("--batches", type=int, nargs=2, default=[32, 128], help="two batch sizes")
    ap.add_argument("--workers", type=int, nargs="+", default=None, help="DataLoader workers (default: 4, 8, cores-1)")
    ap.add_argument("--seconds", type=float, default=6.0, help="time per input / model figure")
    ap.add_argument("--steps", type=int, default=40, help="timed training steps per figure")
    ap.add_argument("--width", type=int, default=24, help="U-Net width (24: the trainer's default)")
    ap.add_argument("--arch", default="resnet50", help="the authors' architecture for the classifier figure")
    ap.add_argument("--policies", nargs="+", default=["mixed_float16", "mixed_bfloat16"])
    ap.add_argument("--sections", default="input,train,models", help="which figures, comma-separated")
    ap.add_argument("--workdir", default="/tmp/gpu-figures")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (a CPU check that the script runs)")
    ap.add_argument("--models_only", action="store_true", help=argparse.SUPPRESS)  # the CPU child process
    args = ap.parse_args(argv)
    if args.smoke:
        args.n, args.replicate, args.batches, args.workers, args.seconds = 40, 2, [2, 4], [0, 2], 1.0
        args.steps, args.width, args.arch, args.policies = 2, 4, "resnet18", ["mixed_float16"]
    if args.models_only:
        for line in model_rates(args.width, args.batches[1], args.seconds, args.arch):
            print("  " + line, flush=True)
        return 0

    import keras
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    cores = os.cpu_count() or 1
    workers = args.workers or sorted({4, 8, max(1, cores - 1)})
    print(
        f"gpu_figures: {gpu or 'no GPU visible to torch (every figure below is a CPU figure)'}; {cores} CPU cores; "
        f"torch {torch.__version__}, keras {keras.__version__} ({keras.backend.backend()} backend); {load_line()}",
        flush=True,
    )
    os.makedirs(args.workdir, exist_ok=True)
    src = (
        {"raw": args.raw, "float16": args.float16}
        if args.raw and args.float16
        else build_datasets(args.n, args.workdir)
    )
    roots = {}
    for name, root in src.items():
        roots[name] = replicate(root, os.path.join(args.workdir, f"{name}-x{args.replicate}"), args.replicate)
        with open(os.path.join(roots[name], "dataset.json")) as fh:
            written = json.load(fh)["splits"]["train"]["written"]
        print(
            f"  {name}: {bytes_per_patch(root):,.0f} bytes per patch; train split x{args.replicate} = {written} records"
        )

    sections = set(args.sections.split(","))
    if "input" in sections:
        print(f"\ninput pipeline (PyTorch DataLoader over BenDataset, shuffled), patches/s; {load_line()}:", flush=True)
    for b in args.batches if "input" in sections else ():
        for w in workers:
            r = {name: input_rate(root, b, w, args.seconds) for name, root in roots.items()}
            late = input_rate(roots["raw"], b, w, args.seconds, decode_on="batch")
            print(
                f"  batch {b:4d}, {w:2d} workers: raw {r['raw']:8,.0f}   float16 {r['float16']:8,.0f}   "
                f"raw/float16 {r['raw'] / r['float16']:.2f}   {RAW_LATE} {late:8,.0f} "
                f"({late / r['float16']:.2f}x float16)",
                flush=True,
            )

    device = f"GPU ({gpu})" if gpu else "CPU"
    for policy in args.policies if "train" in sections else ():
        print(
            f"\nU-Net (width {args.width}) training on {device}, {policy}, {args.steps} timed steps, fed with "
            f"{max(workers)} workers; {load_line()}:",
            flush=True,
        )
        for b in args.batches:
            r = train_rates(roots, b, args.steps, args.width, max(workers), policy)
            c = r["compute"]
            line = f"  batch {b:4d}: compute only {c:7.2f} steps/s = {c * b:8,.0f} patches/s"
            for name in (*roots, RAW_LATE):
                bound = "input-bound" if r[name] < 0.9 * c else "compute-bound"
                line += f" | fed by {name} {r[name]:7.2f} steps/s = {r[name] * b:7,.0f} patches/s ({bound})"
            print(line, flush=True)

    if "models" not in sections:
        return 0
    print(f"\npredict's models, batch {args.batches[1]} windows of {PATCH} x {PATCH} px; {load_line()}:", flush=True)
    me = [sys.executable, os.path.abspath(__file__), "--models_only", "--width", str(args.width), "--arch", args.arch]
    me += ["--seconds", str(args.seconds), "--batches", *map(str, args.batches)]
    for visible in [None, ""] if gpu else [None]:
        env = dict(os.environ)
        if visible is not None:
            env["CUDA_VISIBLE_DEVICES"] = visible
        res = subprocess.run(me, env=env, capture_output=True, text=True)
        print(res.stdout.rstrip() or f"  failed ({res.returncode}): {res.stderr[-1500:]}", flush=True)
    print(f"\ndone; {load_line()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
