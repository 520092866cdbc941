"""``benbeam export`` / ``benbeam train --export DIR``: the model as a TensorFlow SavedModel that
serves on raw bands.

The artefact (Keras' ``model.export``) needs neither this project nor Keras to run
(``tf.saved_model.load(DIR).serve(x)``): its ``serve`` signature takes float32
``[N, 120, 120, C]`` windows in the raw units of the reBEN patches (S2 DN = reflectance ×
10,000 with the baseline offset removed, S1 in dB; channels in the order of ``info.json``)
and applies the training data's normalisation inside the graph — the clip to the
percentiles, minus the mean, over the std, the float16 rounding where the training images
were float16 — before the U-Net. It returns the model's outputs (``seg``: per-pixel softmax;
``multi`` for a ``--task both`` model) and ``class_id``: uint8 ``[N, 120, 120]``, the argmax of
``seg`` as in the class maps of ``benbeam predict``, 255 where every raw band of a pixel is 0 (no
data). The softmax of such pixels means nothing: the predictor sets them to the dataset mean
instead (0 after normalisation). ``DIR/info.json`` is the model's inference contract.

TensorFlow Serving expects ``<model base path>/<name>/<version>/saved_model.pb``: export into a
numbered folder, e.g. ``benbeam export --model m.keras --out models/benbeam/1``
(``docs/gis-outputs.md``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

from bigearthnet_beam.transforms import flagtypes, storage

CLASS_ID = "class_id"  # serving output: uint8 [N, H, W] class index, NO_DATA_ID where every raw band is 0
NO_DATA_ID = 255


def serving_model(model, info: dict):
    """A Keras model: raw bands → the training normalisation → ``model``'s outputs."""
    import keras
    import numpy as np
    from keras import ops

    from bigearthnet_beam.trainer.model import SEG
    from bigearthnet_beam.transforms.normalize import NormParams

    channels = tuple(info["channels"])
    stats = info["statistics"]
    norm = NormParams.from_stats(stats["bands"], clip=bool(stats["clip"]), channels=channels)
    size = int(info["input_shape"][0])
    raw = keras.Input((size, size, len(channels)), name="raw_bands", dtype="float32")
    x = raw
    if norm.clip:  # as transforms.normalize: maximum with lo, then minimum with hi
        x = ops.minimum(ops.maximum(x, np.asarray(norm.lo)), np.asarray(norm.hi))
    x = (x - np.asarray(norm.offset)) / np.asarray(norm.scale)
    if info.get("image_dtype") == "float16":  # the model saw images stored as float16
        x = ops.cast(ops.cast(x, "float16"), "float32")
    outputs = dict(model(x))
    # the class map as `benbeam predict` writes it: argmax of the softmax, 255 where a pixel has no data
    cls = ops.cast(ops.argmax(outputs[SEG], axis=-1), "uint8")
    no_data = ops.all(ops.equal(raw, 0.0), axis=-1)
    outputs[CLASS_ID] = ops.where(no_data, ops.cast(ops.full_like(cls, NO_DATA_ID), "uint8"), cls)
    return keras.Model(raw, outputs, name="benbeam_unet_serving")


def export_model(model_path: str, out_dir: str, st: storage.Storage | None = None) -> str:
    """Write the SavedModel of ``model_path`` (local or a URL) to ``out_dir`` (local or a URL),
    with ``info.json`` beside its files, both under ``st``; returns ``out_dir``."""
    from bigearthnet_beam.trainer.model import load_model

    st = st if st is not None else storage.Storage()
    model, info = load_model(model_path, st=st)
    local = tempfile.mkdtemp(prefix="benbeam-export-") if storage.is_remote(out_dir) else out_dir
    try:
        if os.path.exists(os.path.join(local, "saved_model.pb")):
            shutil.rmtree(local)
        serving_model(model, info).export(local, format="tf_saved_model", verbose=False)
        with open(os.path.join(local, "info.json"), "w", encoding="utf-8") as fh:
            fh.write(json.dumps(info, indent=2, sort_keys=True, allow_nan=False) + "\n")
        if local != out_dir:
            st.upload_tree(local, out_dir)
    finally:
        if local != out_dir:
            shutil.rmtree(local, ignore_errors=True)
    return out_dir


def export_cli(argv: list[str] | None = None) -> int:
    """``benbeam export --model M --out DIR``; returns the exit code."""
    import sys

    from bigearthnet_beam.trainer.tfenv import quiet_tensorflow
    from bigearthnet_beam.transforms.cli_args import add_storage_args, storage_from_args

    ap = flagtypes.Parser(
        prog="benbeam export",
        allow_abbrev=False,
        description="Write a trained model as a TensorFlow SavedModel serving on raw bands.",
    )
    ap.add_argument("--model", required=True, help="a .keras model written by `benbeam train` (path or URL)")
    ap.add_argument(
        "--out", type=flagtypes.output, required=True, help="folder (or URL) for the SavedModel and info.json"
    )
    add_storage_args(ap)
    args = ap.parse_args(argv)
    quiet_tensorflow()
    st = storage_from_args(args)
    try:
        export_model(args.model, args.out, st)
    except (FileNotFoundError, ValueError) as e:
        print(f"benbeam export: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out} (SavedModel, signature 'serve' on raw bands; info.json)")
    return 0
