"""The reBEN authors' published BigEarthNet v2.0 models (Hugging Face org ``BIFOLD-BigEarthNetv2-0``).

    from bigearthnet_beam import pretrained

    m = pretrained.load("BIFOLD-BigEarthNetv2-0/resnet50-s2-v0.2.0")   # or a local folder
    m.bands                        # ('B02', 'B03', ..., 'B12'): the input bands, model order
    m.module                       # eval-mode torch module: normalised (N, C, 120, 120) -> (N, 19) logits
    p = m.predict_proba({"B02": b02, ..., "B11": b11})  # raw bands at native resolution -> (N, 19)
                                   # sigmoid probabilities in schemas.classes.CLASS_NAMES order

Needs the ``[pretrained]`` extra (torch, timm, safetensors, huggingface-hub).
"""

from bigearthnet_beam.trainer.pretrained.authors import ChannelCountError as ChannelCountError
from bigearthnet_beam.trainer.pretrained.authors import MissingBandError as MissingBandError
from bigearthnet_beam.trainer.pretrained.model import DeviceUnavailableError as DeviceUnavailableError
from bigearthnet_beam.trainer.pretrained.model import ModelNotAvailableError as ModelNotAvailableError
from bigearthnet_beam.trainer.pretrained.model import PretrainedModel as PretrainedModel
from bigearthnet_beam.trainer.pretrained.model import PretrainedModelError as PretrainedModelError
from bigearthnet_beam.trainer.pretrained.model import UnknownArchitectureError as UnknownArchitectureError
from bigearthnet_beam.trainer.pretrained.model import WeightsMismatchError as WeightsMismatchError
from bigearthnet_beam.trainer.pretrained.model import is_pretrained_ref as is_pretrained_ref
from bigearthnet_beam.trainer.pretrained.model import load as load
from bigearthnet_beam.trainer.pretrained.timm_import import PretrainedExtraMissing as PretrainedExtraMissing

__all__ = [
    "ChannelCountError",
    "DeviceUnavailableError",
    "MissingBandError",
    "ModelNotAvailableError",
    "PretrainedExtraMissing",
    "PretrainedModel",
    "PretrainedModelError",
    "UnknownArchitectureError",
    "WeightsMismatchError",
    "is_pretrained_ref",
    "load",
]
