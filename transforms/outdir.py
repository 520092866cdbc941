"""Output folders: whose they are, and who writes to them now (plain Python, no Beam).

A command writes only into a folder that is empty (or new), or that holds an earlier run
of the same command — complete or interrupted — recognised by the marker file it wrote
first (``.benbeam-run.json``). Anything else is refused with a message (``OutputRefused``,
exit 2): nothing this tool did not write is deleted or overwritten.

A lock file (``.benbeam-lock.json``: pid, host, start time) makes a second run into the
same local folder fail at once (``OutputBusy``); a lock left by a process that no longer
runs on this host is taken over. Object-store folders get the marker but no lock (a
plain PUT cannot create-if-absent): do not start two runs into one bucket prefix.
"""

from __future__ import annotations

import datetime
import errno
import json
import os
import socket
import tempfile

from bigearthnet_beam.schemas import errors
from bigearthnet_beam.transforms import storage

MARKER = ".benbeam-run.json"
LOCK = ".benbeam-lock.json"
# Names an earlier run of a command leaves (complete or interrupted), besides the marker and lock.
_OWN_TOP = {"benbeam convert": ("dataset.json",)}


class OutputRefused(errors.InputError):
    """The output folder holds something this command did not write."""


class OutputBusy(errors.UnavailableError, RuntimeError):
    """Another live run holds the output folder's lock."""


class OutputUnwritable(errors.UnavailableError):
    """The output cannot be written here: a read-only file system, a refused permission (exit 3)."""


def unwritable(out: str, e: OSError, flag: str = "--out") -> OutputUnwritable:
    """The one line for an output location the file system refuses."""
    why = "is on a read-only file system" if e.errno == errno.EROFS else "cannot be written (permission denied)"
    return OutputUnwritable(f"{flag} {out} {why}; choose another {flag}")


def check_writable(out: str, flag: str = "--out") -> None:
    """Refuse (OutputUnwritable, nothing created) a local output whose nearest existing
    folder cannot be written: read-only file system, permissions. Remote outputs pass."""
    if storage.is_remote(out):
        return
    here = os.path.abspath(out)
    while not os.path.lexists(here) and os.path.dirname(here) != here:
        here = os.path.dirname(here)
    if not os.path.isdir(here):
        return  # a file in the way: the command's own check says so
    try:  # a probe file, removed at once: the only test that holds for root and every file system
        fd, probe = tempfile.mkstemp(prefix=".benbeam-write-probe-", dir=here)
    except OSError as e:
        if e.errno in errors.ENVIRONMENT_ERRNOS:
            raise unwritable(out, e, flag) from None
        raise
    os.close(fd)
    os.unlink(probe)


def _st(st):
    return st if st is not None else storage.Storage()


def _read_json(url: str, st=None):
    try:
        return json.loads(_st(st).read_bytes(url))
    except Exception:  # noqa: BLE001 - unreadable or not JSON: not ours
        return None


def _listing(out: str, st=None) -> list[str] | None:
    """Names at the top of ``out``; None if it does not exist; OutputRefused if it is a file."""
    if not storage.is_remote(out):
        if not os.path.lexists(out):
            return None
        if not os.path.isdir(out):
            raise OutputRefused(f"--out {out} is a file, not a folder; give a new or empty folder")
        return sorted(os.listdir(out))
    fs = _st(st).filesystem(out)
    try:
        return sorted(os.path.basename(str(p).rstrip("/")) for p in fs.ls(out, detail=False))
    except FileNotFoundError:
        return None


def is_ours(out: str, command: str, st=None) -> bool:
    """``out`` holds the marker of an earlier run of ``command`` (or, from before markers,
    a manifest it wrote)."""
    marker = _read_json(storage.join(out, MARKER), st)
    if isinstance(marker, dict):
        return marker.get("command") == command
    for name in _OWN_TOP.get(command, ()):
        doc = _read_json(storage.join(out, name), st)
        if isinstance(doc, dict) and doc.get("created_by") == command:
            return True
    return False


