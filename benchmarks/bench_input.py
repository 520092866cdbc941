"""Throughput of the trainer's input pipeline (``trainer.data.make_dataset``, as `benbeam
train` builds it) and the training step time with and without ``--augment``; prints
figures, asserts nothing.

    python benchmarks/bench_input.py [--n 2000] [--batch 32] [--batches 60] [--workdir DIR]
    python benchmarks/bench_input.py --data DATASET [DATASET ...] [--steps 5 --step_batch 8 --width 24]

Without ``--data``: synthesises N patches and converts them twice (``--dtype float32`` and
``float16``) under ``--workdir``, reused by later runs. For each dataset it streams the
train split exactly as training does (shuffled shards, shuffle buffer, batched parsing,
prefetch; endless with ``repeat``) ``--rounds`` times, and prints patches/s (best round,
and median) and the CPU time per patch. ``--augment`` adds no work there (it runs inside
the fitted model, ``trainer.augment``; ``tests/test_augment.py`` checks that `train
--augment` feeds the same batches), so the pipeline is measured once for both. The cost
moved to the model: ``--steps`` training steps of the U-Net (``--width``, batch
``--step_batch``, one batch held in memory so no input work is timed) without and with the
``DihedralAugment`` wrapper, alternating, best and median ms per step. TensorFlow uses every
core of the machine; the per-8-core figure assumes throughput in proportion to the cores.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def stream_rate(ds, *, batch: int, batches: int, warmup: int = 5, seed: int = 0) -> tuple[float, float]:
    """(patches/s, CPU-ms per patch of this process) over ``batches`` training batches after
    ``warmup`` (the shuffle buffer fills first)."""
    from bigearthnet_beam.trainer import data as trainer_data

    stream = trainer_data.make_dataset(ds, "train", batch_size=batch, training=True, repeat=True, seed=seed)
    it = iter(stream)
    for _ in range(warmup):
        next(it)
    n = 0
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(batches):
        x, _y = next(it)
        n += int(x.shape[0])
    return n / (time.perf_counter() - t0), (time.process_time() - c0) / n * 1e3


def step_times(ds, *, batch: int, steps: int, width: int, rounds: int, seed: int = 0) -> dict[bool, list[float]]:
    """ms per training step (``model.fit`` on one batch held in memory, the first, compiling calls
    left out) of the plain U-Net (False) and of it inside ``trainer.augment.DihedralAugment`` (True)."""
    import keras
    import tensorflow as tf

    from bigearthnet_beam.trainer import augment, model
    from bigearthnet_beam.trainer import data as trainer_data

    x, y = next(iter(trainer_data.make_dataset(ds, "train", batch_size=batch, training=True, repeat=True, seed=seed)))
    one = tf.data.Dataset.from_tensors((x, y)).repeat()
    keras.utils.set_random_seed(seed)
    models = {}
    for aug in (False, True):
        net = model.build_unet(int(x.shape[-1]), width=width)
        model.compile_model(net)
        models[aug] = augment.augmented(net, seed=seed) if aug else net
        models[aug].fit(one, epochs=1, steps_per_epoch=2, verbose=0)  # build + compile the step
    out = {False: [], True: []}
    for _ in range(rounds):
        for aug in (False, True):
            t0 = time.perf_counter()
            models[aug].fit(one, epochs=1, steps_per_epoch=steps, verbose=0)
            out[aug].append((time.perf_counter() - t0) / steps * 1e3)
    return out


def ensure_datasets(n: int, workdir: str) -> list[str]:
    """Synthetic sample + float32 and float16 conversions under ``workdir`` (reused)."""
    from bigearthnet_beam.beam_pipeline.cli import main as cli

    reben = os.path.join(workdir, f"reben_{n}")
    if not os.path.exists(os.path.join(reben, "metadata.parquet")):
        if cli(["synth", "--out", reben, "--n", str(n), "--seed", "0"]) != 0:
            raise SystemExit("synth failed")
    out = []
    for dtype in ("float32", "float16"):
        ds = os.path.join(workdir, f"dataset_{n}_{dtype}")
        meta = os.path.join(reben, "metadata.parquet")
        if (
            not os.path.exists(os.path.join(ds, "dataset.json"))
            and cli(["convert", "--meta", meta, "--out", ds, "--dtype", dtype]) != 0
        ):
            raise SystemExit(f"convert --dtype {dtype} failed")
        out.append(ds)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", nargs="+", default=None, help="converted datasets (default: synthesise and convert)")
    ap.add_argument("--n", type=int, default=2000, help="synthetic patches when --data is not given")
    ap.add_argument("--workdir", default=os.path.join(os.path.dirname(HERE), "bench_out"))
    ap.add_argument("--batch", type=int, default=32, help="batch size (default: train's, %(default)s)")
    ap.add_argument("--batches", type=int, default=60, help="batches timed per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=5, help="training steps timed per round (0: no step timing)")
    ap.add_argument("--step_batch", type=int, default=8, help="batch of the timed training steps")
    ap.add_argument("--width", type=int, default=24, help="U-Net width of the timed training steps (train's default)")
    args = ap.parse_args()

    datasets = args.data or ensure_datasets(args.n, args.workdir)
    import tensorflow as tf

    from bigearthnet_beam.trainer import data as trainer_data

    cores = os.cpu_count() or 1
    gpus = tf.config.list_physical_devices("GPU")
    print(
        f"machine: {cores} cores, {len(gpus)} GPU(s); batch {args.batch}; {args.batches} batches per round, "
        f"{args.rounds} rounds"
    )
    for path in datasets:
        ds = trainer_data.open_dataset(path)
        rates, cpu = [], []
        for _ in range(args.rounds):
            r, c = stream_rate(ds, batch=args.batch, batches=args.batches)
            rates.append(r)
            cpu.append(c)
        best = max(rates)
        print(f"{path} ({ds.image_dtype}, {ds.records('train')} train patches):")
        print(
            f"  input pipeline, with or without --augment (the same pipeline): {best:.0f} patches/s "
            f"(median {statistics.median(rates):.0f}) on {cores} cores = {best / cores * 8:.0f} per 8 cores, "
            f"extrapolated; {min(cpu):.3f} CPU-ms/patch"
        )
    if args.steps > 0:
        ms = step_times(
            trainer_data.open_dataset(datasets[0]),
            batch=args.step_batch,
            steps=args.steps,
            width=args.width,
            rounds=args.rounds,
        )
        print(
            f"training step, U-Net width {args.width}, batch {args.step_batch} ({datasets[0]}), "
            f"{'GPU' if gpus else 'CPU'}:"
        )
        for flag, name in ((False, "no augmentation"), (True, "--augment (in the model)")):
            print(f"  {name:26s} {min(ms[flag]):9.1f} ms/step (median {statistics.median(ms[flag]):.1f})")
        print(f"  augmentation costs {100 * (min(ms[True]) / min(ms[False]) - 1):+.1f}% of the step time (best rounds)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
