"""Where a training run's files live (beside ``--save``, staged locally for a bucket) and how
the trainer's commands write JSON (atomically, NaN-free). Shared by ``train`` and ``evaluate``."""

from __future__ import annotations

import json
import math
import os

from bigearthnet_beam.transforms import storage


def run_paths(save: str) -> dict[str, str]:
    """Where a run writes its outputs, all beside ``save``."""
    save = str(save)
    if not save.endswith(".keras"):
        raise ValueError(f"--save must name a .keras file, got {save!r}")
    stem = save[: -len(".keras")]
    return {
        "model": save,
        "info": save + ".json",
        "last": stem + ".last.keras",
        "state": stem + ".state.json",
        "history": stem + ".history.csv",
        "tensorboard": stem + ".tb",
        "metrics": stem + ".metrics.json",
    }


class RunFiles:
    """Where a run's files live: beside ``save`` on local disk, or, for an ``s3://`` /
    ``gs://`` ``save``, in a local staging folder mirrored to the bucket after every epoch
    (Keras, the CSV logger and TensorBoard write local files only)."""

    def __init__(self, save: str, st: storage.Storage | None = None):
        self.storage = st if st is not None else storage.Storage()
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
        if not self.remote:
            return
        for k in keys:
            try:
                self.storage.download_file(self.urls[k], self.paths[k])
            except FileNotFoundError:
                pass

    def push(self, *keys: str) -> None:
        """Publish files (folders recursively) to the bucket; a no-op for local runs."""
        if not self.remote:
            return
        for k in keys:
            local = self.paths[k]
            if os.path.isdir(local):
                self.storage.upload_tree(local, self.urls[k])
            elif os.path.exists(local):
                self.storage.upload_file(local, self.urls[k])

    def cleanup(self) -> None:
        """Remove the local staging folder (remote runs)."""
        if self.stage:
            import shutil

            shutil.rmtree(self.stage, ignore_errors=True)


def write_json(path: str, obj) -> None:
    """Write ``obj`` as indented, key-sorted JSON; NaN refused; renamed into place when complete."""
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


def finite_or_none(v):
    """Floats for JSON: NaN / inf become None (non-numbers pass through)."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return v
    return f if math.isfinite(f) else None
