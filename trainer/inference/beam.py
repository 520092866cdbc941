"""``benbeam predict --input_dir DIR``: many tiles as a Beam pipeline, one element per tile.

    Create(tile paths or URLs) → Reshuffle → PredictTiles (DoFn: model loaded once per
    worker process in ``setup``, shared by its threads; each tile fetched if remote, mapped
    chunk by chunk, its maps written to OUT/<tile name>/, uploaded if OUT is a URL) →
    ToList → Finalize (OUT/summary.json, OUT/viewer.html)

The DoFn calls the plain command's code (``trainer.inference.tile``, same chunk and batch
sizes), so a tile's outputs are byte-identical to ``benbeam predict --tile``'s. A tile that
cannot be mapped becomes a dead letter ``{tile, path, stage, reason}`` in ``summary.json``
(counted, shown in the viewer); the others are still mapped.

Why not Beam's ``RunInference``: its unit is one model call on a batch of examples held in
memory, with the results as ``PredictionResult`` elements. Here the unit is a whole tile
whose windows are batched, blended and written chunk by chunk to GeoTIFFs (memory bounded
by the chunk, not the tile), so a ModelHandler would only wrap this DoFn's ``setup`` (one
model per worker process, through ``apache_beam.utils.shared`` as RunInference does) and
add nothing.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from dataclasses import dataclass

import apache_beam as beam
from apache_beam.utils import shared

from bigearthnet_beam.trainer.inference import staging
from bigearthnet_beam.trainer.inference.plugins import load_extra
from bigearthnet_beam.trainer.inference.predictor import Predictor
from bigearthnet_beam.trainer.inference.settings import SUMMARY, VIEWER, PredictError, PredictSettings
from bigearthnet_beam.trainer.inference.tile import open_tile_at, predict_tile, print_summary
from bigearthnet_beam.trainer.inference.viewer import write_viewer
from bigearthnet_beam.transforms import storage
from bigearthnet_beam.transforms.progress import LOCAL_RUNNER

LOG = logging.getLogger("benbeam.predict")
NAMESPACE = "benbeam"


class _Loaded:
    """A weak-referenceable holder of a predictor (``shared.Shared`` needs one)."""

    def __init__(self, predictor):
        self.predictor = predictor


def tile_name(path: str) -> str:
    """The last component of a tile's path or URL."""
    return os.path.basename(path.rstrip("/"))


def tile_outcome(path: str, stage: str, summary: dict | None = None, error: BaseException | None = None):
    """One tile's tagged, counted output: ``("ok", summary)`` or ``("failed", dead letter)``."""
    if error is not None:
        beam.metrics.Metrics.counter(NAMESPACE, f"tiles_failed_{stage}").inc()
        reason = str(error) if isinstance(error, PredictError) else f"{type(error).__name__}: {error}"
        return "failed", {"tile": tile_name(path), "path": path, "stage": stage, "reason": reason}
    assert summary is not None
    beam.metrics.Metrics.counter(NAMESPACE, "tiles_mapped").inc()
    beam.metrics.Metrics.counter(NAMESPACE, "pixels_mapped").inc(summary["pixels"])
    summary["dir"] = summary["tile"]
    return "ok", summary


class PredictTileFn(beam.DoFn):
    """Maps one tile per element; yields ``("ok", summary)`` or ``("failed", dead letter)``."""

    def __init__(self, settings: PredictSettings):
        self.settings = settings
        self._shared = shared.Shared()
        self._predictor = None
        self._extras = None

    def setup(self):
        """Load the model once per worker process (shared by its threads) and the --extra functions."""
        s = self.settings

        def load():
            return _Loaded(Predictor.load(s.model, s.storage, batch_size=s.batch_size, overlap=s.overlap))

        # The tag names the storage too: two pipelines with different credentials never share a model.
        tag = f"{s.model}|{s.batch_size}|{s.overlap}|{hash(s.storage)}"
        self._predictor = self._shared.acquire(load, tag=tag).predictor
        self._extras = [load_extra(e) for e in s.extras]

    def process(self, path: str):
        """Map the tile at ``path`` (local or a URL) into ``settings.out/<tile name>/``."""
        s = self.settings
        stage = "open"
        try:
            with contextlib.ExitStack() as stack:
                s1 = staging.s1_sidecar(path, s.storage) if self._predictor.needs_s1 else None
                src = stack.enter_context(open_tile_at(path, self._predictor.channels, s1, s.resampling, s.storage))
                stage = "predict"
                for w in src.warnings:
                    LOG.warning("%s: %s", src.name, w)
                out_dir = stack.enter_context(staging.local_folder(storage.join(s.out, src.name), s.storage))
                summary = predict_tile(
                    self._predictor, src, out_dir, extras=self._extras, progress=LOG.info, **s.tile_kwargs()
                )
                stage = "write"
        except Exception as e:  # noqa: BLE001 - a dead letter with the reason, the other tiles go on
            yield tile_outcome(path, stage, error=e)
            return
        yield tile_outcome(path, stage, summary=summary)


