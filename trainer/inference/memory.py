"""What a tile's summary reports about the machine: peak resident memory and the device."""

from __future__ import annotations


def reset_peak_rss() -> None:
    """Reset the kernel's peak resident set size of this process (Linux ≥ 4.0; else a no-op)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def _status_bytes(field: str) -> int | None:
    """A ``kB`` field of /proc/self/status in bytes (None where /proc is missing)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def rss_bytes() -> int:
    """Current resident set size of this process (VmRSS; 0 where /proc is missing)."""
    return _status_bytes("VmRSS") or 0


def peak_rss_bytes() -> int:
    """Peak resident set size of this process since the last ``reset_peak_rss`` (VmHWM)."""
    hwm = _status_bytes("VmHWM")
    if hwm is not None:
        return hwm
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def device_name() -> str:
    """TensorFlow's first visible GPU (its name, ``×N`` for several) or ``CPU``."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return "CPU"
    try:
        name = tf.config.experimental.get_device_details(gpus[0]).get("device_name") or gpus[0].name
    except Exception:  # noqa: BLE001 - a name is only for the report
        name = gpus[0].name
    return name + (f" ×{len(gpus)}" if len(gpus) > 1 else "")
