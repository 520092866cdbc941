"""``benbeam evaluate``: score a saved model on one split of a converted dataset.

Writes to ``--out``: ``metrics.json`` (per-class IoU / precision / recall, mIoU, pixel
accuracy, and for a model with the multi-label head micro / macro F1 and mAP),
``confusion_matrix.json`` and ``confusion_matrix.png``. The maths is in
``trainer.metrics`` (numpy); this module only runs the model and accumulates.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time

import numpy as np

from bigearthnet_beam.trainer.run_files import write_json
from bigearthnet_beam.trainer.tfenv import quiet_tensorflow
from bigearthnet_beam.transforms import flagtypes
from bigearthnet_beam.transforms.cli_args import add_storage_args, storage_from_args
from bigearthnet_beam.transforms.storage import Storage, is_remote, join

LOG = logging.getLogger("benbeam.evaluate")


def check_compatible(info: dict, ds) -> list[str]:
    """Refuse a dataset the model cannot read; return warnings for what may skew results."""
    m = ds.manifest
    have = [c for names in m["bands"].values() for c in names]
    missing = [c for c in info["channels"] if c not in have]
    if missing:
        raise ValueError(f"the model needs channels {missing} that the dataset at {ds.root} lacks")
    if list(info["classes"]) != list(m["classes"]):
        raise ValueError(
            "the model's class table differs from the dataset's; evaluate with a model trained on "
            "this class nomenclature"
        )
    if int(info["ignore_index"]) != int(m["ignore_index"]):
        raise ValueError(f"ignore_index differs: model {info['ignore_index']}, dataset {m['ignore_index']}")
    warnings = []
    if not _stats_equal(info.get("statistics"), m.get("statistics"), info["channels"]):
        warnings.append(
            "the dataset was normalised with statistics other than the model's training data: "
            "scores may be meaningless; convert it with `benbeam convert --stats <training "
            "dataset>/stats.json`"
        )
    return warnings


def _stats_equal(a, b, channels) -> bool:
    """Same normalisation for the model's channels (the other bands do not matter)."""
    if not isinstance(a, dict) or not isinstance(b, dict):
        return a == b
    ba, bb = a.get("bands"), b.get("bands")
    if isinstance(ba, dict) and isinstance(bb, dict):
        keys = ("clip",)
        return all(ba.get(c) == bb.get(c) for c in channels) and all(a.get(k) == b.get(k) for k in keys)
    return a == b