@dataclass
class PredictTiles(beam.PTransform):
    """Tile paths → ``(status, dict)`` per tile (see ``PredictTileFn``)."""

    settings: PredictSettings

    def expand(self, paths):
        """Predict every tile path, spread over the workers."""
        return paths | "Distribute" >> beam.Reshuffle() | "Predict" >> beam.ParDo(PredictTileFn(self.settings))


def finalize(results: list, out: str, st: storage.Storage | None = None) -> dict:
    """Write ``summary.json`` (tiles sorted by name, dead letters) and ``viewer.html`` into ``out`` (under ``st``)."""
    st = st if st is not None else storage.Storage()
    ok = sorted((r for tag, r in results if tag == "ok"), key=lambda r: r["tile"])
    failed = sorted((r for tag, r in results if tag == "failed"), key=lambda r: r["path"])
    summary = {
        "tiles": ok,
        "failures": failed,
        "mapped": len(ok),
        "failed": len(failed),
        "pixels": sum(r["pixels"] for r in ok),
    }
    st.write_bytes_atomic(storage.join(out, SUMMARY), (json.dumps(summary, indent=2, allow_nan=False) + "\n").encode())
    write_viewer(storage.join(out, VIEWER), ok, failed, title="benbeam predict", st=st)
    return summary


@dataclass
class Finalize(beam.PTransform):
    """All ``(status, dict)`` results → ``summary.json`` and ``viewer.html`` in ``out``; yields the count mapped."""

    out: str
    storage: storage.Storage = storage.Storage()

    def expand(self, results):
        """Collect all results and finalize them into ``out``; yields the count mapped."""
        return (
            results
            | "Collect" >> beam.combiners.ToList()
            | "Write" >> beam.Map(_finalize_count, self.out, self.storage)
        )


def _finalize_count(results: list, out: str, st: storage.Storage) -> int:
    return finalize(results, out, st)["mapped"]


def build(p: beam.Pipeline, tiles: list[str], settings: PredictSettings):
    """The pipeline over ``tiles`` (see the module's docstring)."""
    return (
        p
        | "Tiles" >> beam.Create(sorted(tiles))
        | "PredictTiles" >> PredictTiles(settings)
        | "Finalize" >> Finalize(settings.out, settings.storage)
    )


def beam_argv(args: list[str]) -> list[str]:
    """Beam's local runner in one process unless told otherwise: TensorFlow already uses every
    core, and each extra worker process would load its own copy of the model. The local
    runner is named directly (``options.LOCAL_RUNNER``): the DirectRunner would first try Prism."""
    joined = " ".join(args)
    extra = []
    if "--runner" not in joined:
        extra.append(f"--runner={LOCAL_RUNNER}")
    if ("--runner" not in joined or "DirectRunner" in joined) and "--direct_running_mode" not in joined:
        extra.append("--direct_running_mode=in_memory")
    return list(args) + extra


def run_pipeline(
    *,
    model: str,
    tiles: list[str],
    out: str,
    beam_args: list[str],
    overlap: int,
    batch_size: int,
    extras: list[str],
    st: storage.Storage | None = None,
    **tile_kwargs,
) -> int:
    """Run the pipeline over ``tiles`` (paths or URLs) into ``out`` (a folder or a URL); prints
    a summary; returns the exit code. ``st``: the ``Storage`` of every URL (default ``Storage()``)."""
    from apache_beam.options.pipeline_options import PipelineOptions

    from bigearthnet_beam.trainer.pretrained.model import is_pretrained_ref

    st = st if st is not None else storage.Storage()
    pretrained = is_pretrained_ref(model)
    if not pretrained and not staging.exists(model, st):
        raise PredictError(f"model {model} does not exist")
    settings = PredictSettings(
        model=model,
        out=out if storage.is_remote(out) else os.path.abspath(out),
        overlap=overlap,
        batch_size=batch_size,
        extras=tuple(extras),
        storage=st,
        **tile_kwargs,
    )
    t0 = time.perf_counter()
    if pretrained:  # an authors' scene classifier: windows through RunInference (trainer.inference.pretrained_beam)
        from bigearthnet_beam.trainer.inference.pretrained_beam import build_pretrained, check_model

        bands = check_model(settings)
    p = beam.Pipeline(options=PipelineOptions(beam_argv(beam_args)))
    if pretrained:
        build_pretrained(p, tiles, settings, bands)
    else:
        build(p, tiles, settings)
    try:
        p.run().wait_until_finish()
    except Exception as e:  # noqa: BLE001 - a failed job: one clear line
        msg = str(e).strip().splitlines()[-1][:500] if str(e).strip() else ""
        print(f"benbeam predict: error: the pipeline failed: {type(e).__name__}: {msg}", file=sys.stderr)
        return 1
    summary = json.loads(st.read_bytes(storage.join(settings.out, SUMMARY)))
    for s in summary["tiles"]:
        print_summary(s, storage.join(out, s["dir"]))
    for f in summary["failures"]:
        print(f"benbeam predict: error: {f['tile']} ({f['stage']}): {f['reason']}", file=sys.stderr)
    print(
        f"{summary['mapped']} tiles mapped, {summary['failed']} failed in {time.perf_counter() - t0:.1f} s; "
        f"wrote {storage.join(out, SUMMARY)} and {storage.join(out, VIEWER)}"
    )
    return 0 if not summary["failures"] else 1
