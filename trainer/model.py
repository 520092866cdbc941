"""The U-Net, its masked loss, its metrics, and saving/loading with the inference contract.

Plain Keras 3 (TensorFlow backend). The model takes normalised 120×120×C patches (C from
``schemas.bands.channels_for``) and returns a per-pixel softmax over the 19 classes
(float32 even under ``mixed_float16``), plus, with ``task="both"``, 19 sigmoids for the
patch's multi-label vector.

What inference needs travels inside the ``.keras`` file: a JSON-able dict (channels,
modalities, the normalisation statistics of the dataset, the class table, the ignore index)
stored as the archive's extra entry ``benbeam_info.json``, which Keras ignores. ``save_model``
also writes it beside the model as ``<model>.json`` for tools that do not load Keras.

Portable: the graph holds only Keras' own layers, and the best model (``save_model``'s
default) is saved without its training configuration (optimizer, the masked loss and the
metrics, which are this project's classes), so ``keras.models.load_model(path)`` works in a
process that has Keras but not this project. The resume checkpoint keeps them
(``portable=False``). Models of earlier versions carried the dict in a pass-through
``ModelInfo`` layer; ``load_model`` still reads them.
"""

from __future__ import annotations

import json
import os
import zipfile

import keras
import numpy as np
from keras import layers, ops

from bigearthnet_beam.schemas import errors
from bigearthnet_beam.schemas.bands import PATCH_SIZE
from bigearthnet_beam.schemas.classes import IGNORE_INDEX, NUM_CLASSES

INFO_FORMAT = "benbeam-unet"
INFO_VERSION = 1
SEG = "seg"  # output name of the per-pixel softmax
MULTI = "multi"  # output name of the multi-label head
TASKS = ("seg", "both")
INFO_ENTRY = "benbeam_info.json"  # the inference contract inside the .keras archive
DEFAULT_WIDTH = 24  # ~1.09 M parameters with 14 channels
DEFAULT_DEPTH = 3  # 120 -> 60 -> 30 -> 15
# Moving statistics of BatchNorm settle within tens of steps (Keras' 0.99 needs hundreds,
# which makes validation after a short first epoch meaningless).
BN_MOMENTUM = 0.9


# --------------------------------------------------------------------------- layers


