"""What a ``benbeam predict`` run needs, as values: the user-error type, the defaults, the
output file names, and ``PredictSettings`` (the frozen config a Beam worker receives)."""

from __future__ import annotations

from dataclasses import dataclass, field

from bigearthnet_beam.schemas import errors
from bigearthnet_beam.transforms.storage import Storage

DEFAULTS = {"chunk_size": 1024, "overlap": 32, "batch_size": 16, "probs_dtype": "uint8", "preview_size": 1024}
PROBS_DTYPES = ("uint8", "float32")
PREVIEW = "preview.png"  # per tile, beside its maps
VIEWER = "viewer.html"  # per run with several tiles
REPORT_CSV = "benchmark_report.csv"  # per --benchmark run
SUMMARY = "summary.json"  # per Beam run


class PredictError(errors.InputError):
    """A user error: bad flags, a model or tile that cannot be used, an unwritable output (exit 2)."""


class PredictEnvironmentError(PredictError, errors.UnavailableError):
    """The environment, not the input: an object store that cannot be reached or written (exit 3)."""

    exit_code = errors.EXIT_ENV


@dataclass(frozen=True)
class PredictSettings:
    """Everything a worker needs to map a tile (plain values: pickles predictably).

    ``storage``: the ``transforms.storage.Storage`` of the launching process; it pickles to
    the workers with the settings, so that they reach the same object stores.
    """

    model: str
    out: str
    chunk_size: int = DEFAULTS["chunk_size"]
    overlap: int = DEFAULTS["overlap"]
    batch_size: int = DEFAULTS["batch_size"]
    save_probs: bool = False
    probs_dtype: str = DEFAULTS["probs_dtype"]
    preview_size: int = DEFAULTS["preview_size"]
    resampling: str = "bilinear"
    extras: tuple[str, ...] = field(default_factory=tuple)
    # an authors' scene classifier (--model ORG/NAME): torch device, how windows become pixels
    device: str = "cpu"
    window_map: str = "nearest"
    storage: Storage = Storage()

    def tile_kwargs(self) -> dict:
        """The keyword arguments of ``trainer.inference.tile.predict_tile`` these settings fix."""
        return dict(
            chunk_size=self.chunk_size,
            save_probs=self.save_probs,
            probs_dtype=self.probs_dtype,
            preview_size=self.preview_size,
        )
