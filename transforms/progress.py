"""One overall progress line per pass: patches done / total, %, patches/s, ETA.

On a terminal (stderr) the line is a ``tqdm`` bar refreshed in place; otherwise it is a
timestamped line every ``interval`` seconds (default 10, ``$BENBEAM_PROGRESS_INTERVAL``) plus one
when the pass starts and one when it ends, formatted by ``tqdm.format_meter``.

Beam's workers are other processes, and the local runners return metrics only when the job
has finished, so workers report through files: ``Watcher`` (in the driver) makes a folder,
names it in ``$BENBEAM_PROGRESS_DIR`` (which the DirectRunner's worker processes inherit) and
polls it; ``shard_done`` (in a worker, after each shard) appends ``<stage> <patches>`` to the
folder's file for that process. Without the variable (remote runners: their own consoles show
progress) ``shard_done`` does nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from bigearthnet_beam.transforms import scratch

ENV_DIR = "BENBEAM_PROGRESS_DIR"
ENV_INTERVAL = "BENBEAM_PROGRESS_INTERVAL"
DEFAULT_INTERVAL_S = 10.0
POLL_S = 0.5
LOG_FORMAT = "{desc}: {n_fmt}/{total_fmt}{unit} ({percentage:.0f}%), {rate_noinv_fmt}, ETA {remaining}"
BAR_FORMAT = "{desc}: {n_fmt}/{total_fmt}{unit} {percentage:3.0f}%|{bar}| {rate_noinv_fmt} ETA {remaining}"
TICK_S = 0.25  # a worker reports its patches this often within a shard (the bar moves per patch, not per shard)


def shard_done(stage: str, patches: int) -> None:
    """Worker side: a shard of pass ``stage`` is done with ``patches`` patches (no-op without a watcher)."""
    folder = os.environ.get(ENV_DIR)
    if not folder:
        return
    try:
        with open(os.path.join(folder, f"{os.getpid()}.events"), "a") as fh:
            fh.write(f"{stage} {int(patches)}\n")
    except OSError:  # the watcher has gone (the run is ending): progress is best effort
        pass


class Ticker:
    """Worker side: the patches of one shard as they are done, reported every ``TICK_S`` seconds
    (``shard_done``), the rest on ``done``; so a bar moves during a shard, not only after it."""

    def __init__(self, stage: str, total: int, every: float = TICK_S):
        self.stage, self.total, self.every = stage, int(total), every
        self.pending = self.reported = 0
        self.last = time.monotonic()

    def tick(self, n: int = 1) -> None:
        """``n`` more patches of the shard done."""
        self.pending += n
        now = time.monotonic()
        if now - self.last >= self.every and self.reported + self.pending <= self.total:
            shard_done(self.stage, self.pending)
            self.reported += self.pending
            self.pending, self.last = 0, now

    def done(self) -> None:
        """The shard is complete: report what is left of its ``total``."""
        if self.total > self.reported:
            shard_done(self.stage, self.total - self.reported)
        self.reported, self.pending = self.total, 0


def terminal_columns(stream) -> int:
    """Columns of the terminal ``stream`` writes to (its own size, then $COLUMNS, then 100)."""
    try:
        cols = os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):
        cols = 0
    return cols if cols > 0 else shutil.get_terminal_size((100, 24)).columns or 100


def interval() -> float:
    """Seconds between the log lines of a non-terminal run."""
    try:
        return max(0.05, float(os.environ.get(ENV_INTERVAL, DEFAULT_INTERVAL_S)))
    except ValueError:
        return DEFAULT_INTERVAL_S


class Bar:
    """The progress line of one pass; ``update`` from one thread only."""

    def __init__(
        self,
        label: str,
        total: int,
        unit: str = " patches",
        stream=None,
        tty: bool | None = None,
        every: float | None = None,
        logs: bool = True,
    ):
        self.label, self.total, self.unit = label, int(total), unit
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.every = interval() if every is None else every
        self.n, self.t0 = 0, time.monotonic()
        self.last = self.t0
        self.closed = False
        self.bar = (
            tqdm(
                total=self.total,
                desc=label,
                unit=unit,
                file=self.stream,
                bar_format=BAR_FORMAT,
                mininterval=0.1,
                # the width of the terminal the bar is drawn on (a terminal reporting 0 columns gets 100)
                ncols=terminal_columns(self.stream),
                nrows=shutil.get_terminal_size((100, 24)).lines,
            )
            if self.tty
            else None
        )
        self._logs = contextlib.ExitStack()
        if self.bar is not None and logs:  # log lines are printed above the bar instead of through it
            self._logs.enter_context(logging_redirect_tqdm())
        if not self.tty:
            self.emit(self.line())

    def emit(self, text: str) -> None:
        """One timestamped line on the stream (non-terminal runs, where a log line fits better than a bar)."""
        print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}", file=self.stream, flush=True)

    def line(self) -> str:
        """The current progress as one line of text (``LOG_FORMAT``)."""
        n = min(self.n, self.total)
        return tqdm.format_meter(
            n, self.total, time.monotonic() - self.t0, prefix=self.label, unit=self.unit, bar_format=LOG_FORMAT
        )

    def update(self, n: int) -> None:
        """``n`` more patches done."""
        if n:
            self.n += n
            if self.bar is not None:
                self.bar.update(min(n, max(0, self.total - self.bar.n)))
        self.tick()

    def tick(self) -> None:
        """Write the periodic log line when one is due (non-terminal runs)."""
        now = time.monotonic()
        if self.bar is None and now - self.last >= self.every:
            self.last = now
            self.emit(self.line())

    def close(self, complete: bool = False) -> None:
        """End the line (once); ``complete``: the pass finished, so show the total as done."""
        if self.closed:
            return
        if complete and self.n < self.total:
            self.update(self.total - self.n)
        self.closed = True
        if self.bar is not None:
            self.bar.close()
            self._logs.close()
        else:
            self.emit(f"{self.line().split(', ETA')[0]} in {time.monotonic() - self.t0:.1f} s")


@dataclass(frozen=True)
class Pass:
    """A pass of a pipeline: the ``stage`` name its workers report and the patches it will process."""

    stage: str
    label: str
    total: int


class Watcher:
    """Driver side: shows the passes' progress from the workers' ``shard_done`` reports, in order
    (a pass's line ends when the next pass reports)."""

    def __init__(self, passes: list[Pass], stream=None, tty: bool | None = None):
        self.passes = [p for p in passes if p.total > 0]
        self.stream, self.tty = stream, tty
        self.done = {p.stage: 0 for p in self.passes}
        self.offsets: dict[str, int] = {}
        self.current = -1
        self.bar: Bar | None = None
        self._stop = threading.Event()
        self._thread = None
        self.folder = None
        self._saved_env = None
        self._logs = contextlib.ExitStack()

    def __enter__(self) -> "Watcher":
        if self.tty if self.tty is not None else (self.stream or sys.stderr).isatty():
            # log lines are printed above the bar instead of through it
            self._logs.enter_context(logging_redirect_tqdm())
        self.folder = scratch.own(tempfile.mkdtemp(prefix="benbeam-progress-"))
        self._saved_env = os.environ.get(ENV_DIR)
        os.environ[ENV_DIR] = self.folder
        self._advance(0)
        self._thread = threading.Thread(target=self._loop, name="benbeam-progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._poll()
        if self.bar is not None:
            self.bar.close(complete=exc_type is None)
            while exc_type is None and self.current + 1 < len(self.passes):  # passes nobody reported (all empty)
                self._advance(self.current + 1)
                self.bar.close(complete=True)
        if self._saved_env is None:
            os.environ.pop(ENV_DIR, None)
        else:
            os.environ[ENV_DIR] = self._saved_env
        shutil.rmtree(self.folder, ignore_errors=True)
        scratch.release(self.folder)
        self._logs.close()

    def _advance(self, index: int) -> None:
        if index >= len(self.passes):
            return
        if self.bar is not None:
            self.bar.close(complete=True)
        self.current = index
        p = self.passes[index]
        self.bar = Bar(p.label, p.total, stream=self.stream, tty=self.tty, logs=False)  # __enter__ redirects
        self.bar.update(self.done[p.stage])

    def _loop(self) -> None:
        while not self._stop.wait(POLL_S):
            self._poll()

    def _events(self) -> list[tuple[str, int]]:
        out = []
        try:
            names = sorted(os.listdir(self.folder))
        except OSError:
            return out
        for name in names:
            path = os.path.join(self.folder, name)
            try:
                with open(path) as fh:
                    fh.seek(self.offsets.get(name, 0))
                    text = fh.read()
            except OSError:
                continue
            complete = text[: text.rfind("\n") + 1]  # a line being written is read next time
            self.offsets[name] = self.offsets.get(name, 0) + len(complete)
            for line in complete.splitlines():
                m = re.fullmatch(r"(\S+) (\d+)", line)
                if m:
                    out.append((m.group(1), int(m.group(2))))
        return out

    def _poll(self) -> None:
        stages = [p.stage for p in self.passes]
        for stage, n in self._events():
            if stage not in self.done:
                continue
            self.done[stage] += n
            index = stages.index(stage)
            if index > self.current:
                self._advance(index)
            elif index == self.current and self.bar is not None:
                self.bar.update(n)
        if self.bar is not None:
            self.bar.tick()


# Runners whose workers run on this machine and inherit its environment (see the module docstring).
# Beam's local multi-process runner, named directly: the DirectRunner first tries to start
# Prism (a download; a /tmp/beam-temp* folder left behind when it cannot start).
LOCAL_RUNNER = "FnApiRunner"
LOCAL_RUNNERS = (None, "", "DirectRunner", "direct", "FnApiRunner", "PrismRunner", "prism", "SwitchingDirectRunner")


def watch(passes: list[Pass], runner: str | None):
    """A ``Watcher`` of ``passes`` for a local ``runner``; a no-op context for any other runner."""
    return Watcher(passes) if runner in LOCAL_RUNNERS else contextlib.nullcontext()


# Per-shard log lines of the workers (shown with --verbose only): the writer's and the statistics pass's.
_SHARD_LINE = re.compile(r"^(worker: )?(wrote \S+\.tfrecord(\.gz)?: |statistics: \w+ shard \d+ of \d+: )")


class ShardLineFilter(logging.Filter):
    """Drops the per-shard INFO lines (kept with ``--verbose``); warnings and errors pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Keep warnings and non-shard lines."""
        return record.levelno >= logging.WARNING or not _SHARD_LINE.match(record.getMessage())


def quiet_shard_lines() -> ShardLineFilter:
    """Install ``ShardLineFilter`` where the per-shard lines arrive: the in-process "benbeam" logger and
    the DirectRunner's worker-log loggers (multi-process mode); returns it for ``remove_filter``."""
    f = ShardLineFilter()
    for name in (
        "benbeam",
        "apache_beam.runners.portability.local_job_service",
        "apache_beam.runners.portability.fn_api_runner.worker_handlers",
    ):
        logging.getLogger(name).addFilter(f)
    return f


def restore_shard_lines(f: ShardLineFilter) -> None:
    """Undo ``quiet_shard_lines``."""
    for name in (
        "benbeam",
        "apache_beam.runners.portability.local_job_service",
        "apache_beam.runners.portability.fn_api_runner.worker_handlers",
    ):
        logging.getLogger(name).removeFilter(f)
