"""TensorFlow without its start-up noise on a machine without a GPU (``--verbose`` shows it).

Importing TensorFlow and probing its devices prints, from C++ and before any Python logging is
set up, lines such as ``failed call to cuInit``, ``Unable to register cuDNN factory``, ``oneDNN
custom operations are on`` and ``Could not find cuda drivers``: error-level to the eye, harmless
on a CPU-only machine. ``quiet_tensorflow`` imports TensorFlow and lists its devices with file
descriptor 2 pointed at a temporary file, then copies to stderr every captured line that is not
one of those (``NOISE``), so a genuine error still shows. With ``verbose`` nothing is filtered.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile

# The C++ start-up lines of TensorFlow / XLA / absl on a machine without (a usable) GPU.
NOISE = re.compile(
    r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|^[IWE]\d{4} [\d:.]+\s+\d+ (port|cudart_stub|cuda_platform|cuda_diagnostics|cuda_executor|gpu_device"
    r"|cpu_feature_guard|cuda_dnn|cuda_fft|cuda_blas|computation_placer)\.cc:\d+\]"
    r"|Unable to register cu(DNN|FFT|BLAS) factory"
    r"|failed call to cuInit"
    r"|computation placer already registered"
    r"|TF-TRT Warning: Could not find TensorRT"
    r"|This TensorFlow binary is optimized to use available CPU instructions"
    r"|To enable the following instructions: .* in other operations, rebuild TensorFlow"
)
_STATE = {"done": False, "verbose": False}


def is_noise(line: str) -> bool:
    """Whether a captured line is TensorFlow start-up noise (``NOISE``)."""
    return bool(NOISE.search(line))


def set_verbose(verbose: bool) -> None:
    """Whether ``quiet_tensorflow()`` without an argument shows the start-up lines (``--verbose``)."""
    _STATE["verbose"] = bool(verbose)


def quiet_tensorflow(verbose: bool | None = None):
    """Import TensorFlow and initialise its devices, dropping the start-up noise (module docstring); returns it.
    The commands call it once their flags are parsed, so a refused flag never waits for TensorFlow."""
    if verbose is None:
        verbose = _STATE["verbose"]
    if verbose:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
    else:  # TensorFlow's C++ INFO lines later in the run too (XLA's "Compiled cluster using XLA!"); warnings stay
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    if _STATE["done"] or verbose or "tensorflow" in sys.modules:
        import tensorflow as tf

        return tf
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real stderr (embedded): nothing to filter
        import tensorflow as tf

        return tf
    fd, path = tempfile.mkstemp(prefix="benbeam-tf-", suffix=".log")
    try:
        os.dup2(fd, 2)
        try:
            import tensorflow as tf

            tf.config.list_physical_devices()  # the CUDA probe (cuInit) happens here
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            os.close(fd)
        _STATE["done"] = True
    finally:
        with open(path, errors="replace") as fh:
            kept = [line for line in fh if not is_noise(line)]
        os.unlink(path)
        if kept:
            sys.stderr.write("".join(kept))
            sys.stderr.flush()
    return tf
