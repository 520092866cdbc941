"""bigearthnet-beam: BigEarthNet v2.0 (reBEN) to training-ready sharded TFRecords with Apache Beam.

The public API (docs/python-api.md): Beam transforms that read the metadata, check objects,
compute statistics and write the complete dataset inside any pipeline; the storage value
they take; the exception hierarchy; the readers. Every name is imported on first use, so
``import bigearthnet_beam`` imports neither Beam nor TensorFlow nor PyTorch (the PyTorch
reader runs without Beam or TensorFlow installed).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from bigearthnet_beam.schemas import __version__ as __version__

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ imports each on first use
    from bigearthnet_beam.beam_pipeline.dataset import ComputeStatistics as ComputeStatistics
    from bigearthnet_beam.beam_pipeline.dataset import ConvertDataset as ConvertDataset
    from bigearthnet_beam.beam_pipeline.objects import ValidateObjects as ValidateObjects
    from bigearthnet_beam.schemas.errors import BenBeamError as BenBeamError
    from bigearthnet_beam.schemas.errors import ContainmentError as ContainmentError
    from bigearthnet_beam.schemas.errors import InputError as InputError
    from bigearthnet_beam.schemas.errors import IntegrityError as IntegrityError
    from bigearthnet_beam.schemas.errors import StorageError as StorageError
    from bigearthnet_beam.schemas.errors import UnavailableError as UnavailableError
    from bigearthnet_beam.trainer.data import make_dataset as make_dataset
    from bigearthnet_beam.trainer.torch_data import BenDataset as BenDataset
    from bigearthnet_beam.transforms.combiners import BandStatsCombineFn as BandStatsCombineFn
    from bigearthnet_beam.transforms.combiners import StatisticsCombineFn as StatisticsCombineFn
    from bigearthnet_beam.transforms.ptransforms import DecodePatches as DecodePatches
    from bigearthnet_beam.transforms.ptransforms import ReadMetadata as ReadMetadata
    from bigearthnet_beam.transforms.statistics import NoStatisticsError as NoStatisticsError
    from bigearthnet_beam.transforms.storage import Storage as Storage

# public name -> (module, attribute; None: the module itself)
_LAZY: dict[str, tuple[str, str | None]] = {
    # Beam transforms and combiners (the base install)
    "ReadMetadata": ("bigearthnet_beam.transforms.ptransforms", "ReadMetadata"),
    "ConvertDataset": ("bigearthnet_beam.beam_pipeline.dataset", "ConvertDataset"),
    "ComputeStatistics": ("bigearthnet_beam.beam_pipeline.dataset", "ComputeStatistics"),
    "ValidateObjects": ("bigearthnet_beam.beam_pipeline.objects", "ValidateObjects"),
    "DecodePatches": ("bigearthnet_beam.transforms.ptransforms", "DecodePatches"),
    "StatisticsCombineFn": ("bigearthnet_beam.transforms.combiners", "StatisticsCombineFn"),
    "BandStatsCombineFn": ("bigearthnet_beam.transforms.combiners", "BandStatsCombineFn"),
    # storage and errors (no Beam)
    "Storage": ("bigearthnet_beam.transforms.storage", "Storage"),
    "BenBeamError": ("bigearthnet_beam.schemas.errors", "BenBeamError"),
    "IntegrityError": ("bigearthnet_beam.schemas.errors", "IntegrityError"),
    "InputError": ("bigearthnet_beam.schemas.errors", "InputError"),
    "ContainmentError": ("bigearthnet_beam.schemas.errors", "ContainmentError"),
    "UnavailableError": ("bigearthnet_beam.schemas.errors", "UnavailableError"),
    "StorageError": ("bigearthnet_beam.schemas.errors", "StorageError"),
    "NoStatisticsError": ("bigearthnet_beam.transforms.statistics", "NoStatisticsError"),
    # readers: tf.data (the [train] extra), PyTorch (the [torch] extra), the reBEN authors' models
    "make_dataset": ("bigearthnet_beam.trainer.data", "make_dataset"),
    "BenDataset": ("bigearthnet_beam.trainer.torch_data", "BenDataset"),
    "pretrained": ("bigearthnet_beam.pretrained", None),
}


def __getattr__(name: str) -> Any:
    """A public name, imported on first use."""
    if name not in _LAZY:
        raise AttributeError(f"module 'bigearthnet_beam' has no attribute {name!r}")
    module, attr = _LAZY[name]
    value = importlib.import_module(module)
    return value if attr is None else getattr(value, attr)


def __dir__() -> list[str]:
    """The public names."""
    return sorted(__all__)


__all__ = [
    "BandStatsCombineFn",
    "BenBeamError",
    "BenDataset",
    "ComputeStatistics",
    "ContainmentError",
    "ConvertDataset",
    "DecodePatches",
    "InputError",
    "IntegrityError",
    "NoStatisticsError",
    "ReadMetadata",
    "StatisticsCombineFn",
    "Storage",
    "StorageError",
    "UnavailableError",
    "ValidateObjects",
    "__version__",
    "make_dataset",
    "pretrained",
]
