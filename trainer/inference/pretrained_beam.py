"""``benbeam predict --input_dir DIR --model ORG/NAME``: tiles mapped by an authors' classifier with
Beam's ``RunInference`` and its PyTorch model handler.

    Create(tile paths) → Reshuffle → TileWindows (DoFn: the tile's normalised 120-px windows,
    keyed (tile, row, col), strip by strip; then the tile's grid) → RunInference(KeyedModelHandler(
    WindowModelHandler)) → sigmoid, canonical class order → GroupByKey(tile) → WriteTileMaps (the
    window table → ``trainer.inference.tile.predict_tile`` with a ``WindowClassifier`` holding it)
    → Finalize (``summary.json``, ``viewer.html``, as the U-Net pipeline)

``WindowModelHandler`` is Beam's ``PytorchModelHandlerTensor``: its batching, device placement
and ``torch.no_grad`` inference are used as they are; only ``load_model`` differs, building the
network through ``trainer.pretrained.load`` (timm + ``model.safetensors``) instead of
``torch.load`` of a state dict. Windows stream from the reading DoFn into RunInference in one
fused stage; the examples are dropped right after inference, so only 19 floats per window reach
the GroupByKey. The tile is read twice (windows, then the validity mask while writing).
A tile that fails becomes a dead letter ``{tile, path, stage, reason}``.
"""

from __future__ import annotations

import contextlib
import logging

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference
from apache_beam.ml.inference.pytorch_inference import PytorchModelHandlerTensor

from bigearthnet_beam.schemas.errors import InputError, UnavailableError
from bigearthnet_beam.trainer.inference import staging
from bigearthnet_beam.trainer.inference.beam import NAMESPACE, Finalize, tile_name, tile_outcome
from bigearthnet_beam.trainer.inference.grid import window_starts
from bigearthnet_beam.trainer.inference.plugins import load_extra
from bigearthnet_beam.trainer.inference.pretrained_predictor import PATCH, WindowClassifier
from bigearthnet_beam.trainer.inference.settings import PredictEnvironmentError, PredictError, PredictSettings
from bigearthnet_beam.trainer.inference.tile import open_tile_at, predict_tile
from bigearthnet_beam.trainer.pretrained import authors
from bigearthnet_beam.transforms import storage

LOG = logging.getLogger("benbeam.predict")
GRID, FAILED, PROBS = "grid", "failed", "probs"  # the tags of a tile's grouped values


def check_model(settings: PredictSettings) -> tuple[str, ...]:
    """Resolve and check the model and the device before the pipeline starts; its input bands."""
    from bigearthnet_beam.trainer.pretrained.model import check_device, read_config, resolve

    try:
        config_path, _ = resolve(settings.model)
        bands = authors.bands_for_channels(read_config(config_path)["channels"])
        check_device(settings.device)
    except UnavailableError as e:
        raise PredictEnvironmentError(str(e)) from None
    except InputError as e:
        raise PredictError(f"cannot use model {settings.model}: {e}") from None
    WindowClassifier(bands=bands, overlap=settings.overlap, window_map=settings.window_map)  # the flag checks
    return bands


def _never_called(**_):
    raise AssertionError("WindowModelHandler.load_model builds the model")


class WindowModelHandler(PytorchModelHandlerTensor):
    """Beam's PyTorch tensor handler for an authors' model (see the module docstring)."""

    def __init__(self, ref: str, device: str = "cpu", max_batch_size: int = 16):
        super().__init__(
            state_dict_path=ref,  # the handler's model id
            model_class=_never_called,
            device="GPU" if device.startswith("cuda") else "CPU",
            min_batch_size=1,
            max_batch_size=max_batch_size,
        )
        self._ref, self._device_name = ref, device

    def load_model(self):
        """The eval-mode timm network with the checkpoint's weights, on the handler's device."""
        from bigearthnet_beam.trainer.pretrained.model import load

        m = load(self._ref, device=self._device_name)
        self._device = m.device
        return m.module


