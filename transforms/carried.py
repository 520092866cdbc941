"""Exit codes that survive a runner's process boundary.

A DoFn that raises in a worker process reaches the driver as the runner's own exception
(the DirectRunner's multi-process mode: a ``RuntimeError`` holding the worker's traceback
as text), so the original type is gone. ``carried()`` wraps a DoFn's work: an exception
with an exit code (``schemas.errors.exit_code``: ours, or a full disk) is re-raised as a
``WorkerFailure`` whose message starts with a machine-readable tag, ``[benbeam-exit 3
OSError]``; ``exit_code_of`` reads the type first and that tag second. Plain Python (no Beam).
"""

from __future__ import annotations

import errno
import re
from contextlib import contextmanager
from typing import Iterator

from bigearthnet_beam.schemas import errors

DISK_FULL = "DiskFull"  # the kind of an OSError ENOSPC / EDQUOT (a full disk or quota)
_TAG = re.compile(r"\[benbeam-exit (\d+) ([A-Za-z_][A-Za-z0-9_.]*)\]")


class WorkerFailure(RuntimeError):
    """An error with an exit code, raised in a worker, tagged so that the driver still knows its code."""

    def __init__(self, code: int, kind: str, message: str):
        super().__init__(f"[benbeam-exit {code} {kind}] {message}")
        self.code, self.kind, self.message = code, kind, message

    def __reduce__(self):
        return (WorkerFailure, (self.code, self.kind, self.message))


@contextmanager
def carried() -> Iterator[None]:
    """Re-raise an exception that has an exit code as a tagged ``WorkerFailure`` (others unchanged)."""
    try:
        yield
    except WorkerFailure:
        raise
    except Exception as e:
        code = errors.exit_code(e)
        if code is None:
            raise
        raise WorkerFailure(code, kind_of(e), str(e)) from e


def kind_of(exc: BaseException) -> str:
    """The name an exception is classified under: ``DISK_FULL`` for a full disk, else its type's name."""
    if isinstance(exc, OSError) and not isinstance(exc, errors.BenBeamError):
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return DISK_FULL
    return type(exc).__name__


def _chain(exc: BaseException | None):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def exit_code_of(exc: BaseException) -> tuple[int, str] | None:
    """``(exit code, type name)`` of a failed run's exception: by the type of an exception in its
    chain, else by a ``WorkerFailure`` tag a worker put in it; None when it carries neither."""
    for e in _chain(exc):
        if isinstance(e, WorkerFailure):
            return e.code, e.kind
        code = errors.exit_code(e)
        if code is not None:
            return code, kind_of(e)
    for e in _chain(exc):
        m = _TAG.search(str(e))
        if m:
            return int(m.group(1)), m.group(2)
    return None


def message_of(exc: BaseException) -> str:
    """The original message of the exception ``exit_code_of`` found (its last line, at most 500 characters)."""
    for e in _chain(exc):
        if isinstance(e, WorkerFailure):
            return e.message
        if errors.exit_code(e) is not None:
            return str(e)
    for e in _chain(exc):
        text = str(e)
        m = _TAG.search(text)
        if m:
            rest = text[m.end() :].strip().splitlines()
            return (rest[0] if rest else "")[:500]
    text = str(exc).strip()
    return text.splitlines()[-1][:500] if text else type(exc).__name__
