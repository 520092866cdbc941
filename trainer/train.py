"""``benbeam train``: fit the U-Net on a converted dataset.

``train(config)`` is the argparse-free entry point (a ``trainer.config.TrainConfig``; returns
the final metrics dict); ``add_train_args`` / ``config_from_args`` / ``train_main`` wire it to a
command line, and ``train_cli(argv)`` is what ``benbeam train`` dispatches to.

Everything a run leaves lies beside ``--save`` (``runs/unet.keras`` below; ``trainer.run_files``):

    runs/unet.keras            best model by validation mIoU (the last one without validation)
    runs/unet.keras.json       its inference contract (channels, statistics, classes), also inside the model
    runs/unet.last.keras       the model after the last finished epoch, optimizer included (for --resume)
    runs/unet.state.json       epoch reached, best mIoU so far, the run's settings
    runs/unet.history.csv      one row per epoch (losses, mIoU, pixel accuracy, patches/s)
    runs/unet.tb/              TensorBoard logs
    runs/unet.metrics.json     final metrics of the run

The folder of ``--save`` follows the output-folder rules of ``transforms.outdir``: new, empty,
or an earlier run of ``benbeam train`` (its marker), one run at a time (its lock).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import sys
import time

from bigearthnet_beam.schemas import __version__
from bigearthnet_beam.trainer.config import TrainConfig, canonical_modalities
from bigearthnet_beam.trainer.run_files import RunFiles, finite_or_none, write_json
from bigearthnet_beam.transforms import outdir, storage

LOG = logging.getLogger("benbeam.train")
COMMAND = "benbeam train"


def build_info(ds, *, modalities: str, task: str, width: int, depth: int, class_weights) -> dict:
    """The inference contract stored in the model (see ``trainer.model.load_model``)."""
    from bigearthnet_beam.schemas import classes
    from bigearthnet_beam.schemas.bands import PATCH_SIZE, channels_for
    from bigearthnet_beam.trainer.model import INFO_FORMAT, INFO_VERSION

    m = ds.manifest
    chans = list(channels_for(modalities))
    return {
        "format": INFO_FORMAT,
        "version": INFO_VERSION,
        "package_version": __version__,
        "modalities": canonical_modalities(modalities),
        "channels": chans,
        "input_shape": [PATCH_SIZE, PATCH_SIZE, len(chans)],
        "task": task,
        "width": int(width),
        "depth": int(depth),
        "classes": list(m["classes"]),
        "class_colors": [list(c) for c in (m.get("class_colors") or classes.class_colors())],
        "ignore_index": int(m["ignore_index"]),
        "statistics": m["statistics"],
        "image_dtype": m["image_dtype"],
        # how convert resampled the 20 m / 60 m bands: predict resamples tiles the same way
        "resampling": (m.get("options") or {}).get("resampling", "bilinear"),
        "class_weights": class_weights,
        "training_data": {
            "url": str(ds.root),
            "manifest_sha256": ds.manifest_sha256,
            "package_version": m.get("package_version"),
            "created_by": m.get("created_by"),
        },
    }


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

    from bigearthnet_beam.trainer.augment import unwrap
    from bigearthnet_beam.trainer.model import save_model

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

    class History(keras.callbacks.Callback):
        """One row per epoch in ``path`` (``epoch`` first, then the log keys sorted, as Keras's
        CSVLogger). A resumed run keeps the rows of the epochs before ``start`` (a row of an
        epoch whose checkpoint was not written is dropped); a column that appears only now widens
        the header and earlier rows get an empty cell, so every row matches the header."""

        def __init__(self, path: str, start: int):
            super().__init__()
            self.path, self.start = path, start

        def on_train_begin(self, logs=None):
            self.header, self.rows = ["epoch"], []
            if self.start > 0 and os.path.exists(self.path):
                with open(self.path, newline="", encoding="utf-8") as fh:
                    reader = csv.DictReader(fh)
                    self.header = list(reader.fieldnames or ["epoch"])
                    self.rows = [
                        {k: v for k, v in r.items() if k is not None}
                        for r in reader
                        if str(r.get("epoch", "")).isdigit() and int(r["epoch"]) < self.start
                    ]

        def on_epoch_end(self, epoch, logs=None):
            row = {"epoch": epoch, **dict(logs or {})}
            self.header += [k for k in sorted(row) if k not in self.header]
            self.rows.append(row)
            tmp = f"{self.path}.tmp-{os.getpid()}"
            with open(tmp, "w", newline="", encoding="utf-8") as fh:
                writer = csv.DictWriter(fh, fieldnames=self.header, restval="")
                writer.writeheader()
                writer.writerows(self.rows)
            os.replace(tmp, self.path)

    class Checkpoints(keras.callbacks.Callback):
        """Each epoch: the last model + state (for --resume); the best by val mIoU to --save."""

        def on_epoch_end(self, epoch, logs=None):
            logs = dict(logs or {})
            score = seg_metric(logs, "miou", val=True) if has_val else None
            improved = score is not None and (state["best_val_miou"] is None or score > state["best_val_miou"])
            net = unwrap(self.model)  # the plain U-Net, never the training-time augmentation wrapper
            if improved or not has_val:
                save_model(net, paths["model"])
                state["best_epoch"] = epoch + 1
                # without validation --save gets the last model, which has no score
                state["best_val_miou"] = float(score) if improved else None
            save_model(net, paths["last"], portable=False)  # optimizer, loss and metrics: to resume
            state["epoch"] = epoch + 1
            state["last_logs"] = {k: finite_or_none(v) for k, v in logs.items()}
            write_json(paths["state"], state)
            # the checkpoint before the state that points at it
            files.push(*(("model", "info") if (improved or not has_val) else ()), "last", "history", "state")

    cbs = [Throughput(), History(paths["history"], int(state["epoch"]) if resume else 0), Checkpoints()]
    if tensorboard:
        if tensorboard_available():
            cbs.append(keras.callbacks.TensorBoard(paths["tensorboard"], write_graph=False, profile_batch=0))
        else:
            LOG.warning(
                "TensorBoard logs skipped: the `tensorboard` package is not installed "
                "(pip install tensorboard); history CSV and metrics JSON are written as usual"
            )
    return cbs


def tensorboard_available() -> bool:
    """``tf.summary`` writes only with the ``tensorboard`` package installed."""
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None


def train(config: TrainConfig, *, extra_callbacks=()) -> dict:
    """Train (or, with ``config.resume``, continue training) the U-Net; returns the final metrics.

    Raises ``ManifestError`` / ``ValueError`` with the fix on bad input (checked before
    anything is written; ``transforms.outdir.OutputRefused`` for a --save folder that holds
    other files), ``OutputBusy`` while another run writes there, ``trainer.data.ShardError``
    for a corrupt shard. ``extra_callbacks``: Keras callbacks added to the run's own.
    """
    from bigearthnet_beam.trainer.data import open_dataset

    cfg = config.checked()  # everything checked before touching the disk
    ds = open_dataset(cfg.data)
    folder = storage.parent(cfg.save)
    try:  # new, empty or an earlier run's folder; one run at a time
        lock = outdir.claim(folder, COMMAND)
    except (outdir.OutputRefused, outdir.OutputBusy) as e:  # outdir names the folder "--out": here it is --save's
        text = str(e)
        raise type(e)("the --save folder" + text[len("--out") :] if text.startswith("--out ") else text) from None
    try:
        return _train(cfg, ds, folder, extra_callbacks)
    finally:
        lock.release()


def _train(cfg: TrainConfig, ds, folder: str, extra_callbacks) -> dict:
    import keras
    import tensorflow as tf

    from bigearthnet_beam.schemas.bands import channels_for
    from bigearthnet_beam.trainer.augment import augmented
    from bigearthnet_beam.trainer.data import make_dataset, num_patches, shard_errors
    from bigearthnet_beam.trainer.model import build_unet, class_weights_from_counts, compile_model, load_model

    channels = channels_for(cfg.modalities)
    files = RunFiles(cfg.save)
    paths = files.paths
    if not ds.records("train"):
        raise ValueError(f"split 'train' of {cfg.data} holds no patches")
    has_val = cfg.val_split in ds.manifest["splits"] and ds.records(cfg.val_split) > 0
    if not has_val:
        LOG.warning(
            "no %r patches in %s: training without validation; --save gets the last epoch's model",
            cfg.val_split,
            cfg.data,
        )

    state = None
    if cfg.resume:
        state = _resume_state(files, cfg, ds)
        if int(state["epoch"]) >= cfg.epochs:
            LOG.info(
                "--resume: %s already reached epoch %d of %d; nothing to train",
                paths["last"],
                state["epoch"],
                cfg.epochs,
            )
            out = _load_metrics(paths)
            files.cleanup()
            return out

    weights = None
    if cfg.class_weights:
        weights = class_weights_from_counts(ds.split_info("train")["class_pixel_counts"], cfg.class_weights)

    outdir.mark(folder, COMMAND)  # every check passed: the folder is this command's from now on
    keras.utils.set_random_seed(int(cfg.seed))
    if cfg.deterministic:  # same data, seed and flags -> the same weights (TF picks deterministic kernels)
        tf.config.experimental.enable_op_determinism()
    prev_policy = keras.mixed_precision.global_policy().name
    if cfg.mixed_precision:
        if not tf.config.list_physical_devices("GPU"):
            LOG.warning("--mixed_precision without a GPU: float16 on CPU is slow; it is meant for GPUs")
        keras.mixed_precision.set_global_policy("mixed_float16")
    dist = tf.distribute.MirroredStrategy() if cfg.strategy == "mirrored" else tf.distribute.get_strategy()
    try:
        with dist.scope():
            if state is not None:
                model, info = load_model(paths["last"], compile=True)
                if list(info["channels"]) != list(channels):
                    raise ValueError(f"--resume: checkpoint channels {info['channels']} differ from {list(channels)}")
                initial_epoch = int(state["epoch"])
                LOG.info(
                    "resuming %s at epoch %d (optimizer state restored; --lr, --width and --class_weights "
                    "come from the checkpoint)",
                    paths["last"],
                    initial_epoch + 1,
                )
            else:
                info = build_info(
                    ds,
                    modalities=cfg.modalities,
                    task=cfg.task,
                    width=cfg.width,
                    depth=cfg.depth,
                    class_weights=weights,
                )
                model = build_unet(len(channels), width=cfg.width, depth=cfg.depth, task=cfg.task, info=info)
                compile_model(model, lr=cfg.lr, class_weights=weights, task=cfg.task)
                initial_epoch = 0
                state = {
                    "epoch": 0,
                    "best_val_miou": None,
                    "best_epoch": None,
                    "channels": list(channels),
                    "params": int(model.count_params()),
                    **run_identity(cfg, ds),
                }
            # --augment: a random flip / rotation per batch inside the fitted model (trainer.augment)
            fit_model = augmented(model, seed=cfg.seed) if cfg.augment else model
        state["settings"] = cfg.settings()
        multi = info["task"] == "both"
        train_ds = make_dataset(
            ds,
            "train",
            batch_size=cfg.batch,
            modalities=cfg.modalities,
            training=True,
            shuffle_buffer=cfg.shuffle_buffer,
            repeat=cfg.steps_per_epoch is not None,
            max_patches=cfg.max_train_patches,
            with_multi_hot=multi,
            seed=cfg.seed,
        )
        val_ds = (
            make_dataset(
                ds,
                cfg.val_split,
                batch_size=cfg.batch,
                modalities=cfg.modalities,
                max_patches=cfg.max_val_patches,
                with_multi_hot=multi,
            )
            if has_val
            else None
        )
        os.makedirs(os.path.dirname(os.path.abspath(paths["model"])), exist_ok=True)
        cbs = _callbacks(
            files, state=state, batch=cfg.batch, has_val=has_val, tensorboard=cfg.tensorboard, resume=initial_epoch > 0
        ) + list(extra_callbacks)
        n_train = num_patches(ds, "train", cfg.max_train_patches)
        LOG.info(
            "training on %d patches (%s, %d channels), %d parameters, epochs %d..%d",
            n_train,
            cfg.modalities,
            len(channels),
            model.count_params(),
            initial_epoch + 1,
            cfg.epochs,
        )
        t0 = time.perf_counter()
        verbose = cfg.verbose
        if verbose == "auto":  # one line per epoch when not on a terminal (logs, CI)
            verbose = 1 if sys.stdout.isatty() else 2
        with shard_errors(ds, ["train"] + ([cfg.val_split] if has_val else [])):  # names a corrupt shard
            hist = fit_model.fit(
                train_ds,
                validation_data=val_ds,
                epochs=cfg.epochs,
                initial_epoch=initial_epoch,
                steps_per_epoch=cfg.steps_per_epoch,
                callbacks=cbs,
                verbose=verbose,
                shuffle=False,  # make_dataset shuffles (seeded); Keras would warn that it ignores shuffle=True
            )
        wall = time.perf_counter() - t0
    finally:
        if cfg.mixed_precision:
            keras.mixed_precision.set_global_policy(prev_policy)

    history = {k: [finite_or_none(v) for v in vals] for k, vals in hist.history.items()}
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
        "modalities": cfg.modalities,
        "task": info["task"],
        "data": str(cfg.data),
        "class_weights": info.get("class_weights"),
        "settings": state["settings"],
    }
    write_json(paths["metrics"], metrics)
    files.push("history", "metrics", "tensorboard")
    files.cleanup()
    return metrics


# What a resumed run must share with the saved one (state key, flag): the data, the inputs, the
# architecture, the loss and what picks the best model. The rest (--epochs, --batch …) may change.
RESUME_KEYS = (
    ("data", "--data"),
    ("data_manifest_sha256", "--data: its dataset.json changed (sha256)"),
    ("modalities", "--modalities"),
    ("task", "--task"),
    ("width", "--width"),
    ("depth", "--depth"),
    ("class_weights", "--class_weights"),
    ("val_split", "--val_split"),
    ("max_val_patches", "--max_val_patches"),
)


def data_url(url: str) -> str:
    """``--data`` as a run records it: an absolute, symlink-free path, or the URL without a trailing /."""
    url = str(url)
    return url.rstrip("/") if storage.is_remote(url) else os.path.realpath(url)


def run_identity(cfg: TrainConfig, ds) -> dict:
    """The values of ``RESUME_KEYS`` for this config and dataset (recorded in the state file)."""
    return {
        "data": data_url(cfg.data),
        "data_manifest_sha256": ds.manifest_sha256,
        "modalities": cfg.modalities,
        "task": cfg.task,
        "width": int(cfg.width),
        "depth": int(cfg.depth),
        "class_weights": cfg.class_weights,
        "val_split": cfg.val_split,
        "max_val_patches": cfg.max_val_patches,
    }


def resume_differences(state: dict, cfg: TrainConfig, ds) -> list[str]:
    """How ``cfg`` differs from the saved run's state, one entry per flag (a key the state does
    not record — a run from an older version — is not compared)."""
    now = run_identity(cfg, ds)
    saved = {**{k: v for k, v in (state.get("settings") or {}).items() if k in now}, **state}
    if "data" in saved:
        saved["data"] = data_url(saved["data"])
    out = []
    for key, flag in RESUME_KEYS:
        if key in saved and saved[key] != now[key]:
            out.append(f"{flag}: saved run {saved[key]}, now {now[key]}")
    return out


def _resume_state(files: RunFiles, cfg: TrainConfig, ds) -> dict:
    """The state of the run to continue (fetched from the bucket for a remote --save); ValueError
    when there is none, or listing every difference when it was trained on other data or with
    another architecture (``RESUME_KEYS``)."""
    paths = files.paths
    files.pull("state", "last", "history", "model", "info")
    if not (os.path.exists(paths["state"]) and os.path.exists(paths["last"])):
        raise ValueError(
            f"--resume: no checkpoint to resume from ({files.urls['last']} and {files.urls['state']} "
            "are written after each epoch); drop --resume to start a new run"
        )
    with open(paths["state"], encoding="utf-8") as fh:
        state = json.load(fh)
    diffs = resume_differences(state, cfg, ds)
    if diffs:
        raise ValueError(
            f"--resume: {files.urls['last']} was trained with other settings — {'; '.join(diffs)}; "
            "pass the saved run's values, or drop --resume and choose another --save to start a new run"
        )
    return state


def _load_metrics(paths: dict) -> dict:
    if os.path.exists(paths["metrics"]):
        with open(paths["metrics"], encoding="utf-8") as fh:
            return json.load(fh)
    with open(paths["state"], encoding="utf-8") as fh:
        state = json.load(fh)
    return {
        "model": paths["model"],
        "epochs_completed": state["epoch"],
        "best_epoch": state["best_epoch"],
        "best_val_miou": state["best_val_miou"],
        "final": state.get("last_logs", {}),
    }
