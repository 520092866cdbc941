"""The command line's value checks, one per kind of flag, and its parser (plain argparse, no Beam).

Every number a command takes goes through one of these types, so the same kind of flag
refuses the same values everywhere: NaN, infinities, non-ASCII digits (``１２``), signs and
sizes outside the flag's range. A refused value is a usage error: ``Parser`` prints one
line (``benbeam CMD: error: argument --x: ...``) and exits 2 before anything is written.
``tests/test_flag_table.py`` feeds every flag of every command hostile values by its type.
"""

from __future__ import annotations

import argparse
import math
import re
import sys

from bigearthnet_beam.schemas.bands import PATCH_SIZE
from bigearthnet_beam.schemas.errors import EXIT_USAGE, redact

_INT = re.compile(r"[+-]?[0-9]{1,18}")  # ASCII digits only; int() would take '１２' and '1_0'
_FLOAT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")

MAX_SEED = 2**32 - 1  # numpy's and TensorFlow's seeds are 32-bit
MAX_OVERLAP = PATCH_SIZE // 2  # a window moves at least half its side: at most 4x the windows of no overlap
MAX_CHUNK = 8192  # predict's chunk side: its float32 probabilities alone are 5 GB
MAX_COUNT = 10**9  # patches, tiles, epochs, steps, workers …: anything above is a typo


class Parser(argparse.ArgumentParser):
    """An ArgumentParser that takes no abbreviated flags and reports a usage error as one line (exit 2)."""

    def __init__(self, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(**kwargs)

    def error(self, message: str):
        """One line on stderr, exit 2 (argparse's usage block is what ``--help`` is for)."""
        self.exit(EXIT_USAGE, f"{self.prog}: error: {redact(' '.join(str(message).split()))} (see --help)\n")

    def exit(self, status: int = 0, message: str | None = None):
        """As argparse, flushing stdout first (``--help`` then an error stay in order)."""
        sys.stdout.flush()
        super().exit(status, message)


def _bad(text: str, what: str) -> argparse.ArgumentTypeError:
    shown = text if len(text) <= 40 else text[:40] + "…"
    return argparse.ArgumentTypeError(f"must be {what}, got {shown!r}")


def integer(text: str, lo: int | None = None, hi: int | None = None, what: str = "an integer") -> int:
    """An integer written in ASCII digits, within [lo, hi] when given."""
    s = str(text).strip()
    if not _INT.fullmatch(s):
        raise _bad(str(text), what)
    v = int(s)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise _bad(str(text), what)
    return v


def number(text: str, what: str = "a finite number") -> float:
    """A finite decimal number written in ASCII (no NaN, no infinity)."""
    s = str(text).strip()
    if not _FLOAT.fullmatch(s):
        raise _bad(str(text), what)
    v = float(s)
    if not math.isfinite(v):
        raise _bad(str(text), what)
    return v


def bounded(text: str, lo: float, hi: float, what: str, *, low_open: bool = False) -> float:
    """A finite number in [lo, hi] ((lo, hi] with ``low_open``), else the error saying ``what``."""
    v = number(text, what)
    if not (lo < v if low_open else lo <= v) or v > hi:
        raise _bad(text, what)
    return v


def positive_int(text: str) -> int:
    """argparse type: an integer in [1, 10^9]."""
    return integer(text, 1, MAX_COUNT, "a positive integer (at most 10^9)")


def nonneg_int(text: str) -> int:
    """argparse type: an integer in [0, 10^9]."""
    return integer(text, 0, MAX_COUNT, "an integer >= 0 (at most 10^9)")


def seed(text: str) -> int:
    """argparse type: a random seed in [0, 2^32 - 1]."""
    return integer(text, 0, MAX_SEED, f"a seed in 0..{MAX_SEED}")


def learning_rate(text: str) -> float:
    """argparse type: a learning rate in (0, 1]."""
    return bounded(text, 0, 1, "a learning rate in (0, 1]", low_open=True)


def seconds(text: str) -> float:
    """argparse type: a duration in seconds >= 0 (0: no limit), at most a day."""
    v = number(text, "a number of seconds >= 0")
    if not 0 <= v <= 86400:
        raise _bad(text, "a number of seconds in [0, 86400]")
    return v


def unit_fraction(text: str) -> float:
    """argparse type: a fraction in [0, 1]."""
    return bounded(text, 0.0, 1.0, "a fraction in [0, 1]")


def sample_fraction(text: str) -> float:
    """argparse type: a sampling fraction in (0, 1]."""
    return bounded(text, 0.0, 1.0, "a fraction in (0, 1]", low_open=True)


def percentile(text: str) -> float:
    """argparse type: a percentile in [0, 100]."""
    return bounded(text, 0.0, 100.0, "a percentile in [0, 100]")


def overlap(text: str) -> int:
    """argparse type: the overlap of neighbouring windows in px, 0..half a window."""
    return integer(text, 0, MAX_OVERLAP, f"an overlap in 0..{MAX_OVERLAP} px (half the {PATCH_SIZE}-px window at most)")


def stride(text: str) -> int:
    """argparse type: the step of the window grid in px, half a window to a whole one (the
    complement of ``overlap``: ``overlap = window - stride``)."""
    lo = PATCH_SIZE - MAX_OVERLAP
    return integer(
        text, lo, PATCH_SIZE, f"a window step in {lo}..{PATCH_SIZE} px (at most 4x the windows of adjacent ones)"
    )


def chunk_size(text: str) -> int:
    """argparse type: a chunk side in px, a multiple of 128 in [128, 8192]."""
    what = f"a multiple of 128 px in [128, {MAX_CHUNK}]"
    v = integer(text, 128, MAX_CHUNK, what)
    if v % 128:
        raise _bad(text, what)
    return v


STORE_SCHEMES = ("s3", "gs", "gcs")  # the object stores every --out that takes a URL writes to
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:/")


def _location(text: str, what: str, remote: bool) -> str:
    s = str(text)
    if not s.strip() or any(ord(c) < 32 for c in s):
        raise argparse.ArgumentTypeError(f"must be {what}, got {s[:40]!r}")
    if "://" not in s:
        if _SCHEME.match(s) and not s[1:3] == ":/":  # 's3:/bucket' (one slash), not 'C:/x'
            raise argparse.ArgumentTypeError(f"{s[:80]!r} looks like a URL with a slash missing; write {what}")
        return s
    scheme = s.split("://", 1)[0].lower()
    if remote and scheme in STORE_SCHEMES:
        return s
    if scheme in STORE_SCHEMES:
        raise argparse.ArgumentTypeError(
            f"{redact(s)[:80]} is an object-store URL; this command writes local files only: give a local folder"
        )
    raise argparse.ArgumentTypeError(f"{redact(s)[:80]}: {scheme}:// is not supported; give {what}")


def output(text: str) -> str:
    """argparse type of ``--out`` where the command writes to object stores too: a local path or s3:// / gs:// URL."""
    return _location(text, "a local path or an s3:// / gs:// URL", remote=True)


def local_output(text: str) -> str:
    """argparse type of ``--out`` where the command writes local files only: a local path (a URL is refused)."""
    return _location(text, "a local path", remote=False)


# Every type above, by the kind of flag it checks (tests/test_flag_table.py probes each).
FLAG_TYPES = {
    "integer": (positive_int, nonneg_int, seed, overlap, stride, chunk_size),
    "number": (learning_rate, seconds),
    "fraction": (unit_fraction, sample_fraction, percentile),
    "output": (output, local_output),
}
