"""``benbeam evaluate --model ORG/NAME --data DATASET``: an authors' classifier scored on a converted
split with the scene-level multi-label metrics the reBEN paper reports — macro and micro average
precision, and macro / micro F1 at a threshold (0.5) — from ``trainer.metrics``.

Inputs: the dataset's records hold 120 × 120 bands normalised with the DATASET's statistics.
They are de-normalised with the manifest's statistics (``x · scale + offset``) back to raw
values, then given the authors' preprocessing (their ``120_nearest`` normalisation; a 120-px
band is not upsampled again). What this costs in fidelity, recorded in ``metrics.json``:

- 20 m bands were upsampled by ``benbeam convert --resampling`` (default bilinear); the authors
  upsample with nearest. Only a dataset converted with ``--resampling nearest`` gives the
  authors' input values; with bilinear, every 20 m band is smoothed;
- with percentile clipping (``statistics.clip``), values outside the clip range were replaced by
  the bounds and cannot be recovered;
- ``image_dtype: float16`` rounds each normalised value to 11 significant bits.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np

from bigearthnet_beam.schemas import bands as band_table
from bigearthnet_beam.schemas.classes import CLASS_NAMES
from bigearthnet_beam.trainer.metrics import multilabel_report
from bigearthnet_beam.trainer.pretrained import authors


def fidelity(manifest: dict, model_bands) -> dict:
    """How far the dataset's records are from the authors' input (see the module docstring)."""
    stats = manifest.get("statistics") or {}
    resampling = (manifest.get("options") or {}).get("resampling") or "bilinear"
    coarse = [b for b in model_bands if band_table.BAND_BY_NAME[b].resolution_m > 10]
    notes = []
    if coarse and resampling != "nearest":
        notes.append(
            f"the dataset's 20 m bands ({', '.join(coarse)}) were upsampled with {resampling}; the authors "
            "use nearest: convert with --resampling nearest for their exact input"
        )
    if stats.get("clip"):
        notes.append("the dataset clipped values at percentiles: values beyond them are not recovered")
    if manifest.get("image_dtype") == "float16":
        notes.append("the dataset stores float16: inputs carry float16 rounding")
    return {
        "method": "de-normalised with the dataset's statistics, then the authors' 120_nearest normalisation",
        "resampling": resampling,
        "clip": bool(stats.get("clip")),
        "image_dtype": manifest.get("image_dtype"),
        "exact": not notes,
        "notes": notes,
    }


def denormaliser(manifest: dict, channels) -> tuple[np.ndarray, np.ndarray]:
    """float32 (scale, offset) per channel: raw = normalised · scale + offset (the dataset's statistics)."""
    from bigearthnet_beam.transforms.normalize import NormParams

    stats = manifest["statistics"]
    norm = NormParams.from_stats(stats["bands"], clip=bool(stats.get("clip")), channels=tuple(channels))
    return norm.scale.astype(np.float32), norm.offset.astype(np.float32)


def modalities_for(model_bands) -> str:
    """The ``BenDataset`` modalities that hold the model's bands."""
    mods = [m for m, names in band_table.MODALITIES.items() if any(b in names for b in model_bands)]
    return ",".join(mods)


def evaluate_pretrained(
    model,
    data: str,
    split: str = "test",
    *,
    batch: int = 64,
    max_patches: int | None = None,
    threshold: float = 0.5,
) -> dict:
    """Score a loaded ``PretrainedModel`` on one split; returns the metrics dict (``metrics.json``)."""
    from bigearthnet_beam.trainer.torch_data import BenDataset

    t0 = time.perf_counter()
    ds = BenDataset(data, split, modalities=modalities_for(model.bands), multi_hot=True)
    missing = [b for b in model.bands if b not in ds.channels]
    if missing:
        raise ValueError(f"the model reads bands {missing} that the dataset at {data} lacks")
    pick = [ds.channels.index(b) for b in model.bands]
    scale, offset = denormaliser(ds.manifest, model.bands)
    scale, offset = scale.reshape(1, -1, 1, 1), offset.reshape(1, -1, 1, 1)
    y_true, scores, xs, ys = [], [], [], []

    def flush():
        x = np.stack(xs)[:, pick] * scale + offset  # raw values
        x = authors.normalise(x.astype(np.float32), model.bands, inplace=True)
        scores.append(model.proba_normalised(x, batch_size=batch))
        y_true.append(np.stack(ys))
        xs.clear()
        ys.clear()

    n = 0
    for sample in ds:
        xs.append(sample["image"].numpy())
        ys.append(sample["label"].numpy())
        n += 1
        if len(xs) == batch:
            flush()
        if max_patches is not None and n >= max_patches:
            break
    if xs:
        flush()
    if not n:
        raise ValueError(f"split {split!r} of {data} holds no patches")
    t, s = np.concatenate(y_true), np.concatenate(scores)
    report = multilabel_report(t, s, class_names=CLASS_NAMES, threshold=threshold)
    return {
        "model": model.ref,
        "architecture": model.architecture,
        "bands": list(model.bands),
        "data": str(data),
        "split": split,
        "patches": n,
        "metrics": report,
        "fidelity": fidelity(ds.manifest, model.bands),
        "seconds": time.perf_counter() - t0,
    }


def run(args) -> int:
    """``benbeam evaluate`` with an authors' model: parsed flags → exit code (prints one line, writes metrics.json)."""
    import sys

    from bigearthnet_beam.schemas.errors import UnavailableError
    from bigearthnet_beam.schemas.manifest import ManifestError
    from bigearthnet_beam.trainer.pretrained.model import load
    from bigearthnet_beam.transforms import storage

    try:
        model = load(args.model, device=getattr(args, "device", "cpu"))
        r = evaluate_pretrained(
            model,
            args.data,
            args.split,
            batch=args.batch,
            max_patches=args.max_patches,
            threshold=args.threshold,
        )
    except UnavailableError as e:
        print(f"benbeam evaluate: error: {e}", file=sys.stderr)
        return 3
    except (ManifestError, ValueError, FileNotFoundError) as e:  # a corrupt shard is a ValueError too
        print(f"benbeam evaluate: error: {e}", file=sys.stderr)
        return 2
    if not storage.is_remote(args.out):
        os.makedirs(args.out, exist_ok=True)
    storage.write_bytes_atomic(storage.join(args.out, "metrics.json"), (json.dumps(r, indent=2) + "\n").encode())
    m = r["metrics"]

    def f(v):
        return "n/a" if v is None else f"{v:.4f}"

    print(
        f"{r['split']}: {r['patches']} patches, macro AP {f(m['map_macro'])}, micro AP {f(m['map_micro'])}, "
        f"macro F1 {f(m['macro_f1'])}, micro F1 {f(m['micro_f1'])} (threshold {m['threshold']})"
    )
    for note in r["fidelity"]["notes"]:
        print(f"benbeam evaluate: note: {note}", file=sys.stderr)
    print(f"wrote {storage.join(args.out, 'metrics.json')}")
    return 0
