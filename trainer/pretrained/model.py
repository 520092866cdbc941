"""Load a reBEN authors' model (``config.json`` + ``model.safetensors``) from a folder or the Hub.

The authors save a Lightning module through ``huggingface_hub``'s ``PyTorchModelHubMixin``;
its ``model`` attribute is a ``configilm.ConfigILM.ConfigILM`` whose ``vision_encoder`` is a
``timm`` model. So ``config.json`` holds the fields of ``configilm.ConfigILM.ILMConfiguration``
(``timm_model_name``, ``channels``, ``classes``, ``image_size``, ``network_type``, ``drop_rate``,
``drop_path_rate`` …) and the weights are keyed ``model.vision_encoder.<timm keys>``. For an
image classifier ``ConfigILM.forward`` is ``vision_encoder(x)``: the network here is that timm
model itself, created as configilm creates it (``pretrained=False``, ``num_classes=classes``,
``img_size=image_size``, ``in_chans=channels``, ``drop_rate``, ``drop_path_rate``; a keyword the
model does not take is left out), with the checkpoint's weights loaded strictly.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from bigearthnet_beam.schemas.classes import CLASS_NAMES, NUM_CLASSES
from bigearthnet_beam.schemas.errors import InputError, UnavailableError
from bigearthnet_beam.trainer.pretrained import authors
from bigearthnet_beam.trainer.pretrained.timm_import import INSTALL_HINT, PretrainedExtraMissing, import_timm

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
KEY_PREFIXES = ("model.vision_encoder.", "vision_encoder.")  # Lightning module's, ConfigILM's
IMAGE_CLASSIFICATION = 0  # configilm.ConfigILM.ILMType.IMAGE_CLASSIFICATION
HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*)(?:@(?P<rev>[\w./-]+))?$")
DEFAULT_BATCH = 64


class PretrainedModelError(InputError):
    """A model folder or hub repository that is not a usable reBEN authors' model (exit 2)."""


class UnknownArchitectureError(PretrainedModelError):
    """``timm_model_name`` names no model of the installed timm, or not an image classifier."""


class WeightsMismatchError(PretrainedModelError):
    """``model.safetensors`` does not fit the network ``config.json`` describes."""


class ModelNotAvailableError(UnavailableError):
    """A hub model that is not in the local cache and cannot be downloaded (offline) (exit 3)."""


class DeviceUnavailableError(UnavailableError):
    """``device='cuda'`` where torch sees no CUDA GPU (exit 3)."""


def is_pretrained_ref(ref: str) -> bool:
    """Whether ``ref`` names an authors'-format model: a local folder holding ``config.json``, or a
    hub id ``ORG/NAME[@revision]`` that is not a local path (a ``.keras`` file is ours)."""
    ref = str(ref)
    if os.path.isdir(ref):
        return os.path.isfile(os.path.join(ref, CONFIG_FILE))
    if os.path.exists(ref) or "://" in ref or ref.endswith(".keras"):
        return False
    return HUB_ID.match(ref) is not None


def split_ref(ref: str, revision: str | None = None) -> tuple[str, str | None]:
    """``ORG/NAME@rev`` → (``ORG/NAME``, ``rev``); ``revision`` when given must agree."""
    m = HUB_ID.match(str(ref))
    if m is None:
        raise PretrainedModelError(
            f"model {ref!r} is neither a folder holding {CONFIG_FILE} and {WEIGHTS_FILE} nor a Hugging Face "
            "hub id ORG/NAME[@revision] (e.g. BIFOLD-BigEarthNetv2-0/resnet50-s2-v0.2.0)"
        )
    rev = m.group("rev")
    if rev and revision and rev != revision:
        raise PretrainedModelError(f"model {ref!r} names revision {rev!r} but revision={revision!r} was given")
    return m.group("repo"), rev or revision


