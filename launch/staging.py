"""A wheel of this package for remote workers, wherever it runs from.

From a checkout (``setup.py`` beside the packages) the wheel is built with ``pip wheel``;
from an installed distribution (a wheel or an sdist installed by pip) it is repacked from
the installed files listed in the distribution's ``RECORD``. Workers ``pip install`` it,
which installs the conversion stack (``install_requires``), not the extras.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import importlib.metadata
import importlib.util
import io
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from bigearthnet_beam.schemas import errors

DIST = "bigearthnet-beam"
PACKAGE = "bigearthnet_beam"  # the one import name the wheel installs
# a checkout's folders that setup.py maps into it (bigearthnet_beam.<folder>)
FOLDERS = ("bigearthnet_beam", "beam_pipeline", "transforms", "schemas", "synth", "trainer", "launch")
_NOT_IN_WHEEL = ("INSTALLER", "REQUESTED", "direct_url.json", "RECORD")


class StagingError(errors.UnavailableError, RuntimeError):
    """The package could not be turned into a wheel for the workers."""


def checkout_root() -> Path | None:
    """The source checkout this code runs from, or None when it runs from site-packages."""
    root = Path(__file__).resolve().parent.parent
    return root if (root / "setup.py").is_file() and (root / PACKAGE).is_dir() else None


def build_wheel(out_dir: str) -> str:
    """Path of a wheel of the running package, written into ``out_dir``."""
    os.makedirs(out_dir, exist_ok=True)
    root = checkout_root()
    return _wheel_from_checkout(root, out_dir) if root else _wheel_from_installed(out_dir)


def _wheel_from_checkout(root: Path, out_dir: str) -> str:
    # Built from a copy: setuptools' build/ folder in the checkout could carry stale modules.
    src = Path(out_dir) / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("setup.py", "README.md"):
        if (root / name).exists():
            os.makedirs(src, exist_ok=True)
            shutil.copy2(root / name, src / name)
    for pkg in FOLDERS:
        shutil.copytree(root / pkg, src / pkg, ignore=ignore)
    cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", out_dir, str(src)]
    if importlib.util.find_spec("setuptools") is not None:
        cmd.insert(5, "--no-build-isolation")  # offline-friendly: the environment's setuptools
    r = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(Path(out_dir).glob("bigearthnet_beam-*.whl"))
    if r.returncode != 0 or not wheels:
        raise StagingError(f"could not build a wheel of {root}: {(r.stderr or r.stdout).strip()[-500:]}")
    shutil.rmtree(src, ignore_errors=True)
    return str(wheels[-1])


def _record_line(name: str, data: bytes) -> list[str]:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return [name, f"sha256={digest}", str(len(data))]


def _wheel_from_installed(out_dir: str) -> str:
    try:
        dist = importlib.metadata.distribution(DIST)
    except importlib.metadata.PackageNotFoundError:
        raise StagingError(f"{DIST} is neither a checkout nor installed: pip install it first") from None
    files = [f for f in (dist.files or []) if not f.name.endswith(".pyc") and "__pycache__" not in f.parts]
    info_dir = next((f.parts[0] for f in files if f.parts[0].endswith(".dist-info")), None)
    if info_dir is None or not any(f.parts[0] == PACKAGE for f in files):
        raise StagingError(
            f"the installed {DIST} lists no package files (an editable install?): launch from its checkout instead"
        )
    version = dist.version
    path = os.path.join(out_dir, f"bigearthnet_beam-{version}-py3-none-any.whl")
    record = io.StringIO()
    writer = csv.writer(record, lineterminator="\n")
    with zipfile.ZipFile(path + ".tmp", "w", zipfile.ZIP_DEFLATED) as whl:
        for f in sorted(files, key=str):
            top = f.parts[0]
            if top != PACKAGE and not (top == info_dir and f.name not in _NOT_IN_WHEEL):
                continue  # the console script, pip's bookkeeping
            data = Path(dist.locate_file(f)).read_bytes()
            name = "/".join(f.parts)
            whl.writestr(name, data)
            writer.writerow(_record_line(name, data))
        writer.writerow([f"{info_dir}/RECORD", "", ""])
        whl.writestr(f"{info_dir}/RECORD", record.getvalue())
    os.replace(path + ".tmp", path)
    return path
