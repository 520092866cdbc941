"""``benbeam train`` on the command line: its flags, the ``TrainConfig`` they make, and the exit codes."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from bigearthnet_beam.trainer.config import TrainConfig
from bigearthnet_beam.trainer.tfenv import quiet_tensorflow
from bigearthnet_beam.trainer.train import train
from bigearthnet_beam.transforms import flagtypes, outdir
from bigearthnet_beam.transforms.cli_args import add_storage_args, positive_int, storage_from_args


def add_train_args(ap: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Register the ``benbeam train`` flags (the seed's --data --epochs --batch --lr --save kept)."""
    d = TrainConfig(data="")
    ap.add_argument("--data", required=True, help="converted dataset: folder or URL holding dataset.json")
    ap.add_argument(
        "--epochs",
        type=positive_int,
        default=d.epochs,
        help="total epochs (a resumed run continues up to this) (default: %(default)s)",
    )
    ap.add_argument("--batch", type=positive_int, default=d.batch, help="batch size (default: %(default)s)")
    ap.add_argument(
        "--lr", type=flagtypes.learning_rate, default=d.lr, help="Adam learning rate (default: %(default)s)"
    )
    ap.add_argument(
        "--save",
        type=flagtypes.output,
        default=d.save,
        help="model output path (.keras); logs, history and checkpoints go beside it (default: %(default)s)",
    )
    ap.add_argument(
        "--modalities",
        default=d.modalities,
        choices=["s2,s1", "s2", "s1", "s1,s2"],
        metavar="{s2,s1 | s2 | s1 | s1,s2}",
        help="input channels: s2 = 12 bands, s1 = VV,VH, both = 14 (default: %(default)s)",
    )
    ap.add_argument("--augment", action="store_true", help="random flips and 90° rotations of image and labels")
    ap.add_argument(
        "--steps_per_epoch",
        type=positive_int,
        default=None,
        help="batches per epoch (the training stream repeats); default: one pass over the data",
    )
    ap.add_argument(
        "--max_train_patches", type=positive_int, default=None, help="train on the first N patches only (quick runs)"
    )
    ap.add_argument(
        "--max_val_patches", type=positive_int, default=None, help="validate on the first N patches only (quick runs)"
    )
    ap.add_argument(
        "--width",
        type=positive_int,
        default=d.width,
        help="filters of the first level, doubled per level; 24 gives ~1.09 M parameters with 14 channels "
        "(default: %(default)s)",
    )
    ap.add_argument(
        "--depth",
        type=flagtypes.positive_int,
        default=d.depth,
        choices=[1, 2, 3],
        help="poolings (120 -> 60 -> 30 -> 15) (default: %(default)s)",
    )
    ap.add_argument(
        "--task",
        default=d.task,
        choices=["seg", "both"],
        help="seg: per-pixel classes; both: plus a multi-label head (default: %(default)s)",
    )
    ap.add_argument(
        "--class_weights",
        nargs="?",
        const="inv_sqrt",
        default=None,
        choices=["inv_sqrt", "median_freq"],
        help="weight the pixel loss by class frequency of the train split (bare flag: inv_sqrt)",
    )
    ap.add_argument("--resume", action="store_true", help="continue from <save>.last.keras at the epoch it reached")
    ap.add_argument("--mixed_precision", action="store_true", help="mixed_float16 policy (GPUs)")
    ap.add_argument(
        "--strategy",
        default=d.strategy,
        choices=["default", "mirrored"],
        help="mirrored: tf.distribute.MirroredStrategy over all local GPUs",
    )
    ap.add_argument("--seed", type=flagtypes.seed, default=d.seed, help="random seed (default: %(default)s)")
    ap.add_argument(
        "--deterministic",
        action="store_true",
        help="bit-reproducible training: TensorFlow's deterministic kernels (somewhat slower; "
        "stays on for the rest of the process)",
    )
    ap.add_argument("--val_split", default=d.val_split, help="split validated after each epoch (default: %(default)s)")
    ap.add_argument(
        "--shuffle_buffer",
        type=flagtypes.positive_int,
        default=d.shuffle_buffer,
        help="records in the shuffle buffer (default: %(default)s)",
    )
    ap.add_argument("--no_tensorboard", action="store_true", help="do not write TensorBoard logs")
    ap.add_argument(
        "--export",
        type=flagtypes.output,
        default=None,
        metavar="DIR",
        help="also write the best model as a TensorFlow SavedModel serving on raw bands (as `benbeam export`)",
    )
    add_storage_args(ap)
    return ap


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The ``TrainConfig`` of parsed ``benbeam train`` flags."""
    names = {f.name for f in dataclasses.fields(TrainConfig)} - {"tensorboard", "verbose", "storage"}
    return TrainConfig(
        **{n: getattr(args, n) for n in names},
        tensorboard=not args.no_tensorboard,
        storage=storage_from_args(args),
    )


def train_main(args: argparse.Namespace) -> int:
    """Run ``benbeam train`` from parsed flags; returns the exit code."""
    from bigearthnet_beam.schemas.manifest import ManifestError
    from bigearthnet_beam.trainer.data import ShardError

    cfg = config_from_args(args)  # the storage endpoint is probed here: nothing answering is exit 3
    try:
        metrics = train(cfg)
    except (ManifestError, ValueError, FileNotFoundError) as e:
        print(f"benbeam train: error: {e}", file=sys.stderr)
        return 2
    except outdir.OutputBusy as e:
        print(f"benbeam train: error: {e}", file=sys.stderr)
        return 3
    except ShardError as e:
        print(f"benbeam train: error: {e}", file=sys.stderr)
        return 1
    best = metrics.get("best_val_miou")
    print(
        f"model: {metrics['model']} (epoch {metrics.get('best_epoch')}"
        + (f", val mIoU {best:.4f})" if best is not None else ")")
    )
    if getattr(args, "export", None):
        from bigearthnet_beam.trainer.export import export_model

        print(f"exported: {export_model(metrics['model'], args.export, cfg.storage)}")
    return 0


def train_cli(argv: list[str] | None = None) -> int:
    """``benbeam train ARGV``; returns the exit code."""
    ap = flagtypes.Parser(
        prog="benbeam train", allow_abbrev=False, description="Train the U-Net on a converted dataset."
    )
    add_train_args(ap)
    args = ap.parse_args(argv)
    quiet_tensorflow()
    return train_main(args)
