"""GPU figures in one run: U-Net training with mixed precision, the input pipeline from raw and
float16 records, whether input or compute bounds training, and `predict` on GPU vs CPU.

    python benchmarks/gpu_figures.py [--n 2000] [--batches 32 128] [--steps 40] [--tile 2196]
    python benchmarks/gpu_figures.py --smoke     # tiny sizes: runs end to end on a CPU machine too

1. ``synth`` ``--n`` patches; ``convert`` them twice (``--dtype float16``, ``--encoding raw``) on
   all the machine's cores.
2. Input pipeline: ``trainer.data.make_dataset`` (training mode: shuffled, repeated) patches/s
   from each dataset, on the machine's CPU cores, per batch size.
3. Training (``mixed_float16`` policy, the default U-Net): steps/s and patches/s per batch size
   on one in-memory batch (compute only), then fed by the raw and the float16 pipelines. Input
   bounds training when the fed rate falls more than 10 % below the compute-only rate.
4. ``benbeam predict`` of one synthetic GeoTIFF tile in a fresh process, with the GPU and with
   ``CUDA_VISIBLE_DEVICES=-1`` (CPU): pixels/s from the run's summary.

Prints figures, asserts nothing. Without a GPU every figure is a CPU figure and says so.
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
sys.path.insert(0, HERE)


def cli(*argv: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m bigearthnet_beam ARGV`` in a fresh process; raises on failure."""
    res = subprocess.run([sys.executable, "-m", "bigearthnet_beam", *argv], capture_output=True, text=True, env=env)
    if res.returncode != 0:
        print(res.stdout[-2000:], res.stderr[-2000:])
        raise SystemExit(f"benbeam {argv[0]} failed ({res.returncode})")
    return res


