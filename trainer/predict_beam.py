"""``benbeam predict --input_dir DIR``: many tiles as a Beam pipeline, one element per tile.

    Create(tile paths) → Reshuffle → PredictTiles (DoFn: model loaded once per worker,
    shared by its threads; each tile mapped chunk by chunk into OUT/<tile name>/) →
    ToList → Finalize (OUT/summary.json, OUT/viewer.html)

The DoFn calls ``trainer.predict.predict_path`` (the plain command's code, same chunk and
batch sizes), so a tile's outputs are byte-identical to ``benbeam predict --tile``'s. A tile
that cannot be mapped becomes a dead letter ``{tile, path, stage, reason}`` in
``summary.json`` (counted, shown in the viewer); the others are still mapped.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field

import apache_beam as beam
from apache_beam.utils import shared

from trainer import predict as P

LOG = logging.getLogger("benbeam.predict")
SUMMARY = "summary.json"
NAMESPACE = "benbeam"


@dataclass(frozen=True)
class PredictSettings:
    """Everything a worker needs to map a tile (plain values: pickles predictably)."""

    model: str
    out: str
    chunk_size: int = P.DEFAULTS["chunk_size"]
    overlap: int = P.DEFAULTS["overlap"]
    batch_size: int = P.DEFAULTS["batch_size"]
    save_probs: bool = False
    probs_dtype: str = P.DEFAULTS["probs_dtype"]
    preview_size: int = P.DEFAULTS["preview_size"]
    resampling: str = "bilinear"
    extras: tuple[str, ...] = field(default_factory=tuple)

    def tile_kwargs(self) -> dict:
        return dict(chunk_size=self.chunk_size, save_probs=self.save_probs, probs_dtype=self.probs_dtype,
                    preview_size=self.preview_size)


class _Loaded:
    """A weak-referenceable holder of a predictor (``shared.Shared`` needs one)."""

    def __init__(self, predictor):
        self.predictor = predictor


def tile_name(path: str) -> str:
    return os.path.basename(path.rstrip("/"))


class PredictTileFn(beam.DoFn):
    """Maps one tile per element; yields ``("ok", summary)`` or ``("failed", dead letter)``."""

    def __init__(self, settings: PredictSettings):
        self.settings = settings
        self._shared = shared.Shared()
        self._predictor = None
        self._extras = None

    def setup(self):
        s = self.settings

        def load():
            return _Loaded(P.Predictor.load(s.model, batch_size=s.batch_size, overlap=s.overlap))

        self._predictor = self._shared.acquire(load, tag=f"{s.model}|{s.batch_size}|{s.overlap}").predictor
        self._extras = [P.load_extra(e) for e in s.extras]

    def process(self, path: str):
        s = self.settings
        needs_s1 = any(c in ("VV", "VH") for c in self._predictor.channels)
        stage = "open"
        try:
            src = P.open_source(path, self._predictor.channels, P.s1_sidecar(path) if needs_s1 else None,
                                 s.resampling)
            stage = "predict"
            with src:
                for w in src.warnings or []:
                    LOG.warning("%s: %s", src.name, w)
                summary = P.predict_tile(self._predictor, src, os.path.join(s.out, src.name), extras=self._extras,
                                         progress=LOG.info, **s.tile_kwargs())
        except Exception as e:  # noqa: BLE001 - a dead letter with the reason, the other tiles go on
            beam.metrics.Metrics.counter(NAMESPACE, f"tiles_failed_{stage}").inc()
            reason = str(e) if isinstance(e, P.PredictError) else f"{type(e).__name__}: {e}"
            yield "failed", {"tile": tile_name(path), "path": path, "stage": stage, "reason": reason}
            return
        beam.metrics.Metrics.counter(NAMESPACE, "tiles_mapped").inc()
        beam.metrics.Metrics.counter(NAMESPACE, "pixels_mapped").inc(summary["pixels"])
        summary["dir"] = summary["tile"]
        yield "ok", summary


@dataclass
class PredictTiles(beam.PTransform):
    """Tile paths → ``(status, dict)`` per tile (see ``PredictTileFn``)."""

    settings: PredictSettings

    def expand(self, paths):
        return (paths
                | "Distribute" >> beam.Reshuffle()
                | "Predict" >> beam.ParDo(PredictTileFn(self.settings)))


def finalize(results: list, out: str) -> dict:
    """Write ``summary.json`` (tiles sorted by name, dead letters) and ``viewer.html``."""
    from trainer.viewer import write_viewer

    ok = sorted((r for tag, r in results if tag == "ok"), key=lambda r: r["tile"])
    failed = sorted((r for tag, r in results if tag == "failed"), key=lambda r: r["path"])
    summary = {"tiles": ok, "failures": failed, "mapped": len(ok), "failed": len(failed),
               "pixels": sum(r["pixels"] for r in ok)}
    tmp = os.path.join(out, f".tmp-{os.getpid()}-{SUMMARY}")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(summary, fh, indent=2, allow_nan=False)
        fh.write("\n")
    os.replace(tmp, os.path.join(out, SUMMARY))
    write_viewer(os.path.join(out, P.VIEWER), ok, failed, title="benbeam predict")
    return summary


@dataclass
class Finalize(beam.PTransform):
    out: str

    def expand(self, results):
        return (results
                | "Collect" >> beam.combiners.ToList()
                | "Write" >> beam.Map(_finalize_count, self.out))


def _finalize_count(results: list, out: str) -> int:
    return finalize(results, out)["mapped"]


def build(p: beam.Pipeline, tiles: list[str], settings: PredictSettings):
    return (p
            | "Tiles" >> beam.Create(sorted(tiles))
            | "PredictTiles" >> PredictTiles(settings)
            | "Finalize" >> Finalize(settings.out))


def beam_argv(args: list[str]) -> list[str]:
    """DirectRunner in one process unless told otherwise: TensorFlow already uses every core,
    and each extra worker process would load its own copy of the model."""
    joined = " ".join(args)
    extra = []
    if "--runner" not in joined:
        extra.append("--runner=DirectRunner")
    if ("--runner" not in joined or "DirectRunner" in joined) and "--direct_running_mode" not in joined:
        extra.append("--direct_running_mode=in_memory")
    return list(args) + extra


def run_pipeline(*, model: str, tiles: list[str], out: str, beam_args: list[str], overlap: int, batch_size: int,
                 extras: list[str], **tile_kwargs) -> int:
    """Run the pipeline over ``tiles``; prints a summary; returns the exit code."""
    from apache_beam.options.pipeline_options import PipelineOptions

    from transforms import storage

    if not storage.is_remote(model) and not os.path.exists(model):
        raise P.PredictError(f"model {model} does not exist")
    settings = PredictSettings(model=model, out=os.path.abspath(out), overlap=overlap, batch_size=batch_size,
                               extras=tuple(extras), **tile_kwargs)
    t0 = time.perf_counter()
    p = beam.Pipeline(options=PipelineOptions(beam_argv(beam_args)))
    build(p, tiles, settings)
    try:
        p.run().wait_until_finish()
    except Exception as e:  # noqa: BLE001 - a failed job: one clear line
        msg = str(e).strip().splitlines()[-1][:500] if str(e).strip() else ""
        print(f"benbeam predict: error: the pipeline failed: {type(e).__name__}: {msg}", file=sys.stderr)
        return 1
    with open(os.path.join(out, SUMMARY), encoding="utf-8") as fh:
        summary = json.load(fh)
    for s in summary["tiles"]:
        P._print_summary(s, os.path.join(out, s["dir"]))
    for f in summary["failures"]:
        print(f"benbeam predict: error: {f['tile']} ({f['stage']}): {f['reason']}", file=sys.stderr)
    print(f"{summary['mapped']} tiles mapped, {summary['failed']} failed in {time.perf_counter() - t0:.1f} s; "
          f"wrote {os.path.join(out, SUMMARY)} and {os.path.join(out, P.VIEWER)}")
    return 0 if not summary["failures"] else 1