class TileWindowsFn(beam.DoFn):
    """A tile path → ``((path, i, j), float32 tensor[C, 120, 120])`` per window with data, then
    ``(path, ("grid", {...}))``; or ``(path, ("failed", dead letter))``."""

    WINDOWS = "windows"

    def __init__(self, settings: PredictSettings, bands: tuple[str, ...]):
        self.settings, self.bands = settings, tuple(bands)

    def setup(self):
        """The window logic (no model: RunInference holds it); the storage is the settings' value."""
        s = self.settings
        self._cls = WindowClassifier(bands=self.bands, overlap=s.overlap, window_map=s.window_map)

    def process(self, path: str):
        """Read the tile strip by strip and emit its windows."""
        import torch

        s = self.settings
        try:
            s1 = staging.s1_sidecar(path, s.storage) if self._cls.needs_s1 else None
            with open_tile_at(path, self.bands, s1, s.resampling, s.storage) as src:
                rows = window_starts(int(src.height), PATCH, s.overlap)
                cols = window_starts(int(src.width), PATCH, s.overlap)
                n = 0
                for i, y in enumerate(rows):
                    for j, win in self._cls.strip_windows(src, int(y), cols):
                        n += 1
                        yield beam.pvalue.TaggedOutput(self.WINDOWS, ((path, i, j), torch.from_numpy(win)))
                beam.metrics.Metrics.counter(NAMESPACE, "windows_read").inc(n)
                yield path, (GRID, {"rows": rows.tolist(), "cols": cols.tolist()})
        except Exception as e:  # noqa: BLE001 - a dead letter with the reason, the other tiles go on
            beam.metrics.Metrics.counter(NAMESPACE, "tiles_failed_open").inc()
            reason = str(e) if isinstance(e, PredictError) else f"{type(e).__name__}: {e}"
            yield path, (FAILED, {"tile": tile_name(path), "path": path, "stage": "open", "reason": reason})


def window_probs(keyed_result) -> tuple:
    """``((path, i, j), PredictionResult)`` → ``(path, ("probs", (i, j, float32[19])))``: sigmoid
    probabilities in canonical class order; the example tensor is dropped."""
    (path, i, j), result = keyed_result
    logits = result.inference.detach().float().cpu().numpy()
    return path, (PROBS, (int(i), int(j), authors.to_canonical(authors.sigmoid(logits))))


def assemble(items) -> tuple[dict | None, np.ndarray | None, dict | None]:
    """A tile's grouped values → (grid, window table float32[rows, cols, 19] with NaN, dead letter)."""
    grid, failed, probs = None, None, []
    for tag, payload in items:
        if tag == GRID:
            grid = payload
        elif tag == FAILED:
            failed = payload
        else:
            probs.append(payload)
    if failed is not None or grid is None:
        return None, None, failed
    table = np.full((len(grid["rows"]), len(grid["cols"]), len(authors.TO_CANONICAL)), np.nan, dtype=np.float32)
    for i, j, p in probs:
        table[i, j] = p
    return grid, table, None


class WriteTileMapsFn(beam.DoFn):
    """``(path, grouped values)`` → ``("ok", summary)`` or ``("failed", dead letter)``: the maps of one tile."""

    def __init__(self, settings: PredictSettings, bands: tuple[str, ...]):
        self.settings, self.bands = settings, tuple(bands)

    def setup(self):
        """The --extra functions (the storage is the settings' value)."""
        self._extras = [load_extra(e) for e in self.settings.extras]

    def process(self, element):
        """Write the tile's maps from its window table."""
        path, items = element
        s = self.settings
        grid, table, failed = assemble(items)
        if failed is not None:
            yield "failed", failed
            return
        if grid is None:
            yield "failed", {"tile": tile_name(path), "path": path, "stage": "open", "reason": "no window grid"}
            return
        stage = "predict"
        try:
            cls = WindowClassifier(
                bands=self.bands,
                overlap=s.overlap,
                window_map=s.window_map,
                batch_size=s.batch_size,
                table=table,
                path=s.model,
            )
            with contextlib.ExitStack() as stack:
                s1 = staging.s1_sidecar(path, s.storage) if cls.needs_s1 else None
                src = stack.enter_context(open_tile_at(path, self.bands, s1, s.resampling, s.storage))
                out_dir = stack.enter_context(staging.local_folder(storage.join(s.out, src.name), s.storage))
                summary = predict_tile(cls, src, out_dir, extras=self._extras, progress=LOG.info, **s.tile_kwargs())
                stage = "write"
        except Exception as e:  # noqa: BLE001 - a dead letter with the reason, the other tiles go on
            yield tile_outcome(path, stage, error=e)
            return
        yield tile_outcome(path, stage, summary=summary)


def build_pretrained(p: beam.Pipeline, tiles: list[str], settings: PredictSettings, bands: tuple[str, ...]):
    """The pipeline over ``tiles`` (see the module's docstring)."""
    read = (
        p
        | "Tiles" >> beam.Create(sorted(tiles))
        | "Distribute" >> beam.Reshuffle()
        | "TileWindows" >> beam.ParDo(TileWindowsFn(settings, bands)).with_outputs(TileWindowsFn.WINDOWS, main="meta")
    )
    handler = KeyedModelHandler(WindowModelHandler(settings.model, settings.device, settings.batch_size))
    probs = (
        read[TileWindowsFn.WINDOWS]
        | "RunInference" >> RunInference(handler)
        | "Probabilities" >> beam.Map(window_probs)
    )
    return (
        (probs, read.meta)
        | "Merge" >> beam.Flatten()
        | "ByTile" >> beam.GroupByKey()
        | "WriteMaps" >> beam.ParDo(WriteTileMapsFn(settings, bands))
        | "Finalize" >> Finalize(settings.out, settings.storage)
    )
