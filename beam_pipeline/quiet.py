"""One clear line instead of pages of worker tracebacks (``--debug`` turns this off).

Beam's local worker processes print a traceback to their stderr — inherited from this
process — for every failed bundle, besides sending it to the driver. While a pipeline
runs, ``worker_stderr`` points file descriptor 2 at a log file (in the system's temporary
folder) so those copies land there; this process's own lines still reach the terminal.
The command then prints one line, naming the log when the run failed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile

DEBUG = {"on": False}  # set by the CLI from --debug


@contextlib.contextmanager
def worker_stderr(keep: dict | None = None):
    """Within the block, subprocesses' stderr goes to a log file; ``keep["log"]`` is its path
    (kept if the block raised or ``keep["failed"]`` was set, else removed)."""
    keep = keep if keep is not None else {}
    if DEBUG["on"]:
        yield keep
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield keep
        return
    fd, path = tempfile.mkstemp(prefix="benbeam-workers-", suffix=".log")
    keep["log"] = path
    old = sys.stderr
    swapped = []
    try:
        real = old.fileno() == 2
    except (OSError, ValueError, AttributeError):
        real = False
    os.dup2(fd, 2)
    os.close(fd)
    if real:  # this process's own output keeps going to the terminal
        sys.stderr = open(saved, "w", buffering=1, closefd=False, errors="backslashreplace")
        for h in logging.getLogger().handlers:
            if getattr(h, "stream", None) is old:
                h.setStream(sys.stderr)
                swapped.append(h)
    try:
        yield keep
    except BaseException:
        keep["failed"] = True
        raise
    finally:
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os.dup2(saved, 2)
        os.close(saved)
        if real:
            for h in swapped:
                h.setStream(old)
            ours, sys.stderr = sys.stderr, old
            ours.close()
        if not keep.get("failed"):
            with contextlib.suppress(OSError):
                os.unlink(path)
            keep.pop("log", None)
