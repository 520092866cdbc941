"""Tiny models in the reBEN authors' layout (``config.json`` + ``model.safetensors`` written by
``huggingface_hub``'s ``PyTorchModelHubMixin`` around a module whose ``model.vision_encoder`` is
the timm network), the Hugging Face cache layout, and deterministic raw patches."""

from __future__ import annotations

import hashlib
import os
import shutil

import numpy as np
import pytest

if os.environ.get("CI"):  # the [dev] extra holds [pretrained]: under CI a missing package fails, never skips
    import huggingface_hub
    import safetensors  # noqa: F401
    import torch
else:
    torch = pytest.importorskip("torch")
    pytest.importorskip("safetensors")
    huggingface_hub = pytest.importorskip("huggingface_hub")

from bigearthnet_beam.schemas.bands import BAND_BY_NAME
from bigearthnet_beam.trainer.pretrained.timm_import import import_timm

timm = import_timm()

# The fields of configilm.ConfigILM.ILMConfiguration as asdict() writes them (defaults of 0.7.1)
ILM_DEFAULTS = {
    "hf_model_name": None,
    "image_size": 120,
    "classes": 19,
    "class_names": None,
    "network_type": 0,
    "visual_features_out": 512,
    "fusion_in": 512,
    "fusion_out": 512,
    "fusion_hidden": 256,
    "v_dropout_rate": 0.25,
    "t_dropout_rate": 0.25,
    "fusion_dropout_rate": 0.25,
    "_fusion_method": "torch.mul",
    "_fusion_activation": "nn.Tanh()",
    "drop_rate": 0.2,
    "drop_path_rate": None,
    "use_pooler_output": True,
    "max_sequence_length": 32,
    "load_pretrained_timm_if_available": False,
    "load_pretrained_hf_if_available": True,
    "custom_fusion_method": None,
    "custom_fusion_activation": None,
}


class _ILM(torch.nn.Module):
    """Stands for configilm's ConfigILM of an image classifier: the timm model as ``vision_encoder``."""

    def __init__(self, encoder):
        super().__init__()
        self.vision_encoder = encoder


class AuthorsLayoutModel(torch.nn.Module, huggingface_hub.PyTorchModelHubMixin):
    """Stands for the authors' Lightning module: ``model`` = the ConfigILM; saved by the hub mixin."""

    def __init__(self, config: dict):
        super().__init__()
        kwargs = dict(pretrained=False, num_classes=config["classes"], in_chans=config["channels"])
        self.model = _ILM(timm.create_model(config["timm_model_name"], **kwargs))


def randomise(module, seed: int) -> None:
    """Random weights AND batch-norm statistics, so every parameter and buffer matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(module.named_parameters()) + list(module.named_buffers()):
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(0.5 + torch.rand(t.shape, generator=g))
            else:
                t.copy_(0.2 * torch.randn(t.shape, generator=g))


def save_authors_model(folder: str, timm_name: str = "test_resnet", channels: int = 10, seed: int = 0, **cfg) -> str:
    """A tiny random model saved in the authors' layout into ``folder``; returns ``folder``."""
    config = {**ILM_DEFAULTS, "timm_model_name": timm_name, "channels": channels, **cfg}
    m = AuthorsLayoutModel(config)
    randomise(m, seed)
    m.eval()
    m.save_pretrained(folder, config=config)
    return folder


def timm_reference(folder: str):
    """The timm network of a saved folder built directly (no project code): for comparisons."""
    import json

    from safetensors.torch import load_file

    with open(os.path.join(folder, "config.json")) as fh:
        cfg = json.load(fh)
    net = timm.create_model(
        cfg["timm_model_name"], pretrained=False, num_classes=cfg["classes"], in_chans=cfg["channels"]
    )
    state = load_file(os.path.join(folder, "model.safetensors"))
    net.load_state_dict({k.removeprefix("model.vision_encoder."): v for k, v in state.items()})
    return net.eval()


def hub_cache(cache_dir: str, repo_id: str, folder: str, revision: str = "main") -> str:
    """Put ``folder``'s files into ``cache_dir`` as ``huggingface_hub`` lays out a download:
    ``models--ORG--NAME/{blobs/<hash>, snapshots/<commit>/<file> -> ../../blobs/<hash>,
    refs/<revision>}``. Returns the commit hash."""
    repo_dir = os.path.join(cache_dir, "models--" + repo_id.replace("/", "--"))
    names = sorted(os.listdir(folder))
    digest = hashlib.sha1()
    for n in names:
        with open(os.path.join(folder, n), "rb") as fh:
            digest.update(n.encode() + fh.read())
    commit = digest.hexdigest()
    os.makedirs(os.path.join(repo_dir, "blobs"), exist_ok=True)
    os.makedirs(os.path.join(repo_dir, "snapshots", commit), exist_ok=True)
    os.makedirs(os.path.join(repo_dir, "refs"), exist_ok=True)
    for n in names:
        with open(os.path.join(folder, n), "rb") as fh:
            blob = hashlib.sha256(fh.read()).hexdigest()
        shutil.copyfile(os.path.join(folder, n), os.path.join(repo_dir, "blobs", blob))
        link = os.path.join(repo_dir, "snapshots", commit, n)
        if not os.path.lexists(link):
            os.symlink(os.path.join("..", "..", "blobs", blob), link)
    with open(os.path.join(repo_dir, "refs", revision), "w") as fh:
        fh.write(commit)
    return commit


def patch_bands(n: int, names) -> dict[str, np.ndarray]:
    """Deterministic raw patches (no RNG: the same on every machine): S2 DN 100..4099 float32,
    S1 dB -25..-5; each band (n, s, s) at its native size."""
    out = {}
    for b, name in enumerate(names):
        s = BAND_BY_NAME[name].native_size
        i, j = np.mgrid[0:s, 0:s]
        k = np.arange(n).reshape(-1, 1, 1)
        if name in ("VV", "VH"):
            out[name] = (-25.0 + ((i * 7 + j * 3 + b * 5 + k * 13) % 200) / 10.0).astype(np.float32)
        else:
            out[name] = (100.0 + (i * 37 + j * 11 + b * 101 + k * 997) % 4000).astype(np.float32)
    return out
