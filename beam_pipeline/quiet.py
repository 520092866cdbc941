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

from bigearthnet_beam.transforms import scratch

DEBUG = {"on": False}  # set by the CLI from --debug
INTERRUPTED = {"on": False}  # set by the CLI on Ctrl-C
LOG_FILE: dict = {}  # "path": the worker log of the pipeline now running (worker_stderr)
# Beam's own threads: their tracebacks (a worker that exited on Ctrl-C, a closed gRPC
# stream) go to the worker log, never to the terminal.
_BEAM_MODULES = ("apache_beam", "grpc")


def _is_beam_thread(args) -> bool:
    tb = args.exc_traceback
    while tb is not None:
        mod = tb.tb_frame.f_globals.get("__name__", "")
        if mod.split(".", 1)[0] in _BEAM_MODULES:
            return True
        tb = tb.tb_next
    return False


def _thread_hook(args) -> None:
    """threading.excepthook: Beam's threads write their traceback to the worker log (or, after
    Ctrl-C with no log, nowhere: the command prints one line); every other thread as usual."""
    if DEBUG["on"] or not _is_beam_thread(args):
        _DEFAULT_HOOK[0](args)
        return
    path = LOG_FILE.get("path")
    if path:
        import traceback

        with contextlib.suppress(OSError), open(path, "a", encoding="utf-8", errors="backslashreplace") as f:
            f.write(f"Exception in thread {getattr(args.thread, 'name', '?')}:\n")
            traceback.print_exception(args.exc_type, args.exc_value, args.exc_traceback, file=f)
    elif not INTERRUPTED["on"]:
        _DEFAULT_HOOK[0](args)


_DEFAULT_HOOK: list = []


class BeamTracebackFilter(logging.Filter):
    """A log handler's filter: Beam's own records that carry a traceback (a failed bundle, a
    worker gone on Ctrl-C) go to the worker log while a pipeline runs; ``--debug`` shows them."""

    def filter(self, record: logging.LogRecord) -> bool:
        if DEBUG["on"] or not record.exc_info or record.name.split(".", 1)[0] not in _BEAM_MODULES:
            return True
        path = LOG_FILE.get("path")
        if path:
            with contextlib.suppress(OSError), open(path, "a", encoding="utf-8", errors="backslashreplace") as f:
                f.write(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s").format(record) + "\n")
            return False
        return not INTERRUPTED["on"]


def install_thread_hook() -> None:
    """Route Beam's thread tracebacks through ``_thread_hook`` (once per process)."""
    import threading

    if not _DEFAULT_HOOK:
        _DEFAULT_HOOK.append(threading.excepthook)
        threading.excepthook = _thread_hook


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
    keep["log"] = LOG_FILE["path"] = scratch.own(path)
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
    except BaseException as e:
        # a failure keeps the log (the command names it); Ctrl-C does not (nothing names it)
        keep["failed"] = not isinstance(e, KeyboardInterrupt)
        INTERRUPTED["on"] = INTERRUPTED["on"] or isinstance(e, KeyboardInterrupt)
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
            LOG_FILE.pop("path", None)
        scratch.release(path)  # removed, or kept for the failure's message


# --------------------------------------------------------------------------- Ctrl-C

INTERRUPT_GRACE_S = 10.0  # after Ctrl-C, the command has this long to end by itself
_GUARD: dict = {}


def new_pipeline(options):
    """A ``beam.Pipeline`` whose local temporary folder an interrupted command removes: Beam
    removes it only at the end of ``run()``, which Ctrl-C during graph building never reaches."""
    import apache_beam as beam

    p = beam.Pipeline(options=options)
    scratch.own(p.local_tempdir)
    return p


def close_clients(results) -> None:
    """Close the cluster clients the command's jobs opened (Beam's DaskRunner opens one per
    job and leaves it connected): otherwise each keeps reconnecting, and logging that it
    cannot, for 30 s after the cluster goes away. ``results``: (name, PipelineResult) pairs."""
    for _, result in results:
        client = getattr(result, "client", None)
        if client is not None and callable(getattr(client, "close", None)):
            with contextlib.suppress(Exception):
                client.close()


def _end_now(line: str) -> None:
    """End the process with the one interrupted line (unless already printed) and exit 130."""
    if not _GUARD.get("printed"):
        with contextlib.suppress(OSError, ValueError):
            print(line, file=sys.stderr, flush=True)
    scratch.remove_all()  # what the command made for itself: its owners' blocks never end now
    os._exit(130)


@contextlib.contextmanager
def interrupt_guard(line: str, grace: float = INTERRUPT_GRACE_S):
    """Within the block, Ctrl-C raises KeyboardInterrupt as usual; if the command has not
    ended ``grace`` seconds later (a Beam runner waiting for a worker that Ctrl-C killed
    during its start), it ends with ``line`` and exit 130. A second Ctrl-C ends it at once.
    Outside the main thread (no signal handlers there) the block changes nothing."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield _GUARD
        return

    def handler(signum, frame):
        INTERRUPTED["on"] = True
        if _GUARD.get("timer") is not None:
            _end_now(line)
        timer = threading.Timer(grace, _end_now, args=(line,))
        timer.daemon = True
        _GUARD["timer"] = timer
        timer.start()
        raise KeyboardInterrupt

    previous = signal.getsignal(signal.SIGINT)
    _GUARD.clear()
    signal.signal(signal.SIGINT, handler)
    try:
        yield _GUARD
    finally:
        signal.signal(signal.SIGINT, previous)
        timer = _GUARD.pop("timer", None)
        if timer is not None:
            timer.cancel()
