"""Evaluation maths on plain numpy arrays (no TensorFlow).

Segmentation: a confusion matrix accumulated over batches (rows = truth, columns =
prediction, pixels labelled ``ignore_index`` left out), and from it per-class IoU, mIoU,
pixel accuracy, per-class precision / recall. Multi-label: micro / macro F1 at a threshold
and (mean) average precision.

Conventions: a class whose IoU denominator (TP + FP + FN) is 0 — absent from the truth
and never predicted — has IoU NaN and is left out of the mean; ``None`` in JSON.
"""

from __future__ import annotations

import numpy as np

from bigearthnet_beam.schemas.classes import IGNORE_INDEX, NUM_CLASSES


def confusion_matrix(y_true, y_pred, num_classes: int = NUM_CLASSES, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """int64[num_classes, num_classes]: counts of (truth, prediction) over labelled pixels.

    Pixels whose truth is ``ignore_index`` (or outside ``[0, num_classes)``) are skipped.
    """
    t = np.asarray(y_true).reshape(-1).astype(np.int64)
    p = np.asarray(y_pred).reshape(-1).astype(np.int64)
    if t.shape != p.shape:
        raise ValueError(f"truth and prediction differ in size: {t.shape} vs {p.shape}")
    keep = (t != ignore_index) & (t >= 0) & (t < num_classes)
    t, p = t[keep], p[keep]
    if p.size and (p.min() < 0 or p.max() >= num_classes):
        raise ValueError(f"predictions must be class indices in [0, {num_classes})")
    return np.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


class ConfusionAccumulator:
    """Sum of confusion matrices over batches."""

    def __init__(self, num_classes: int = NUM_CLASSES, ignore_index: int = IGNORE_INDEX):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)

    def add(self, y_true, y_pred) -> "ConfusionAccumulator":
        """Count one batch of (truth, prediction) label maps."""
        self.matrix += confusion_matrix(y_true, y_pred, self.num_classes, self.ignore_index)
        return self

    def merge(self, other: "ConfusionAccumulator") -> "ConfusionAccumulator":
        """Add another accumulator's counts to this one."""
        self.matrix += other.matrix
        return self


def iou_per_class(cm: np.ndarray) -> np.ndarray:
    """float64[C]: TP / (TP + FP + FN), NaN where that denominator is 0."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, tp / np.where(union > 0, union, 1), np.nan)


def mean_iou(cm: np.ndarray) -> float:
    """Mean of the per-class IoU over the classes present (NaN if none)."""
    iou = iou_per_class(cm)
    return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")


def pixel_accuracy(cm: np.ndarray) -> float:
    """Correct labelled pixels / labelled pixels (NaN if none)."""
    cm = np.asarray(cm)
    total = cm.sum()
    return float(np.trace(cm) / total) if total else float("nan")


def precision_recall_per_class(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(precision, recall) float64[C] per class, NaN where undefined."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    pred, true = cm.sum(0), cm.sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (
            np.where(pred > 0, tp / np.where(pred > 0, pred, 1), np.nan),
            np.where(true > 0, tp / np.where(true > 0, true, 1), np.nan),
        )


def segmentation_report(cm: np.ndarray, class_names=None) -> dict:
    """JSON-able summary of a confusion matrix (NaN written as None)."""
    cm = np.asarray(cm)
    names = list(class_names) if class_names is not None else [str(i) for i in range(cm.shape[0])]
    iou = iou_per_class(cm)
    prec, rec = precision_recall_per_class(cm)
    return {
        "miou": _num(mean_iou(cm)),
        "pixel_accuracy": _num(pixel_accuracy(cm)),
        "labelled_pixels": int(cm.sum()),
        "per_class": [
            {
                "index": i,
                "name": n,
                "iou": _num(iou[i]),
                "precision": _num(prec[i]),
                "recall": _num(rec[i]),
                "support": int(cm[i].sum()),
                "predicted": int(cm[:, i].sum()),
            }
            for i, n in enumerate(names)
        ],
        "confusion_matrix": cm.astype(np.int64).tolist(),
    }


# --------------------------------------------------------------------------- multi-label


def f1_scores(y_true, scores, threshold: float = 0.5) -> dict:
    """Micro and macro F1 of multi-label predictions ``scores >= threshold``.

    Macro F1 averages over classes with at least one positive in the truth or the
    prediction (F1 undefined otherwise).
    """
    t = np.asarray(y_true).astype(bool)
    p = np.asarray(scores) >= threshold
    tp = (t & p).sum(0).astype(np.float64)
    fp = (~t & p).sum(0).astype(np.float64)
    fn = (t & ~p).sum(0).astype(np.float64)
    denom = 2 * tp + fp + fn
    micro_d = denom.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        per = np.where(denom > 0, 2 * tp / np.where(denom > 0, denom, 1), np.nan)
    return {
        "micro_f1": _num(2 * tp.sum() / micro_d if micro_d else float("nan")),
        "macro_f1": _num(np.nanmean(per) if np.isfinite(per).any() else float("nan")),
        "per_class_f1": [_num(v) for v in per],
        "threshold": float(threshold),
    }


def average_precision(y_true, scores) -> float:
    """Average precision of one class: Σ_k (R_k − R_{k−1}) · P_k over the ranking by score
    (ties broken by grouping equal scores, as scikit-learn does); NaN with no positive."""
    t = np.asarray(y_true).astype(bool).reshape(-1)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    npos = int(t.sum())
    if npos == 0:
        return float("nan")
    order = np.argsort(-s, kind="mergesort")
    s, t = s[order], t[order]
    tps = np.cumsum(t)
    # last index of each run of equal scores
    last = np.r_[np.nonzero(np.diff(s))[0], s.size - 1]
    tp = tps[last].astype(np.float64)
    precision = tp / (last + 1)
    recall = tp / npos
    prev = np.r_[0.0, recall[:-1]]
    return float(np.sum((recall - prev) * precision))


def mean_average_precision(y_true, scores) -> dict:
    """Macro mAP over classes with a positive; micro AP over all (patch, class) pairs."""
    t = np.asarray(y_true)
    s = np.asarray(scores)
    per = np.array([average_precision(t[:, c], s[:, c]) for c in range(t.shape[1])])
    return {
        "map_macro": _num(np.nanmean(per) if np.isfinite(per).any() else float("nan")),
        "map_micro": _num(average_precision(t.reshape(-1), s.reshape(-1))),
        "per_class_ap": [_num(v) for v in per],
    }


def multilabel_report(y_true, scores, class_names=None, threshold: float = 0.5) -> dict:
    """Micro / macro F1 at ``threshold`` and mAP of the multi-label head."""
    out = f1_scores(y_true, scores, threshold)
    out.update(mean_average_precision(y_true, scores))
    out["patches"] = int(np.asarray(y_true).shape[0])
    if class_names is not None:
        out["classes"] = list(class_names)
    return out


def _num(v) -> float | None:
    v = float(v)
    return v if np.isfinite(v) else None
