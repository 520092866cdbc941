"""The per-pixel layers of a blended probability cube, their documentation and the class
map's colours (plain numpy)."""

from __future__ import annotations

import numpy as np

NODATA_CLASS = 255
PROBS_SCALE = 254  # uint8 probabilities: round(254·p); 255 is nodata
NODATA_COLOR = (235, 235, 235)
BUILTIN_LAYERS = ("class", "maxprob", "entropy", "gap", "probs")

LAYER_DOC = {
    "class": "uint8 class id (argmax of the blended probabilities); 255 = no data",
    "maxprob": "float32 max_k p_k; NaN = no data",
    "entropy": "float32 -sum_k p_k ln p_k in nats (natural log), 0 .. ln(19) = 2.944; divide by ln(19) for 0..1; "
    "NaN = no data",
    "gap": "float32 top-1 minus top-2 probability (0 = a tie, 1 = certain); NaN = no data",
    "probs": "19 bands in class order: the blended per-pixel softmax; uint8 round(254*p) with 255 = no data "
    "(divide by 254), or float32 with NaN = no data (--probs_dtype)",
}


def entropy(probs: np.ndarray) -> np.ndarray:
    """−Σ_k p_k ln p_k over the last axis (natural log; 0·ln 0 = 0), float32."""
    p = np.asarray(probs, dtype=np.float32)
    t = np.log(np.maximum(p, np.float32(1e-30)))
    t *= p
    return -t.sum(axis=-1, dtype=np.float32)


def layers_from_probs(probs: np.ndarray, valid: np.ndarray, entropy_of=None) -> dict[str, np.ndarray]:
    """The per-pixel layers of an (h, w, K) probability cube: ``class`` (uint8, 255 where
    not ``valid``), ``maxprob``, ``entropy`` (``entropy_of(probs)``; default: of a softmax),
    ``gap`` (float32, NaN where not ``valid``)."""
    k = probs.shape[-1]
    cls = np.argmax(probs, axis=-1).astype(np.uint8)
    top = np.partition(probs, k - 2, axis=-1)[..., k - 2 :]  # [..., 0] second largest, [..., 1] largest
    maxprob = np.ascontiguousarray(top[..., 1])
    gap = maxprob - top[..., 0]
    ent = (entropy if entropy_of is None else entropy_of)(probs)
    invalid = ~valid
    cls[invalid] = NODATA_CLASS
    for a in (maxprob, gap, ent):
        a[invalid] = np.nan
    return {"class": cls, "maxprob": maxprob, "entropy": ent, "gap": gap}


def probs_for_file(probs: np.ndarray, valid: np.ndarray, dtype: str) -> np.ndarray:
    """The probability cube as written by --save_probs (see ``LAYER_DOC['probs']``)."""
    if dtype == "uint8":
        q = np.rint(np.clip(probs, 0.0, 1.0) * PROBS_SCALE).astype(np.uint8)
        q[~valid] = 255
        return q
    q = probs.astype(np.float32, copy=True)
    q[~valid] = np.nan
    return q


def classmap(info: dict, *, probs_dtype: str | None = None, extras=()) -> dict:
    """The ``*_classmap.json`` content: id → name and RGB colour, nodata, and the layers."""
    colors = info.get("class_colors") or [[128, 128, 128]] * len(info["classes"])
    classes = {str(i): {"name": n, "color": [int(v) for v in colors[i][:3]]} for i, n in enumerate(info["classes"])}
    classes[str(NODATA_CLASS)] = {"name": "no data", "color": list(NODATA_COLOR)}
    layers = {k: v for k, v in LAYER_DOC.items() if k != "probs"}
    if probs_dtype:
        layers["probs"] = LAYER_DOC["probs"] + f"; this run: {probs_dtype}"
    for name in extras:
        layers[name] = "float32 user layer (--extra); NaN = no data"
    return {
        "classes": classes,
        "nodata": NODATA_CLASS,
        "layers": layers,
        "entropy_log": "natural (nats); normalised entropy = entropy / ln(19)",
    }


def palette(info: dict) -> np.ndarray:
    """uint8[256, 3]: colour of each class id (no data and unused ids: ``NODATA_COLOR``)."""
    pal = np.tile(np.asarray(NODATA_COLOR, dtype=np.uint8), (256, 1))
    for i, c in enumerate(info.get("class_colors") or []):
        pal[i] = [int(v) for v in c[:3]]
    return pal
