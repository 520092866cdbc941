"""MkDocs hook: let mkdocstrings find ``bigearthnet_beam.<folder>`` modules by reading their files.

``setup.py`` maps the repository's top-level folders into the package (``transforms/`` installs as
``bigearthnet_beam.transforms``, via ``package_dir``), a layout griffe's static loader cannot see.
Before the build this hook lays out ``build/docs-api/bigearthnet_beam/`` as symbolic links — the
package's own files plus one link per folder named in ``setup.py``'s ``FOLDERS`` — and mkdocs.yml's
mkdocstrings ``paths`` points there. Nothing is imported; the reference is read from the source.
"""

from __future__ import annotations

import ast
import os
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHADOW = ROOT / "build" / "docs-api"


def folders() -> tuple[str, ...]:
    """The ``FOLDERS`` tuple of ``setup.py`` (the folders installed as ``bigearthnet_beam.<folder>``)."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "FOLDERS" for t in node.targets):
            return tuple(ast.literal_eval(node.value))
    raise RuntimeError("setup.py defines no FOLDERS")


def lay_out() -> Path:
    """(Re)create the shadow package tree; returns the folder to put on mkdocstrings' search path."""
    pkg = SHADOW / "bigearthnet_beam"
    shutil.rmtree(SHADOW, ignore_errors=True)
    pkg.mkdir(parents=True)
    for f in sorted((ROOT / "bigearthnet_beam").iterdir()):
        if f.name != "__pycache__":
            os.symlink(f, pkg / f.name)
    for name in folders():
        os.symlink(ROOT / name, pkg / name)
    return SHADOW


def on_startup(command, dirty):
    """MkDocs hook: lay out the tree before any plugin is configured (mkdocstrings resolves its paths then)."""
    lay_out()
