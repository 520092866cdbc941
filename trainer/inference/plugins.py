"""``--extra``: user layer functions ``f(probs float32[h, w, K]) -> 2-D array | {name: 2-D array}``,
loaded from an importable module or a ``.py`` file and called once per chunk."""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import sys
from dataclasses import dataclass, field

import numpy as np

from bigearthnet_beam.trainer.inference.layers import BUILTIN_LAYERS
from bigearthnet_beam.trainer.inference.settings import PredictError

_LAYER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


@dataclass
class Extra:
    """A user layer function ``f(probs float32[h, w, K]) -> 2-D array | {name: 2-D array}``."""

    spec: str
    fn: object = field(repr=False)
    names: tuple[str, ...] | None = None  # fixed by the first chunk

    def __call__(self, probs: np.ndarray) -> dict[str, np.ndarray]:
        """The layers of the user function on ``probs`` as ``{name: float32[h, w]}``; PredictError if malformed."""
        h, w = probs.shape[:2]
        try:
            res = self.fn(probs)
        except Exception as e:
            raise RuntimeError(f"--extra {self.spec} raised {type(e).__name__}: {e}") from e
        if isinstance(res, dict):
            out = dict(res)
        else:
            out = {getattr(self.fn, "__name__", "").strip("_<>") or "extra": res}
        layers = {}
        for name, arr in out.items():
            if not isinstance(name, str) or not _LAYER_NAME.match(name) or name in BUILTIN_LAYERS:
                raise PredictError(
                    f"--extra {self.spec} returned a layer named {name!r}: names must be letters, "
                    f"digits, '_' or '-' and none of {', '.join(BUILTIN_LAYERS)}"
                )
            a = np.asarray(arr)
            if a.shape != (h, w) or not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
                raise PredictError(
                    f"--extra {self.spec} returned {name!r} with shape {a.shape} and dtype {a.dtype}; "
                    f"it must return a numeric 2-D array of the input's (h, w) = {(h, w)}"
                )
            layers[name] = a.astype(np.float32)
        if self.names is None:
            self.names = tuple(layers)
        elif tuple(layers) != self.names:
            raise PredictError(
                f"--extra {self.spec} returned layers {sorted(layers)} on one chunk and "
                f"{sorted(self.names)} on another; it must return the same names every time"
            )
        return layers


def load_extra(spec: str) -> Extra:
    """``module:function`` (an importable module) or ``path/to/file.py:function``."""
    mod_name, sep, fn_name = str(spec).rpartition(":")
    if not sep or not mod_name or not fn_name:
        raise PredictError(
            f"--extra {spec!r} must be module:function (e.g. mylayers:water_mask) or path/to/file.py:function"
        )
    try:
        if mod_name.endswith(".py"):
            if not os.path.isfile(mod_name):
                raise PredictError(f"--extra {spec}: file {mod_name} does not exist")
            key = "benbeam_extra_" + re.sub(r"\W", "_", os.path.abspath(mod_name))
            module = sys.modules.get(key)
            if module is None:
                s = importlib.util.spec_from_file_location(key, mod_name)
                module = importlib.util.module_from_spec(s)
                s.loader.exec_module(module)
                sys.modules[key] = module
        else:
            if os.getcwd() not in sys.path and "" not in sys.path:
                sys.path.append(os.getcwd())
            module = importlib.import_module(mod_name)
    except PredictError:
        raise
    except Exception as e:  # noqa: BLE001 - any import failure is the user's to fix
        raise PredictError(f"--extra {spec}: cannot import {mod_name}: {type(e).__name__}: {e}") from None
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise PredictError(f"--extra {spec}: {mod_name} has no function {fn_name!r}")
    return Extra(spec, fn)
