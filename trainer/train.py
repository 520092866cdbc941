"""``benbeam train``: fit the U-Net on a converted dataset.

``train(...)`` is the argparse-free entry point (keyword arguments, returns the final
metrics dict); ``add_train_args`` / ``train_main`` wire it to a command line, and
``train_cli(argv)`` / ``evaluate_cli(argv)`` are what ``benbeam`` dispatches to.

Everything a run leaves lies beside ``--save`` (``runs/unet.keras`` below):

    runs/unet.keras            best model by validation mIoU (the last one without validation)
    runs/unet.keras.json       its inference contract (channels, statistics, classes), also inside the model
    runs/unet.last.keras       the model after the last finished epoch, optimizer included (for --resume)
    runs/unet.state.json       epoch reached, best mIoU so far, the run's settings
    runs/unet.history.csv      one row per epoch (losses, mIoU, pixel accuracy, patches/s)
    runs/unet.tb/              TensorBoard logs
    runs/unet.metrics.json     final metrics of the run
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time

LOG = logging.getLogger("benbeam.train")

DEFAULTS = {"epochs": 10, "batch": 32, "lr": 1e-3, "save": "model.keras", "modalities": "s2,s1", "width": 24,
            "depth": 3, "task": "seg", "seed": 0, "val_split": "validation", "shuffle_buffer": 256,
            "strategy": "default"}


def run_paths(save: str) -> dict[str, str]:
    """Where a run writes its outputs, all beside ``save``."""
    save = str(save)
    if not save.endswith(".keras"):
        raise ValueError(f"--save must name a .keras file, got {save!r}")
    stem = save[: -len(".keras")]
    return {"model": save, "info": save + ".json", "last": stem + ".last.keras", "state": stem + ".state.json",
            "history": stem + ".history.csv", "tensorboard": stem + ".tb", "metrics": stem + ".metrics.json"}


class RunFiles:
    """Where a run's files live: beside ``save`` on local disk, or, for an ``s3://`` /
    ``gs://`` ``save``, in a local staging folder mirrored to the bucket after every epoch
    (Keras, the CSV logger and TensorBoard write local files only)."""

    def __init__(self, save: str):
        from transforms import storage

        self.remote = storage.is_remote(save)
        self.urls = run_paths(save)
        if self.remote:
            import hashlib
            import tempfile

            tag = hashlib.sha256(save.encode()).hexdigest()[:16]
            self.stage = tempfile.mkdtemp(prefix=f"benbeam-run-{tag}-")
            self.paths = run_paths(os.path.join(self.stage, os.path.basename(save)))
        else:
            self.stage = None
            self.paths = self.urls

    def pull(self, *keys: str) -> None:
        """Fetch existing files of an earlier run (for --resume); absent ones are skipped."""
        from transforms import storage

        if not self.remote:
            return
        for k in keys:
            try:
                storage.download_file(self.urls[k], self.paths[k])
            except FileNotFoundError:
                pass

    def push(self, *keys: str) -> None:
        """Publish files (folders recursively) to the bucket; a no-op for local runs."""
        from transforms import storage

        if not self.remote:
            return
        for k in keys:
            local = self.paths[k]
            if os.path.isdir(local):
                storage.upload_tree(local, self.urls[k])
            elif os.path.exists(local):
                storage.upload_file(local, self.urls[k])

    def cleanup(self) -> None:
        if self.stage:
            import shutil

            shutil.rmtree(self.stage, ignore_errors=True)


def _modalities_canonical(modalities) -> str:
    from schemas.bands import MODALITIES, channels_for

    chans = channels_for(modalities)
    return ",".join(m for m, names in MODALITIES.items() if any(c in names for c in chans))


def build_info(ds, *, modalities: str, task: str, width: int, depth: int, class_weights) -> dict:
    """The inference contract stored in the model (see ``trainer.model.load_model``)."""
    from beam_pipeline import __version__
    from schemas import classes as C
    from schemas.bands import PATCH_SIZE, channels_for
    from trainer.model import INFO_FORMAT, INFO_VERSION

    m = ds.manifest
    chans = list(channels_for(modalities))
    return {
        "format": INFO_FORMAT,
        "version": INFO_VERSION,
        "package_version": __version__,
        "modalities": _modalities_canonical(modalities),
        "channels": chans,
        "input_shape": [PATCH_SIZE, PATCH_SIZE, len(chans)],
        "task": task,
        "width": int(width),
        "depth": int(depth),
        "classes": list(m["classes"]),
        "class_colors": [list(c) for c in (m.get("class_colors") or C.class_colors())],
        "ignore_index": int(m["ignore_index"]),
        "statistics": m["statistics"],
        "image_dtype": m["image_dtype"],
        # how convert resampled the 20 m / 60 m bands: predict resamples tiles the same way
        "resampling": (m.get("options") or {}).get("resampling", "bilinear"),
        "class_weights": class_weights,
        "training_data": {"url": str(ds.root), "manifest_sha256": ds.manifest_sha256,
                          "package_version": m.get("package_version"), "created_by": m.get("created_by")},
    }


def _write_json(path: str, obj) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=2, sort_keys=True, allow_nan=False, default=_json_default)
        fh.write("\n")
    os.replace(tmp, path)


def _json_default(o):
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON-able: {type(o)}")


def _clean(v):
    """Floats for JSON: NaN / inf become None."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return v
    return f if math.isfinite(f) else None


