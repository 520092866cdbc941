"""The temporary files and folders a command makes for itself (a pipeline's local folder, the
workers' log, the progress folder, the object cache), removed on every way out: each by its
owner when its block ends, and all that are left at once (``remove_all``) when the command is
interrupted, or ended by force after Ctrl-C while a runner did not stop. Only what was
registered here is ever removed. Plain Python; one registry per process.
"""

from __future__ import annotations

import os
import shutil
import threading

_OWNED: list[str] = []
_LOCK = threading.Lock()


def own(path: str) -> str:
    """Register ``path`` (made by this process) for ``remove_all``; returns it."""
    with _LOCK:
        _OWNED.append(path)
    return path


def release(path: str) -> None:
    """Forget ``path``: its owner removed it, or keeps it on purpose (a failed run's log)."""
    with _LOCK:
        while path in _OWNED:
            _OWNED.remove(path)


def remove_all() -> None:
    """Remove every registered path that still exists (a folder with what is in it), and forget them."""
    with _LOCK:
        paths, _OWNED[:] = list(_OWNED), []
    for path in paths:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            try:
                os.unlink(path)
            except OSError:
                pass


def owned() -> list[str]:
    """The registered paths (for tests and diagnostics)."""
    with _LOCK:
        return list(_OWNED)