def devices() -> tuple[list, str]:
    """TensorFlow's GPUs and a line describing the machine."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    names = []
    for g in gpus:
        try:
            names.append(tf.config.experimental.get_device_details(g).get("device_name", g.name))
        except Exception:  # noqa: BLE001 - a name is only for the heading
            names.append(g.name)
    what = ", ".join(names) if names else "no GPU visible to TensorFlow (every figure below is a CPU figure)"
    return gpus, f"{what}; {os.cpu_count()} CPU cores; load {' '.join(f'{v:.2f}' for v in os.getloadavg())}"


def input_rate(ds, batch: int, batches: int) -> float:
    """Patches/s of the training input pipeline (after a few warm-up batches)."""
    from bigearthnet_beam.trainer import data

    it = iter(data.make_dataset(ds, "train", batch_size=batch, training=True, repeat=True, seed=0))
    for _ in range(3):
        next(it)
    t0, n = time.perf_counter(), 0
    for _ in range(batches):
        x, _ = next(it)
        n += int(x.shape[0])
    return n / (time.perf_counter() - t0)


def train_rates(ds_by_name: dict, batch: int, steps: int, width: int) -> dict[str, float]:
    """Steps/s of ``fit`` under mixed precision: on one repeated in-memory batch ("compute") and fed
    by each dataset's pipeline; a warm-up epoch first (tracing, autotuning)."""
    import keras
    import tensorflow as tf

    from bigearthnet_beam.schemas import bands
    from bigearthnet_beam.trainer import data
    from bigearthnet_beam.trainer.model import build_unet, compile_model

    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = compile_model(build_unet(len(bands.ALL_NAMES), width=width))
        first = next(iter(ds_by_name.values()))
        x, y = next(iter(data.make_dataset(first, "train", batch_size=batch, training=True, repeat=True)))
        streams = {"compute": tf.data.Dataset.from_tensors((x, y)).repeat()}
        for name, ds in ds_by_name.items():
            streams[name] = data.make_dataset(ds, "train", batch_size=batch, training=True, repeat=True, seed=0)
        out = {}
        for name, stream in streams.items():
            model.fit(stream, steps_per_epoch=max(2, steps // 4), epochs=1, verbose=0)
            t0 = time.perf_counter()
            model.fit(stream, steps_per_epoch=steps, epochs=1, verbose=0)
            out[name] = steps / (time.perf_counter() - t0)
        return out
    finally:
        keras.mixed_precision.set_global_policy("float32")


def predict_rate(model: str, tile: dict, out: str, batch: int, chunk: int, cpu: bool) -> float:
    """Pixels/s of ``benbeam predict --tile`` in a fresh process (``cpu``: no GPU visible)."""
    env = dict(os.environ)
    if cpu:
        env["CUDA_VISIBLE_DEVICES"] = "-1"
    cli(
        "predict",
        "--model",
        model,
        "--tile",
        tile["path"],
        "--out",
        out,
        "--batch_size",
        str(batch),
        "--chunk_size",
        str(chunk),
        env=env,
    )
    with open(os.path.join(out, f"{tile['name']}_summary.json")) as fh:
        return float(json.load(fh)["pixels_per_s"])


def main(argv: list[str] | None = None) -> int:
    """Run everything and print the figures."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="synthetic patches")
    ap.add_argument("--batches", type=int, nargs=2, default=[32, 128], help="two training batch sizes")
    ap.add_argument("--steps", type=int, default=40, help="timed training steps per figure")
    ap.add_argument("--input_batches", type=int, default=40, help="timed batches of the input pipeline")
    ap.add_argument("--width", type=int, default=24, help="U-Net width (24: the trainer's default)")
    ap.add_argument("--tile", type=int, default=2196, help="side of the predicted tile, px (multiple of 6)")
    ap.add_argument("--chunk", type=int, default=1024, help="predict --chunk_size")
    ap.add_argument("--predict_batch", type=int, default=64, help="predict --batch_size")
    ap.add_argument("--workdir", default="/tmp/gpu-figures")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (a CPU check that the script runs)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.n, args.batches, args.steps, args.input_batches = 40, [2, 4], 2, 3
        args.width, args.tile, args.chunk, args.predict_batch = 4, 246, 128, 4
    os.makedirs(args.workdir, exist_ok=True)
    gpus, machine = devices()
    print(f"gpu_figures: {machine}")

    reben = os.path.join(args.workdir, f"reben-{args.n}")
    if not os.path.exists(os.path.join(reben, "metadata.parquet")):
        cli("synth", "--out", reben, "--n", str(args.n), "--seed", "0")
    meta = os.path.join(reben, "metadata.parquet")
    from bigearthnet_beam.trainer import data

    datasets = {}
    for name, flags in (("raw", ["--encoding", "raw"]), ("float16", ["--dtype", "float16"])):
        out = os.path.join(args.workdir, f"{name}-{args.n}")
        if not os.path.exists(os.path.join(out, "dataset.json")):
            t0 = time.perf_counter()
            cli("convert", "--meta", meta, "--out", out, "--no_report", *flags)
            print(f"convert {name}: {args.n} patches in {time.perf_counter() - t0:.1f} s")
        datasets[name] = data.open_dataset(out)
        man = datasets[name].manifest
        size = sum(sh["bytes"] for s in man["splits"].values() for sh in s["shards"])
        print(f"  {name}: {size / sum(s['written'] for s in man['splits'].values()):,.0f} bytes per patch")

    print(f"\ninput pipeline (tf.data, training mode) on {os.cpu_count()} CPU cores, patches/s:")
    inputs = {}
    for b in args.batches:
        for name, ds in datasets.items():
            inputs[(name, b)] = input_rate(ds, b, args.input_batches)
        print(f"  batch {b:4d}: raw {inputs[('raw', b)]:8.0f}   float16 {inputs[('float16', b)]:8.0f}")

    device = "GPU" if gpus else "CPU"
    print(f"\nU-Net (width {args.width}) training on {device}, mixed_float16, {args.steps} timed steps:")
    for b in args.batches:
        r = train_rates(datasets, b, args.steps, args.width)
        c = r["compute"]
        line = f"  batch {b:4d}: compute only {c:7.2f} steps/s = {c * b:8.0f} patches/s"
        for name in datasets:
            bound = "input-bound" if r[name] < 0.9 * c else "compute-bound"
            line += f" | fed by {name} {r[name]:7.2f} steps/s ({bound})"
        print(line)

    import bench_predict

    from bigearthnet_beam.synth.tiles import make_tile

    model = os.path.join(args.workdir, f"unet_w{args.width}.keras")
    if not os.path.exists(model):
        bench_predict.make_model(model, args.width)
    tile = make_tile(os.path.join(args.workdir, f"tile_{args.tile}"), size=args.tile, seed=0, layout="geotiff")
    print(f"\npredict one {args.tile}×{args.tile} px tile (chunk {args.chunk}, batch {args.predict_batch}):")
    rates = {}
    for where, cpu in (("GPU" if gpus else "default device (no GPU)", False), ("CPU", True)):
        out = os.path.join(args.workdir, f"predict-{'cpu' if cpu else 'gpu'}")
        rates[where] = predict_rate(model, tile, out, args.predict_batch, args.chunk, cpu)
        print(f"  {where}: {rates[where]:,.0f} pixels/s")
    if gpus:
        gpu, cpu = rates["GPU"], rates["CPU"]
        print(f"  GPU / CPU: {gpu / cpu:.1f}x")
    print(f"\ndone; load {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