def resolve(ref: str, revision: str | None = None) -> tuple[str, str]:
    """(config.json path, model.safetensors path) of a folder or a hub id, through the hub cache."""
    ref = str(ref)
    if os.path.isdir(ref):
        if revision:
            raise PretrainedModelError(f"model {ref} is a local folder: it has no revision ({revision!r})")
        paths = tuple(os.path.join(ref, f) for f in (CONFIG_FILE, WEIGHTS_FILE))
        missing = [os.path.basename(p) for p in paths if not os.path.isfile(p)]
        if missing:
            raise PretrainedModelError(f"model folder {ref} has no {' and no '.join(missing)}")
        return paths
    repo, rev = split_ref(ref, revision)
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import (
            EntryNotFoundError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError:
        raise PretrainedExtraMissing(f"huggingface_hub is not installed; {INSTALL_HINT}") from None
    out = []
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        try:
            out.append(hf_hub_download(repo, name, revision=rev))
        except LocalEntryNotFoundError:
            raise ModelNotAvailableError(
                f"model {repo}{'@' + rev if rev else ''}: {name} is not in the Hugging Face cache "
                f"({_cache_dir()}) and cannot be downloaded here; online, run `hf download {repo} "
                f"config.json model.safetensors{' --revision ' + rev if rev else ''}` (same HF_HOME; "
                "huggingface-cli download with huggingface_hub < 1), then set HF_HUB_OFFLINE=1"
            ) from None
        except RepositoryNotFoundError:
            raise PretrainedModelError(f"model {repo}: no such repository on the Hugging Face Hub") from None
        except RevisionNotFoundError:
            raise PretrainedModelError(f"model {repo}: no revision {rev!r}") from None
        except EntryNotFoundError:
            raise PretrainedModelError(f"model {repo}{'@' + rev if rev else ''} has no {name}") from None
    return out[0], out[1]


def _cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def read_config(path: str) -> dict:
    """The ``ILMConfiguration`` fields of a ``config.json`` (flat, or nested under ``"config"``), checked."""
    try:
        with open(path, encoding="utf-8") as fh:
            cfg = json.load(fh)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PretrainedModelError(f"{path}: not a readable JSON file ({e})") from None
    if isinstance(cfg, dict) and "timm_model_name" not in cfg and isinstance(cfg.get("config"), dict):
        cfg = cfg["config"]
    if not isinstance(cfg, dict) or not isinstance(cfg.get("timm_model_name"), str):
        raise PretrainedModelError(
            f"{path} holds no ILMConfiguration (no timm_model_name): not a model saved by the reBEN authors' code"
        )
    net = cfg.get("network_type", IMAGE_CLASSIFICATION)
    if str(net).rsplit(".", 1)[-1] not in (str(IMAGE_CLASSIFICATION), "IMAGE_CLASSIFICATION"):
        raise UnknownArchitectureError(
            f"{path}: network_type {net!r} is not an image classifier (ILMType.IMAGE_CLASSIFICATION = 0)"
        )
    for key in ("channels", "classes", "image_size"):
        v = cfg.get(key)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise PretrainedModelError(f"{path}: {key} must be a positive integer, got {v!r}")
    if cfg["classes"] != NUM_CLASSES:
        raise PretrainedModelError(f"{path}: the model has {cfg['classes']} classes; BigEarthNet v2.0 has 19")
    if cfg["image_size"] != authors.IMAGE_SIZE:
        raise PretrainedModelError(f"{path}: image_size {cfg['image_size']}; the reBEN input is 120 x 120")
    authors.bands_for_channels(cfg["channels"])  # ChannelCountError
    return cfg


def build_module(cfg: Mapping):
    """The untrained timm network ``cfg`` describes, created as configilm creates it."""
    timm = import_timm()
    name = cfg["timm_model_name"]
    if not timm.is_model(name):
        raise UnknownArchitectureError(
            f"timm_model_name {name!r} is not a model of the installed timm {timm.__version__} (see timm.list_models())"
        )
    kwargs = {
        "pretrained": False,
        "num_classes": cfg["classes"],
        "in_chans": cfg["channels"],
        "drop_rate": cfg.get("drop_rate", 0.2),
        "drop_path_rate": cfg.get("drop_path_rate"),
        "img_size": cfg["image_size"],
    }
    optional = ["img_size", "drop_path_rate", "drop_rate"]  # what configilm would drop when refused
    while True:
        try:
            return timm.create_model(name, **kwargs)
        except TypeError:
            if not optional:
                raise
            kwargs.pop(optional.pop(0))


def load_weights(module, path: str, name: str) -> None:
    """Load ``model.safetensors`` into the timm ``module`` strictly (prefix ``model.vision_encoder.``)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(path)
    except (OSError, SafetensorError) as e:
        raise PretrainedModelError(f"{path}: not a readable safetensors file ({e})") from None
    prefix = next((p for p in KEY_PREFIXES if state and all(k.startswith(p) for k in state)), None)
    if prefix is None:
        raise WeightsMismatchError(
            f"{path}: the weights are not keyed {KEY_PREFIXES[0]}<timm keys> (first key: {next(iter(state), None)!r})"
        )
    state = {k[len(prefix) :]: v for k, v in state.items()}
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        detail = " ".join(str(e).split())[:400]
        raise WeightsMismatchError(
            f"{path}: the weights do not fit timm model {name!r} as config.json describes it: {detail}"
        ) from None


def check_device(device: str):
    """``torch.device(device)``; ``DeviceUnavailableError`` for CUDA where torch sees no GPU."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(f"device {device!r} is not a torch device (cpu, cuda, cuda:1, ...)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailableError(
            f"device {device!r}: torch {torch.__version__} sees no CUDA GPU "
            f"({'built without CUDA' if torch.version.cuda is None else 'no device visible'}); use --device cpu"
        )
    if dev.type not in ("cpu", "cuda"):
        raise InputError(f"device {device!r}: only cpu and cuda are supported")
    return dev


@dataclass
class PretrainedModel:
    """A loaded authors' model: its input ``bands`` (model order), the eval-mode timm ``module``
    (normalised (N, C, 120, 120) float32 → (N, 19) logits in the authors' class order) and
    ``predict_proba`` (raw bands → sigmoid probabilities in this project's class order)."""

    ref: str
    config: dict
    module: object
    device: object
    config_path: str = ""
    weights_path: str = ""
    bands: tuple[str, ...] = field(init=False)

    def __post_init__(self):
        self.bands = authors.bands_for_channels(self.config["channels"])

    @property
    def architecture(self) -> str:
        """The timm model name."""
        return self.config["timm_model_name"]

    @property
    def classes(self) -> tuple[str, ...]:
        """The class names of ``predict_proba``'s columns (this project's canonical order)."""
        return CLASS_NAMES

    def logits(self, x) -> np.ndarray:
        """float32 (N, 19) logits in the AUTHORS' class order of normalised (N, C, 120, 120) input."""
        import torch

        t = torch.as_tensor(np.ascontiguousarray(x, dtype=np.float32))
        if t.ndim != 4 or t.shape[1] != len(self.bands) or tuple(t.shape[2:]) != (authors.IMAGE_SIZE,) * 2:
            raise authors.MissingBandError(
                f"the model reads (N, {len(self.bands)}, 120, 120) input ({', '.join(self.bands)}); "
                f"got {tuple(t.shape)}"
            )
        with torch.inference_mode():
            return self.module(t.to(self.device)).float().cpu().numpy()

    def proba_normalised(self, x, batch_size: int = DEFAULT_BATCH) -> np.ndarray:
        """float32 (N, 19) sigmoid probabilities in this project's class order of normalised input."""
        x = np.asarray(x, dtype=np.float32)
        out = np.empty((x.shape[0], NUM_CLASSES), dtype=np.float32)
        for b in range(0, x.shape[0], max(1, int(batch_size))):
            out[b : b + batch_size] = authors.to_canonical(authors.sigmoid(self.logits(x[b : b + batch_size])))
        return out

    def preprocess(self, bands: Mapping[str, np.ndarray]) -> np.ndarray:
        """Raw bands at native resolution → the normalised (N, C, 120, 120) input (authors' preprocessing)."""
        return authors.preprocess(bands, self.bands)

    def predict_proba(self, bands: Mapping[str, np.ndarray], batch_size: int = DEFAULT_BATCH) -> np.ndarray:
        """Raw bands of N patches (10 m (N, 120, 120), 20 m (N, 60, 60), 60 m (N, 20, 20), VV/VH in dB)
        → float32 (N, 19) sigmoid probabilities in ``schemas.classes.CLASS_NAMES`` order."""
        return self.proba_normalised(self.preprocess(bands), batch_size=batch_size)


def load(ref: str, *, revision: str | None = None, device: str = "cpu") -> PretrainedModel:
    """Load the authors' model at ``ref`` (a folder or ``ORG/NAME[@revision]`` through the hub cache)."""
    config_path, weights_path = resolve(ref, revision)
    cfg = read_config(config_path)
    dev = check_device(device)
    module = build_module(cfg)
    load_weights(module, weights_path, cfg["timm_model_name"])
    module.eval()
    module.requires_grad_(False)
    module.to(dev)
    return PretrainedModel(
        ref=str(ref), config=cfg, module=module, device=dev, config_path=config_path, weights_path=weights_path
    )