@keras.saving.register_keras_serializable(package="benbeam")
class ModelInfo(layers.Layer):
    """Identity layer whose config carried the inference contract in models of earlier versions
    (kept so that ``load_model`` reads them; new models have no such layer)."""

    def __init__(self, info: dict | None = None, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        # A round trip through JSON proves the dict serialises and detaches it from the caller.
        self.info = json.loads(json.dumps(info or {}, allow_nan=False))

    def call(self, inputs):
        """Pass the input through unchanged."""
        return inputs

    def compute_output_shape(self, input_shape):
        """The input's shape."""
        return input_shape

    def get_config(self):
        """The layer's config, the inference contract included."""
        config = super().get_config()
        config["info"] = self.info
        return config


def _conv_bn_relu(x, filters: int, name: str, kernel: int = 3):
    x = layers.Conv2D(
        filters, kernel, padding="same", use_bias=False, kernel_initializer="he_normal", name=f"{name}_conv"
    )(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def _block(x, filters: int, name: str):
    x = _conv_bn_relu(x, filters, f"{name}a")
    return _conv_bn_relu(x, filters, f"{name}b")


def check_depth(depth: int, size: int = PATCH_SIZE) -> None:
    """Refuse a depth whose poolings do not divide the patch size."""
    if depth < 1 or size % (2**depth):
        ok = [d for d in range(1, 6) if size % (2**d) == 0]
        raise ValueError(f"depth {depth} does not divide a {size}-pixel patch by 2 at every level; choose one of {ok}")


def build_unet(
    in_channels: int,
    *,
    num_classes: int = NUM_CLASSES,
    width: int = DEFAULT_WIDTH,
    depth: int = DEFAULT_DEPTH,
    task: str = "seg",
    dropout: float = 0.0,
    info: dict | None = None,
    size: int = PATCH_SIZE,
) -> keras.Model:
    """A U-Net: ``depth`` poolings, ``width·2^i`` filters at level i, two 3×3 conv–BN–ReLU per
    level, transposed-conv upsampling and concatenated skips.

    120 halves cleanly three times (120 → 60 → 30 → 15); ``depth`` must keep that exact.
    Outputs a dict: ``{"seg": [B,H,W,classes] softmax}`` plus ``"multi": [B,classes]``
    sigmoids when ``task == "both"``. Final activations are float32 under any policy.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if width < 1:
        raise ValueError(f"width must be a positive integer, got {width}")
    check_depth(depth, size)
    inputs = keras.Input((size, size, in_channels), name="image")
    x = inputs
    skips = []
    for i in range(depth):
        x = _block(x, width * 2**i, f"enc{i}")
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"pool{i}")(x)
    x = _block(x, width * 2**depth, "mid")
    if dropout:
        x = layers.Dropout(dropout, name="mid_dropout")(x)
    bottleneck = x
    for i in reversed(range(depth)):
        f = width * 2**i
        x = layers.Conv2DTranspose(f, 2, strides=2, padding="same", kernel_initializer="he_normal", name=f"up{i}")(x)
        x = layers.Concatenate(name=f"skip{i}")([x, skips[i]])
        x = _block(x, f, f"dec{i}")
    logits = layers.Conv2D(num_classes, 1, name="seg_logits")(x)
    outputs = {SEG: layers.Activation("softmax", dtype="float32", name=SEG)(logits)}
    if task == "both":
        g = layers.GlobalAveragePooling2D(name="multi_pool")(bottleneck)
        g = layers.Dense(num_classes, name="multi_logits")(g)
        outputs[MULTI] = layers.Activation("sigmoid", dtype="float32", name=MULTI)(g)
    model = keras.Model(inputs, outputs, name="benbeam_unet")
    if info is not None:
        attach_info(model, info)
    return model


def attach_info(model: keras.Model, info: dict) -> None:
    """Give ``model`` its inference contract (a JSON-able dict; ``save_model`` stores it)."""
    # A round trip through JSON proves the dict serialises and detaches it from the caller;
    # object.__setattr__ keeps it out of Keras' attribute tracking (it is not model state).
    object.__setattr__(model, "_benbeam_info", json.loads(json.dumps(info, allow_nan=False)))


def unet_param_count(
    in_channels: int,
    *,
    num_classes: int = NUM_CLASSES,
    width: int = DEFAULT_WIDTH,
    depth: int = DEFAULT_DEPTH,
    task: str = "seg",
) -> int:
    """Closed-form parameter count of ``build_unet`` (BatchNorm's 4 per channel included)."""

    def conv_bn(cin, cout):  # 3x3 conv without bias + BN (gamma, beta, mean, var)
        return 9 * cin * cout + 4 * cout

    total, cin = 0, in_channels
    for i in range(depth):
        f = width * 2**i
        total += conv_bn(cin, f) + conv_bn(f, f)
        cin = f
    fm = width * 2**depth
    total += conv_bn(cin, fm) + conv_bn(fm, fm)
    cin = fm
    for i in reversed(range(depth)):
        f = width * 2**i
        total += 4 * cin * f + f  # 2x2 transposed conv with bias
        total += conv_bn(2 * f, f) + conv_bn(f, f)
        cin = f
    total += cin * num_classes + num_classes
    if task == "both":
        total += fm * num_classes + num_classes
    return total


# --------------------------------------------------------------------------- loss


@keras.saving.register_keras_serializable(package="benbeam")
class MaskedSparseCategoricalCrossentropy(keras.losses.Loss):
    """Per-pixel cross-entropy that ignores ``ignore_index`` pixels, optionally class-weighted.

    ``loss = Σ w[y]·(−log p[y]) / Σ w[y]`` over the labelled pixels of the batch (``w`` = 1
    without class weights), so the value does not depend on how many pixels are ignored and
    ignored pixels contribute nothing, whatever the prediction there. A batch with no
    labelled pixel gives 0.
    """

    def __init__(
        self,
        class_weights=None,
        ignore_index: int = IGNORE_INDEX,
        from_logits: bool = False,
        name: str = "masked_sparse_categorical_crossentropy",
        **kwargs,
    ):
        kwargs.pop("reduction", None)
        super().__init__(name=name, reduction="sum_over_batch_size", **kwargs)
        self.class_weights = None if class_weights is None else [float(w) for w in class_weights]
        self.ignore_index = int(ignore_index)
        self.from_logits = bool(from_logits)

    def call(self, y_true, y_pred):
        """The batch's (class-weighted) mean cross-entropy over its labelled pixels."""
        y_pred = ops.cast(y_pred, "float32")
        num_classes = y_pred.shape[-1]
        labels = ops.cast(ops.round(ops.cast(y_true, "float32")), "int32")
        if len(labels.shape) == len(y_pred.shape):  # [..., 1] label maps
            labels = ops.squeeze(labels, -1)
        valid = ops.not_equal(labels, self.ignore_index)
        safe = ops.where(valid, labels, ops.zeros_like(labels))
        onehot = ops.one_hot(safe, num_classes, dtype="float32")
        if self.from_logits:
            logp = ops.log_softmax(y_pred, axis=-1)
        else:
            logp = ops.log(ops.clip(y_pred, 1e-7, 1.0))
        nll = -ops.sum(onehot * logp, axis=-1)
        w = ops.cast(valid, "float32")
        if self.class_weights is not None:
            cw = ops.convert_to_tensor(np.asarray(self.class_weights, dtype=np.float32))
            w = w * ops.take(cw, safe)
        # Keras skips its replica scaling for a scalar loss: scale here as it would.
        loss = ops.divide_no_nan(ops.sum(nll * w), ops.sum(w))
        return _scale_for_replicas(loss)

    def get_config(self):
        """The loss's config (ignore index and class weights)."""
        config = super().get_config()
        config.pop("reduction", None)
        config.update(class_weights=self.class_weights, ignore_index=self.ignore_index, from_logits=self.from_logits)
        return config


def _scale_for_replicas(value):
    """``value`` / replicas of the TensorFlow distribution strategy (other Keras backends: as is)."""
    if keras.backend.backend() != "tensorflow":
        return value
    import tensorflow as tf

    n = tf.distribute.get_strategy().num_replicas_in_sync
    return value * (1.0 / n) if n > 1 else value


def class_weights_from_counts(counts, scheme: str = "inv_sqrt", max_weight: float = 10.0) -> list[float]:
    """Per-class loss weights from pixel counts (the manifest's ``class_pixel_counts``).

    ``inv_sqrt``: w ∝ 1/√f; ``median_freq``: w = median(f)/f (Eigen & Fergus), f the pixel
    frequency over the classes present. Weights are normalised so that the pixel-weighted
    mean weight is 1, then capped at ``max_weight``. Absent classes get weight 0 (they are
    never a target).
    """
    c = np.asarray(counts, dtype=np.float64)
    if c.shape != (NUM_CLASSES,) or (c < 0).any():
        raise ValueError(f"class_pixel_counts must be {NUM_CLASSES} non-negative counts, got {counts!r}")
    present = c > 0
    if not present.any():
        raise ValueError("class_pixel_counts are all zero: the training split has no labelled pixel")
    f = np.where(present, c / c.sum(), 0.0)
    w = np.zeros_like(f)
    if scheme == "inv_sqrt":
        w[present] = 1.0 / np.sqrt(f[present])
    elif scheme == "median_freq":
        w[present] = np.median(f[present]) / f[present]
    else:
        raise ValueError(f"class weight scheme must be 'inv_sqrt' or 'median_freq', got {scheme!r}")
    w /= float((f * w).sum())
    w = np.minimum(w, max_weight)
    return [float(v) for v in w]


# --------------------------------------------------------------------------- metrics


class _ConfusionMetric(keras.metrics.Metric):
    """Accumulates a [classes, classes] confusion matrix (rows = truth) over labelled pixels."""

    def __init__(self, num_classes: int = NUM_CLASSES, ignore_index: int = IGNORE_INDEX, name=None, **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.matrix = self.add_variable(
            shape=(self.num_classes, self.num_classes), initializer="zeros", dtype="float32", name="confusion"
        )

    def update_state(self, y_true, y_pred, sample_weight=None):
        labels = ops.cast(ops.reshape(y_true, (-1,)), "int32")
        pred = ops.cast(ops.reshape(ops.argmax(y_pred, axis=-1), (-1,)), "int32")
        valid = ops.logical_and(
            ops.not_equal(labels, self.ignore_index), ops.logical_and(labels >= 0, labels < self.num_classes)
        )
        idx = ops.where(valid, labels * self.num_classes + pred, ops.zeros_like(labels))
        counts = ops.bincount(idx, weights=ops.cast(valid, "float32"), minlength=self.num_classes**2)
        self.matrix.assign_add(ops.reshape(counts[: self.num_classes**2], (self.num_classes, self.num_classes)))

    def reset_state(self):
        self.matrix.assign(ops.zeros((self.num_classes, self.num_classes), dtype="float32"))

    def get_config(self):
        config = super().get_config()
        config.update(num_classes=self.num_classes, ignore_index=self.ignore_index)
        return config


@keras.saving.register_keras_serializable(package="benbeam")
class MeanIoU(_ConfusionMetric):
    """Mean over classes of TP / (TP + FP + FN), classes with an empty union left out."""

    def __init__(self, num_classes: int = NUM_CLASSES, ignore_index: int = IGNORE_INDEX, name="miou", **kwargs):
        super().__init__(num_classes, ignore_index, name=name, **kwargs)

    def result(self):
        """Mean IoU over the classes seen so far."""
        m = self.matrix
        tp = ops.diagonal(m)
        union = ops.sum(m, axis=0) + ops.sum(m, axis=1) - tp
        present = ops.cast(union > 0, "float32")
        return ops.divide_no_nan(ops.sum(ops.divide_no_nan(tp, union)), ops.sum(present))


@keras.saving.register_keras_serializable(package="benbeam")
class PixelAccuracy(_ConfusionMetric):
    """Correct labelled pixels / labelled pixels."""

    def __init__(self, num_classes: int = NUM_CLASSES, ignore_index: int = IGNORE_INDEX, name="pixel_acc", **kwargs):
        super().__init__(num_classes, ignore_index, name=name, **kwargs)

    def result(self):
        """Correct labelled pixels / labelled pixels so far."""
        return ops.divide_no_nan(ops.sum(ops.diagonal(self.matrix)), ops.sum(self.matrix))


# --------------------------------------------------------------------------- compile, save, load


def compile_model(
    model: keras.Model,
    *,
    lr: float = 1e-3,
    class_weights=None,
    task: str = "seg",
    multi_weight: float = 1.0,
    ignore_index: int = IGNORE_INDEX,
) -> keras.Model:
    """Adam, the masked loss on ``seg`` (+ binary cross-entropy on ``multi``), mIoU / accuracy."""
    losses = {SEG: MaskedSparseCategoricalCrossentropy(class_weights, ignore_index=ignore_index)}
    metrics = {SEG: [MeanIoU(ignore_index=ignore_index), PixelAccuracy(ignore_index=ignore_index)]}
    weights = {SEG: 1.0}
    if task == "both":
        losses[MULTI] = keras.losses.BinaryCrossentropy(name="multi_bce")
        metrics[MULTI] = [keras.metrics.AUC(multi_label=True, num_labels=NUM_CLASSES, name="auc")]
        weights[MULTI] = float(multi_weight)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=lr), loss=losses, loss_weights=weights, metrics=metrics)
    return model


def model_info(model: keras.Model) -> dict:
    """The inference contract attached to a model (or carried by an earlier version's ``ModelInfo`` layer)."""
    info = getattr(model, "_benbeam_info", None)
    if info is not None:
        return dict(info)
    try:
        return dict(model.get_layer("model_info").info)
    except ValueError:
        raise ValueError(
            "this model carries no inference contract: it was not built by trainer.model.build_unet"
        ) from None


def _finish_archive(path: str, info: dict, *, portable: bool) -> None:
    """Add the contract to a saved ``.keras`` archive; ``portable``: drop its training
    configuration (compile config and optimizer state), which names this project's classes."""
    entry = json.dumps(info, indent=2, sort_keys=True, allow_nan=False) + "\n"
    if not portable:
        with zipfile.ZipFile(path, "a") as z:
            z.writestr(INFO_ENTRY, entry)
        return
    tmp = path + ".portable"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename == "config.json":
                config = json.loads(data)
                config.pop("compile_config", None)
                data = json.dumps(config).encode()
            dst.writestr(item, data)
        dst.writestr(INFO_ENTRY, entry)
    os.replace(tmp, path)


def sidecar_path(path: str) -> str:
    """The model's inference-contract JSON beside it (``<model>.json``)."""
    return f"{path}.json"


def save_model(model: keras.Model, path: str, *, portable: bool = True) -> None:
    """Save ``model`` to ``path`` (.keras, its contract inside) and its contract to ``path.json``.

    ``portable`` (default): without the training configuration, so plain Keras loads it;
    ``portable=False``: with optimizer, loss and metrics (a checkpoint to resume). Both files
    are written to temporary names first and renamed, so a crash never leaves a half-written
    model under the final name.
    """
    if not str(path).endswith(".keras"):
        raise ValueError(f"model path must end in .keras, got {path!r}")
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    tmp = os.path.join(d, f".tmp-{os.getpid()}-{os.path.basename(path)}")
    info = model_info(model)
    model.save(tmp)
    _finish_archive(tmp, info, portable=portable)
    os.replace(tmp, path)
    text = json.dumps(info, indent=2, sort_keys=True, allow_nan=False) + "\n"
    tmpj = tmp + ".json"
    with open(tmpj, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmpj, sidecar_path(path))


def load_model(path: str, compile: bool = False, st=None) -> tuple[keras.Model, dict]:
    """Load a model saved by ``save_model``: ``(keras_model, info)``.

    ``info`` holds what inference needs: ``channels`` (band order of the input),
    ``modalities``, ``statistics`` (the dataset's normalisation statistics, verbatim),
    ``classes``, ``class_colors``, ``ignore_index``, ``task``. Read from the model itself;
    the ``.json`` sidecar is used only for a model without the info layer. ``st``: the
    ``transforms.storage.Storage`` a URL ``path`` is read under (default ``Storage()``).
    """
    from bigearthnet_beam.transforms import storage

    st = st if st is not None else storage.Storage()

    if storage.is_remote(path):  # Keras reads local files: fetch the model (and its sidecar) first
        import shutil
        import tempfile

        tmp = tempfile.mkdtemp(prefix="benbeam-model-")
        try:
            local = os.path.join(tmp, os.path.basename(path))
            try:
                st.download_file(path, local)
            except FileNotFoundError:
                raise FileNotFoundError(f"model {path} does not exist") from None
            try:
                st.download_file(sidecar_path(path), sidecar_path(local))
            except FileNotFoundError:
                pass
            return load_model(local, compile=compile)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    if not os.path.exists(path):
        raise FileNotFoundError(f"model {path} does not exist")
    if os.path.isdir(path) or not zipfile.is_zipfile(path):  # Keras would say "File not found"
        raise errors.InputError(
            f"model {path} is not a .keras model (a zip archive written by `benbeam train`); "
            "pass the .keras file that `benbeam train --save` wrote"
        )
    model = keras.models.load_model(path, compile=compile)
    with zipfile.ZipFile(path) as z:
        entry = z.read(INFO_ENTRY) if INFO_ENTRY in z.namelist() else None
    if entry is not None:
        attach_info(model, json.loads(entry))
    try:
        info = model_info(model)
    except ValueError:
        side = sidecar_path(path)
        if not os.path.exists(side):
            raise
        with open(side, encoding="utf-8") as fh:
            info = json.load(fh)
    if info.get("format") != INFO_FORMAT:
        raise ValueError(f"{path} carries no {INFO_FORMAT} info (format={info.get('format')!r})")
    return model, info