def seg_metric(logs: dict, name: str, val: bool = False):
    """A segmentation metric from Keras logs or a history row: ``miou`` / ``pixel_acc`` / ``loss``
    (named ``seg_<name>`` when the model also has the multi-label head); None if absent."""
    pre = "val_" if val else ""
    for key in (f"{pre}{name}", f"{pre}seg_{name}"):
        if key in logs and logs[key] not in (None, ""):
            return float(logs[key])
    return None


def _callbacks(files: RunFiles, *, state: dict, batch: int, has_val: bool, tensorboard: bool, resume: bool):
    import keras

    from trainer.model import save_model

    paths = files.paths

    class Throughput(keras.callbacks.Callback):
        """patches/s of each epoch's training steps (the first step, which compiles, left out)."""

        def on_epoch_begin(self, epoch, logs=None):
            self.t0, self.steps = None, 0

        def on_train_batch_end(self, b, logs=None):
            if self.t0 is None:
                self.t0 = time.perf_counter()
            else:
                self.steps += 1

        def on_epoch_end(self, epoch, logs=None):
            if logs is not None and self.t0 is not None and self.steps:
                logs["patches_per_s"] = self.steps * batch / (time.perf_counter() - self.t0)

    class Checkpoints(keras.callbacks.Callback):
        """Each epoch: the last model + state (for --resume); the best by val mIoU to --save."""

        def on_epoch_end(self, epoch, logs=None):
            logs = dict(logs or {})
            score = seg_metric(logs, "miou", val=True) if has_val else None
            improved = score is not None and (state["best_val_miou"] is None or score > state["best_val_miou"])
            if improved or not has_val:
                save_model(self.model, paths["model"])
                state["best_epoch"] = epoch + 1
                if improved:
                    state["best_val_miou"] = float(score)
            save_model(self.model, paths["last"])
            state["epoch"] = epoch + 1
            state["last_logs"] = {k: _clean(v) for k, v in logs.items()}
            _write_json(paths["state"], state)
            # the checkpoint before the state that points at it
            files.push(*(("model", "info") if (improved or not has_val) else ()), "last", "history", "state")

    cbs = [Throughput(), keras.callbacks.CSVLogger(paths["history"], append=resume), Checkpoints()]
    if tensorboard:
        if tensorboard_available():
            cbs.append(keras.callbacks.TensorBoard(paths["tensorboard"], write_graph=False, profile_batch=0))
        else:
            LOG.warning("TensorBoard logs skipped: the `tensorboard` package is not installed "
                        "(pip install tensorboard); history CSV and metrics JSON are written as usual")
    return cbs


def tensorboard_available() -> bool:
    """``tf.summary`` writes only with the ``tensorboard`` package installed."""
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None


