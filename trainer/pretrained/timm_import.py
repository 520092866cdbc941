"""Import ``timm`` beside a torch whose matching torchvision cannot load its compiled operators.

timm imports torchvision at import time (``torchvision.ops.misc.FrozenBatchNorm2d``). The
package index holds only CUDA builds of torchvision; next to a CPU build of torch (the
project's ``torch==2.13.0``) torchvision's ``_C`` extension fails to load (it links
``libc10_cuda.so``), and torchvision's ``__init__`` then fails in ``_meta_registrations``,
which registers fake kernels for operators (``torchvision::nms`` …) that were never defined.

The models timm builds for the reBEN checkpoints use none of those operators. When — and only
when — torchvision's extension cannot be loaded, ``import_timm`` stands in an empty module for
``torchvision._meta_registrations`` (kernels for operators that do not exist) before importing;
the rest of torchvision (pure Python: ``ops.misc``, ``transforms``) imports as usual, and
torchvision's detection operators raise if ever called. With a torchvision that loads, nothing
is changed.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import sys
import types

from bigearthnet_beam.schemas.errors import UnavailableError

INSTALL_HINT = "pip install 'bigearthnet-beam[pretrained]'"


class PretrainedExtraMissing(UnavailableError):
    """torch / timm / safetensors / huggingface_hub is not installed (exit 3)."""


def _extension_loads(spec) -> bool:
    import torch

    folders = list(spec.submodule_search_locations or [])
    libs = [p for f in folders for p in sorted(glob.glob(os.path.join(f, "_C*.so")))]
    if not libs:
        return False
    try:
        torch.ops.load_library(libs[0])
    except OSError:
        return False
    return True


def import_timm():
    """``timm``, imported as described in the module docstring; ``PretrainedExtraMissing`` when absent."""
    if "timm" in sys.modules:
        return sys.modules["timm"]
    missing = [m for m in ("torch", "timm", "torchvision") if importlib.util.find_spec(m) is None]
    if missing:
        raise PretrainedExtraMissing(f"{', '.join(missing)} is not installed; {INSTALL_HINT}")
    if "torchvision" not in sys.modules:
        spec = importlib.util.find_spec("torchvision")
        if not _extension_loads(spec):
            name = "torchvision._meta_registrations"
            stand_in = types.ModuleType(name)
            stand_in.__doc__ = "empty: torchvision's compiled operators are not loaded (bigearthnet_beam)"
            sys.modules.setdefault(name, stand_in)
    import timm

    return timm