def evaluate(
    *,
    model: str,
    data: str,
    split: str = "test",
    out: str,
    batch: int = 32,
    max_patches: int | None = None,
    threshold: float = 0.5,
    plot: bool = True,
    storage: Storage | None = None,
) -> dict:
    """Evaluate ``model`` on ``split`` of ``data`` (both read, the metrics written, under
    ``storage``: default ``Storage()``); writes and returns the metrics dict."""
    import tensorflow as tf

    from bigearthnet_beam.schemas.manifest import check_split
    from bigearthnet_beam.trainer import metrics
    from bigearthnet_beam.trainer.data import make_dataset, open_dataset, shard_errors
    from bigearthnet_beam.trainer.model import MULTI, SEG, load_model

    split = check_split(split)
    if batch < 1:
        raise ValueError(f"--batch must be at least 1, got {batch}")
    storage = storage if storage is not None else Storage()
    ds = open_dataset(data, storage)
    keras_model, info = load_model(model, st=storage)
    warnings = check_compatible(info, ds)
    for w in warnings:
        LOG.warning("%s", w)
    multi = info.get("task") == "both"
    stream = make_dataset(
        ds, split, batch_size=batch, modalities=info["modalities"], max_patches=max_patches, with_multi_hot=multi
    )

    @tf.function(reduce_retracing=True)
    def step(x):
        y = keras_model(x, training=False)
        cls = tf.cast(tf.argmax(y[SEG], axis=-1), tf.uint8)
        return (cls, y[MULTI]) if multi else (cls, tf.zeros((tf.shape(x)[0], 0)))

    num_classes = len(info["classes"])
    acc = metrics.ConfusionAccumulator(num_classes, int(info["ignore_index"]))
    truths, scores = [], []
    n = 0
    t0 = time.perf_counter()
    with shard_errors(ds, [split]):  # a corrupt shard: ShardError naming it
        for x, targets in stream:
            cls, sc = step(x)
            acc.add(targets[SEG].numpy(), cls.numpy())
            if multi:
                truths.append(targets[MULTI].numpy())
                scores.append(sc.numpy())
            n += int(x.shape[0])
    wall = time.perf_counter() - t0
    if n == 0:
        raise ValueError(f"split {split!r} of {data} yielded no patches")

    report = metrics.segmentation_report(acc.matrix, info["classes"])
    result = {
        "model": str(model),
        "data": str(data),
        "split": split,
        "patches": n,
        "patches_per_s": n / wall if wall > 0 else None,
        "channels": info["channels"],
        "task": info.get("task", "seg"),
        "miou": report["miou"],
        "pixel_accuracy": report["pixel_accuracy"],
        "labelled_pixels": report["labelled_pixels"],
        "per_class": report["per_class"],
        "warnings": warnings,
    }
    if multi:
        result["multilabel"] = metrics.multilabel_report(
            np.concatenate(truths), np.concatenate(scores), info["classes"], threshold
        )
    local_out = tempfile.mkdtemp(prefix="benbeam-eval-") if is_remote(out) else out
    try:
        os.makedirs(local_out, exist_ok=True)
        write_json(os.path.join(local_out, "metrics.json"), result)
        write_json(
            os.path.join(local_out, "confusion_matrix.json"),
            {
                "classes": info["classes"],
                "rows": "truth",
                "columns": "prediction",
                "ignore_index": info["ignore_index"],
                "matrix": report["confusion_matrix"],
            },
        )
        if plot:
            plot_confusion_matrix(
                acc.matrix,
                info["classes"],
                os.path.join(local_out, "confusion_matrix.png"),
                title=f"{os.path.basename(str(model))} on {split}: mIoU {_fmt(result['miou'])}, "
                f"pixel acc. {_fmt(result['pixel_accuracy'])}",
            )
        if local_out != out:
            storage.upload_tree(local_out, out)
    finally:
        if local_out != out:
            shutil.rmtree(local_out, ignore_errors=True)
    return result


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def plot_confusion_matrix(cm, class_names, path: str, title: str = "") -> None:
    """Row-normalised confusion matrix (share of each true class) as a PNG, counts in the JSON."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    cm = np.asarray(cm, dtype=np.float64)
    rows = cm.sum(1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    n = cm.shape[0]
    labels = [f"{i} {name[:28]}{'…' if len(name) > 28 else ''}" for i, name in enumerate(class_names)]
    fig, ax = plt.subplots(figsize=(12, 10.5), dpi=100)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), [str(i) for i in range(n)])
    ax.set_yticks(range(n), labels, fontsize=8)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    for i in range(n):
        for j in range(n):
            if norm[i, j] >= 0.005:
                ax.text(
                    j,
                    i,
                    f"{norm[i, j]:.2f}"[1:] if norm[i, j] < 1 else "1",
                    ha="center",
                    va="center",
                    fontsize=6,
                    color="white" if norm[i, j] > 0.5 else "black",
                )
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class's pixels")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    tmp = f"{path}.tmp-{os.getpid()}.png"
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)


# --------------------------------------------------------------------------- command line


def add_evaluate_args(ap: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Register the ``benbeam evaluate`` flags."""
    ap.add_argument(
        "--model",
        required=True,
        help="a .keras model written by `benbeam train`, or a reBEN authors' classifier (Hugging Face id "
        "ORG/NAME[@revision] or its folder): scored with the scene-level multi-label metrics",
    )
    ap.add_argument("--data", required=True, help="converted dataset: folder or URL holding dataset.json")
    ap.add_argument("--split", default="test", help="split to score (default: %(default)s)")
    ap.add_argument(
        "--out", type=flagtypes.output, required=True, help="folder for metrics.json and the confusion matrix"
    )
    ap.add_argument("--batch", type=flagtypes.positive_int, default=32, help="batch size (default: %(default)s)")
    ap.add_argument("--max_patches", type=flagtypes.positive_int, default=None, help="score the first N patches only")
    ap.add_argument(
        "--threshold",
        type=flagtypes.unit_fraction,
        default=0.5,
        help="score threshold of the multi-label head for F1 (default: %(default)s)",
    )
    ap.add_argument("--device", default="cpu", help="an authors' classifier: torch device (default: %(default)s)")
    add_storage_args(ap)
    return ap


def evaluate_main(args: argparse.Namespace) -> int:
    """Run ``benbeam evaluate`` from parsed flags; returns the exit code."""
    from bigearthnet_beam.schemas.manifest import ManifestError
    from bigearthnet_beam.trainer.data import ShardError

    st = storage_from_args(args)
    from bigearthnet_beam.trainer.pretrained.model import is_pretrained_ref

    if is_pretrained_ref(args.model):  # an authors' scene classifier (PyTorch): trainer.pretrained.evaluate
        from bigearthnet_beam.trainer.pretrained.evaluate import run

        return run(args, st)
    if args.device != "cpu":
        print("benbeam evaluate: error: --device goes with an authors' classifier (--model ORG/NAME)", file=sys.stderr)
        return 2
    try:
        r = evaluate(
            storage=st,
            model=args.model,
            data=args.data,
            split=args.split,
            out=args.out,
            batch=args.batch,
            max_patches=args.max_patches,
            threshold=args.threshold,
        )
    except (ManifestError, ValueError, FileNotFoundError) as e:
        print(f"benbeam evaluate: error: {e}", file=sys.stderr)
        return 2
    except ShardError as e:  # a data failure, not a usage error
        print(f"benbeam evaluate: error: {e}", file=sys.stderr)
        return 1
    line = f"{r['split']}: {r['patches']} patches, mIoU {_fmt(r['miou'])}, pixel accuracy {_fmt(r['pixel_accuracy'])}"
    if "multilabel" in r:
        ml = r["multilabel"]
        line += f", micro F1 {_fmt(ml['micro_f1'])}, macro F1 {_fmt(ml['macro_f1'])}, mAP {_fmt(ml['map_macro'])}"
    print(line)
    print(f"wrote {join(args.out, 'metrics.json')}")
    return 0


def evaluate_cli(argv: list[str] | None = None) -> int:
    """``benbeam evaluate ARGV``; returns the exit code."""
    ap = flagtypes.Parser(
        prog="benbeam evaluate", allow_abbrev=False, description="Score a trained model on a dataset split."
    )
    add_evaluate_args(ap)
    args = ap.parse_args(argv)
    from bigearthnet_beam.trainer.pretrained.model import is_pretrained_ref

    if not is_pretrained_ref(args.model):  # an authors' model runs on PyTorch alone
        quiet_tensorflow()
    return evaluate_main(args)