def train(*, data: str, save: str = DEFAULTS["save"], epochs: int = DEFAULTS["epochs"], batch: int = DEFAULTS["batch"],
          lr: float = DEFAULTS["lr"], modalities: str = DEFAULTS["modalities"], augment: bool = False,
          steps_per_epoch: int | None = None, max_train_patches: int | None = None,
          max_val_patches: int | None = None, width: int = DEFAULTS["width"], depth: int = DEFAULTS["depth"],
          task: str = DEFAULTS["task"], class_weights: str | None = None, resume: bool = False,
          mixed_precision: bool = False, strategy: str = DEFAULTS["strategy"], seed: int = DEFAULTS["seed"],
          val_split: str = DEFAULTS["val_split"], shuffle_buffer: int = DEFAULTS["shuffle_buffer"],
          tensorboard: bool = True, verbose: int | str = "auto", extra_callbacks=(),
          deterministic: bool = False) -> dict:
    """Train (or, with ``resume``, continue training) the U-Net; returns the final metrics.

    ``class_weights``: None, ``"inv_sqrt"`` or ``"median_freq"`` (from the train split's
    ``class_pixel_counts``). ``epochs`` is the total epoch count: a resumed run trains
    epochs ``state.epoch + 1 … epochs``. Raises ``ManifestError`` / ``ValueError`` with the
    fix on bad input.
    """
    import keras
    import tensorflow as tf

    from schemas import manifest as M
    from schemas.bands import channels_for
    from trainer import data as D
    from trainer import model as TM

    # --- check everything before touching the disk
    for name, v in (("epochs", epochs), ("batch", batch)):
        if int(v) < 1:
            raise ValueError(f"--{name} must be at least 1, got {v}")
    if not lr > 0:
        raise ValueError(f"--lr must be positive, got {lr}")
    for name, v in (("steps_per_epoch", steps_per_epoch), ("max_train_patches", max_train_patches),
                    ("max_val_patches", max_val_patches)):
        if v is not None and int(v) < 1:
            raise ValueError(f"--{name} must be at least 1, got {v}")
    if strategy not in ("default", "mirrored"):
        raise ValueError(f"--strategy must be 'default' or 'mirrored', got {strategy!r}")
    if task not in TM.TASKS:
        raise ValueError(f"--task must be one of {', '.join(TM.TASKS)}, got {task!r}")
    channels = channels_for(modalities)
    modalities = _modalities_canonical(modalities)
    val_split = M.check_split(val_split)
    TM.check_depth(depth)
    files = RunFiles(save)
    paths = files.paths
    ds = D.open_dataset(data)
    if not ds.records("train"):
        raise ValueError(f"split 'train' of {data} holds no patches")
    has_val = val_split in ds.manifest["splits"] and ds.records(val_split) > 0
    if not has_val:
        LOG.warning("no %r patches in %s: training without validation; --save gets the last epoch's model",
                    val_split, data)

    state = None
    if resume:
        files.pull("state", "last", "history", "model", "info")
        if not (os.path.exists(paths["state"]) and os.path.exists(paths["last"])):
            raise ValueError(f"--resume: no checkpoint to resume from ({files.urls['last']} and {files.urls['state']} "
                             "are written after each epoch); drop --resume to start a new run")
        with open(paths["state"], encoding="utf-8") as fh:
            state = json.load(fh)
        if state.get("modalities") != modalities or state.get("task") != task:
            raise ValueError(f"--resume: the checkpoint was trained with --modalities {state.get('modalities')} "
                             f"--task {state.get('task')}; pass the same values (got {modalities}, {task})")
        if int(state["epoch"]) >= epochs:
            LOG.info("--resume: %s already reached epoch %d of %d; nothing to train", paths["last"],
                     state["epoch"], epochs)
            out = _load_metrics(paths)
            files.cleanup()
            return out

    weights = None
    if class_weights:
        weights = TM.class_weights_from_counts(ds.split_info("train")["class_pixel_counts"], class_weights)

    keras.utils.set_random_seed(int(seed))
    if deterministic:  # same data, seed and flags -> the same weights (TF picks deterministic kernels)
        tf.config.experimental.enable_op_determinism()
    prev_policy = keras.mixed_precision.global_policy().name
    if mixed_precision:
        if not tf.config.list_physical_devices("GPU"):
            LOG.warning("--mixed_precision without a GPU: float16 on CPU is slow; it is meant for GPUs")
        keras.mixed_precision.set_global_policy("mixed_float16")
    dist = tf.distribute.MirroredStrategy() if strategy == "mirrored" else tf.distribute.get_strategy()
    try:
        with dist.scope():
            if state is not None:
                model, info = TM.load_model(paths["last"], compile=True)
                if list(info["channels"]) != list(channels):
                    raise ValueError(f"--resume: checkpoint channels {info['channels']} differ from {list(channels)}")
                initial_epoch = int(state["epoch"])
                LOG.info("resuming %s at epoch %d (optimizer state restored; --lr, --width and --class_weights "
                         "come from the checkpoint)", paths["last"], initial_epoch + 1)
            else:
                info = build_info(ds, modalities=modalities, task=task, width=width, depth=depth,
                                  class_weights=weights)
                model = TM.build_unet(len(channels), width=width, depth=depth, task=task, info=info)
                TM.compile_model(model, lr=lr, class_weights=weights, task=task)
                initial_epoch = 0
                state = {"epoch": 0, "best_val_miou": None, "best_epoch": None, "modalities": modalities,
                         "task": task, "channels": list(channels), "width": width, "depth": depth,
                         "data": str(data), "params": int(model.count_params())}
        state["settings"] = {"epochs": epochs, "batch": batch, "lr": lr, "augment": augment,
                             "steps_per_epoch": steps_per_epoch, "max_train_patches": max_train_patches,
                             "max_val_patches": max_val_patches, "class_weights": class_weights,
                             "mixed_precision": mixed_precision, "strategy": strategy, "seed": seed,
                             "val_split": val_split, "shuffle_buffer": shuffle_buffer}
        multi = info["task"] == "both"
        train_ds = D.make_dataset(ds, "train", batch_size=batch, modalities=modalities, training=True,
                                  augment=augment, shuffle_buffer=shuffle_buffer,
                                  repeat=steps_per_epoch is not None, max_patches=max_train_patches,
                                  with_multi_hot=multi, seed=seed)
        val_ds = (D.make_dataset(ds, val_split, batch_size=batch, modalities=modalities, max_patches=max_val_patches,
                                 with_multi_hot=multi) if has_val else None)
        os.makedirs(os.path.dirname(os.path.abspath(paths["model"])), exist_ok=True)
        cbs = _callbacks(files, state=state, batch=batch, has_val=has_val, tensorboard=tensorboard,
                         resume=initial_epoch > 0) + list(extra_callbacks)
        n_train = D.num_patches(ds, "train", max_train_patches)
        LOG.info("training on %d patches (%s, %d channels), %d parameters, epochs %d..%d", n_train, modalities,
                 len(channels), model.count_params(), initial_epoch + 1, epochs)
        t0 = time.perf_counter()
        if verbose == "auto":  # one line per epoch when not on a terminal (logs, CI)
            verbose = 1 if sys.stdout.isatty() else 2
        hist = model.fit(train_ds, validation_data=val_ds, epochs=epochs, initial_epoch=initial_epoch,
                         steps_per_epoch=steps_per_epoch, callbacks=cbs, verbose=verbose)
        wall = time.perf_counter() - t0
    finally:
        if mixed_precision:
            keras.mixed_precision.set_global_policy(prev_policy)

    history = {k: [_clean(v) for v in vals] for k, vals in hist.history.items()}
    last = {k: v[-1] for k, v in history.items() if v}
    metrics = {
        "model": files.urls["model"],
        "last_model": files.urls["last"],
        "epochs_completed": state["epoch"],
        "epochs_this_run": len(hist.epoch),
        "best_epoch": state["best_epoch"],
        "best_val_miou": state["best_val_miou"],
        "final": last,
        "train_patches_per_s": last.get("patches_per_s"),
        "wall_seconds_this_run": wall,
        "params": int(model.count_params()),
        "channels": list(channels),
        "modalities": modalities,
        "task": info["task"],
        "data": str(data),
        "class_weights": info.get("class_weights"),
        "settings": state["settings"],
    }
    _write_json(paths["metrics"], metrics)
    files.push("history", "metrics", "tensorboard")
    files.cleanup()
    return metrics