def check(out: str, command: str, st=None) -> None:
    """Raise OutputRefused unless ``out`` is new, empty, or an earlier run of ``command``
    (``st``: the ``Storage`` it is read under; default ``Storage()``)."""
    names = _listing(out, st)
    # Only a lock, or the temporary file of a marker being written when a run was killed: as empty.
    if not [n for n in names or () if n != LOCK and not n.startswith(f".tmp-{MARKER}-")]:
        return
    if is_ours(out, command, st):
        return
    marker = _read_json(storage.join(out, MARKER), st)
    whose = f" (it holds a run of `{marker.get('command')}`)" if isinstance(marker, dict) else ""
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    raise OutputRefused(
        f"--out {out} is not empty and was not written by `{command}`{whose}: it holds {shown}; "
        "nothing there is deleted or overwritten — choose a new or empty folder"
    )


def mark(out: str, command: str, st=None) -> None:
    """Write the marker (first, before any output) that makes ``out`` recognisably ours."""
    st = _st(st)
    st.makedirs(out)
    url = storage.join(out, MARKER)
    if isinstance(_read_json(url, st), dict):
        return
    doc = {"command": command, "note": "written by benbeam: this folder holds its output"}
    st.write_bytes_atomic(url, (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Lock:
    """The lock of a local output folder, held while a command writes there."""

    def __init__(self, out: str, command: str):
        self.out, self.command = out, command
        self.path = None if storage.is_remote(out) else os.path.join(out, LOCK)
        self.created = False  # this process made the folder (removed again if left empty)

    def acquire(self) -> "Lock":
        """Take the lock, or raise OutputBusy naming its live holder."""
        if self.path is None:
            return self
        if not os.path.isdir(self.out):
            try:
                os.makedirs(self.out, exist_ok=True)
            except OSError as e:
                if e.errno in errors.ENVIRONMENT_ERRNOS:
                    raise unwritable(self.out, e) from None
                raise OutputRefused(f"output {self.out} is not writable: it cannot be created ({e})") from None
            self.created = True
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": self.command,
            "since": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                holder = _read_json(self.path)
                if not isinstance(holder, dict):
                    holder = {}
                pid, host = holder.get("pid"), holder.get("host")
                if host == me["host"] and isinstance(pid, int) and not _alive(pid):
                    try:  # a stale lock of a process that died on this host: take it over
                        os.unlink(self.path)
                    except FileNotFoundError:
                        pass
                    continue
                raise OutputBusy(
                    f"--out {self.out} is in use by another run (`{holder.get('command', '?')}`, "
                    f"pid {pid} on host {host}, since {holder.get('since', '?')}); wait for it to "
                    f"finish, or, if that process is gone, remove {self.path}"
                ) from None
            with os.fdopen(fd, "w") as fh:
                json.dump(me, fh)
            return self
        raise OutputBusy(f"--out {self.out}: could not take the lock {self.path}")

    def release(self) -> None:
        """Remove the lock if this process holds it."""
        if self.path is None:
            return
        holder = _read_json(self.path)
        if isinstance(holder, dict) and holder.get("pid") == os.getpid():
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
        if self.created:
            try:  # a run that stopped before writing anything but its marker leaves no folder
                if os.listdir(self.out) == [MARKER]:
                    os.unlink(os.path.join(self.out, MARKER))
                os.rmdir(self.out)  # only if empty
            except OSError:
                pass

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def claim(out: str, command: str, st=None) -> Lock:
    """Check ``out`` (OutputRefused) and take its lock (OutputBusy); returns the lock. The
    caller then ``mark``s the folder, before writing anything else (a write probe included),
    so that whatever a killed run leaves is recognisably its own."""
    check(out, command, st)
    lock = Lock(out, command).acquire()
    try:
        check(out, command, st)  # something written between the first check and the lock
    except BaseException:
        lock.release()
        raise
    return lock
