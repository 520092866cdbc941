"""The project's exception hierarchy: what went wrong, by type, and the exit code it means.

Every error the library raises on purpose derives from ``BenBeamError``. The command line
maps an error to its exit code through ``exit_code`` alone — never through the words of a
message — and library users catch the class they care about:

=================  ====  ==============================================================
class              exit  meaning
=================  ====  ==============================================================
``BenBeamError``   1     a run failed (the base class)
``IntegrityError`` 1     data do not match what they claim (checksums, counts, too many
                         failed patches, a corrupt shard)
``InputError``     2     bad usage or bad input: a flag, a metadata file, a manifest, an
                         output folder that is refused
``ContainmentError`` 2   a read or write outside the root the user named was refused
``UnavailableError`` 3   the environment: a missing extra, a busy output folder, a full disk
``StorageError``   3     an object store cannot be reached, refuses the credentials or keeps
                         failing after retries
=================  ====  ==============================================================

``InputError`` is also a ``ValueError`` and ``UnavailableError`` an ``OSError``, so code that
caught those before keeps working. Ctrl-C stays ``KeyboardInterrupt`` (exit 130).
"""

from __future__ import annotations

import errno
import re

EXIT_OK, EXIT_DATA, EXIT_USAGE, EXIT_ENV, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


class BenBeamError(Exception):
    """Base of every error this package raises on purpose (exit code 1)."""

    exit_code: int = EXIT_DATA


class IntegrityError(BenBeamError):
    """Data do not match what they claim: checksums, counts, corrupt records, too many failures."""

    exit_code = EXIT_DATA


class InputError(BenBeamError, ValueError):
    """Bad usage or bad input (a flag, a metadata or manifest file, a refused output folder)."""

    exit_code = EXIT_USAGE


class ContainmentError(InputError):
    """A read or write outside the root the user named was refused."""


class UnavailableError(BenBeamError, OSError):
    """The environment cannot serve the run: a missing extra, a busy output, a full disk."""

    exit_code = EXIT_ENV


class StorageError(UnavailableError):
    """An object store cannot be reached, refuses the credentials, or keeps failing after retries."""


# A full disk or quota, a read-only file system, a refused permission: the environment (exit 3).
ENVIRONMENT_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]+@")


def redact(text: str) -> str:
    """``text`` with the ``user:password@`` of every URL in it replaced by ``***@``."""
    return _USERINFO.sub(r"\g<scheme>***@", str(text))


def exit_code(exc: BaseException) -> int | None:
    """The exit code an exception means by its type or errno (None: not one of ours, nor the environment's)."""
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(exc, BenBeamError):
        return exc.exit_code
    if isinstance(exc, OSError) and exc.errno in ENVIRONMENT_ERRNOS:
        return EXIT_ENV
    return None