def _load_metrics(paths: dict) -> dict:
    if os.path.exists(paths["metrics"]):
        with open(paths["metrics"], encoding="utf-8") as fh:
            return json.load(fh)
    with open(paths["state"], encoding="utf-8") as fh:
        state = json.load(fh)
    return {"model": paths["model"], "epochs_completed": state["epoch"], "best_epoch": state["best_epoch"],
            "best_val_miou": state["best_val_miou"], "final": state.get("last_logs", {})}


# --------------------------------------------------------------------------- command line


def _positive_int(s: str) -> int:
    v = int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {s}")
    return v


def add_storage_flags(ap: argparse.ArgumentParser) -> None:
    from beam_pipeline.options import add_storage_args

    add_storage_args(ap)


def add_train_args(ap: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Register the ``benbeam train`` flags (the seed's --data --epochs --batch --lr --save kept)."""
    ap.add_argument("--data", required=True, help="converted dataset: folder or URL holding dataset.json")
    ap.add_argument("--epochs", type=_positive_int, default=DEFAULTS["epochs"],
                    help="total epochs (a resumed run continues up to this) (default: %(default)s)")
    ap.add_argument("--batch", type=_positive_int, default=DEFAULTS["batch"], help="batch size (default: %(default)s)")
    ap.add_argument("--lr", type=float, default=DEFAULTS["lr"], help="Adam learning rate (default: %(default)s)")
    ap.add_argument("--save", default=DEFAULTS["save"],
                    help="model output path (.keras); logs, history and checkpoints go beside it "
                         "(default: %(default)s)")
    ap.add_argument("--modalities", default=DEFAULTS["modalities"], choices=["s2,s1", "s2", "s1", "s1,s2"],
                    metavar="{s2,s1 | s2 | s1 | s1,s2}",
                    help="input channels: s2 = 12 bands, s1 = VV,VH, both = 14 (default: %(default)s)")
    ap.add_argument("--augment", action="store_true", help="random flips and 90° rotations of image and labels")
    ap.add_argument("--steps_per_epoch", type=_positive_int, default=None,
                    help="batches per epoch (the training stream repeats); default: one pass over the data")
    ap.add_argument("--max_train_patches", type=_positive_int, default=None,
                    help="train on the first N patches only (quick runs)")
    ap.add_argument("--max_val_patches", type=_positive_int, default=None,
                    help="validate on the first N patches only (quick runs)")
    ap.add_argument("--width", type=_positive_int, default=DEFAULTS["width"],
                    help="filters of the first level, doubled per level; 24 gives ~1.09 M parameters with 14 channels "
                         "(default: %(default)s)")
    ap.add_argument("--depth", type=int, default=DEFAULTS["depth"], choices=[1, 2, 3],
                    help="poolings (120 -> 60 -> 30 -> 15) (default: %(default)s)")
    ap.add_argument("--task", default=DEFAULTS["task"], choices=["seg", "both"],
                    help="seg: per-pixel classes; both: plus a multi-label head (default: %(default)s)")
    ap.add_argument("--class_weights", nargs="?", const="inv_sqrt", default=None,
                    choices=["inv_sqrt", "median_freq"],
                    help="weight the pixel loss by class frequency of the train split (bare flag: inv_sqrt)")
    ap.add_argument("--resume", action="store_true",
                    help="continue from <save>.last.keras at the epoch it reached")
    ap.add_argument("--mixed_precision", action="store_true", help="mixed_float16 policy (GPUs)")
    ap.add_argument("--strategy", default=DEFAULTS["strategy"], choices=["default", "mirrored"],
                    help="mirrored: tf.distribute.MirroredStrategy over all local GPUs")
    ap.add_argument("--seed", type=int, default=DEFAULTS["seed"], help="random seed (default: %(default)s)")
    ap.add_argument("--deterministic", action="store_true",
                    help="bit-reproducible training: TensorFlow's deterministic kernels (somewhat slower; "
                         "stays on for the rest of the process)")
    ap.add_argument("--val_split", default=DEFAULTS["val_split"],
                    help="split validated after each epoch (default: %(default)s)")
    ap.add_argument("--shuffle_buffer", type=int, default=DEFAULTS["shuffle_buffer"],
                    help="records in the shuffle buffer (default: %(default)s)")
    ap.add_argument("--no_tensorboard", action="store_true", help="do not write TensorBoard logs")
    add_storage_flags(ap)
    return ap


def _configure_storage(args) -> None:
    from transforms import storage

    storage.configure(getattr(args, "s3_endpoint_url", None), getattr(args, "anon", False),
                      getattr(args, "gcs_endpoint_url", None))


def train_main(args: argparse.Namespace) -> int:
    """Run ``benbeam train`` from parsed flags; returns the exit code."""
    from schemas.manifest import ManifestError

    _configure_storage(args)
    try:
        metrics = train(data=args.data, save=args.save, epochs=args.epochs, batch=args.batch, lr=args.lr,
                        modalities=args.modalities, augment=args.augment, steps_per_epoch=args.steps_per_epoch,
                        max_train_patches=args.max_train_patches, max_val_patches=args.max_val_patches,
                        width=args.width, depth=args.depth, task=args.task, class_weights=args.class_weights,
                        resume=args.resume, mixed_precision=args.mixed_precision, strategy=args.strategy,
                        seed=args.seed, val_split=args.val_split, shuffle_buffer=args.shuffle_buffer,
                        tensorboard=not args.no_tensorboard, deterministic=args.deterministic)
    except (ManifestError, ValueError, FileNotFoundError) as e:
        print(f"benbeam train: error: {e}", file=sys.stderr)
        return 2
    best = metrics.get("best_val_miou")
    print(f"model: {metrics['model']} (epoch {metrics.get('best_epoch')}"
          + (f", val mIoU {best:.4f})" if best is not None else ")"))
    return 0


def train_cli(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="benbeam train", description="Train the U-Net on a converted dataset.")
    add_train_args(ap)
    return train_main(ap.parse_args(argv))


def evaluate_cli(argv: list[str] | None = None) -> int:
    from trainer.evaluate import evaluate_cli as ev

    return ev(argv)
