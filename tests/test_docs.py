"""The documentation's Python cannot drift from the code.

Every ```` ```python ```` block of ``README.md`` and ``docs/*.md`` is compiled, its imports are
run, and every attribute it reads from a ``bigearthnet_beam`` module must exist: a renamed
module, class or function fails here. A block preceded by ``<!-- docs-test: run -->`` (or
``<!-- docs-test: run slow -->`` for one that converts data) is executed whole, with the example
paths the docs use replaced by the session's data (``tests/conftest.py``):

    /data/reben/metadata.parquet -> the replica's metadata     /data/reben -> the replica
    /data/reben-tfrecords        -> the converted dataset      /data/reben-<name> -> a new folder

The mkdocs site itself is built with ``--strict`` by ``make docs`` (CI), which fails on a broken
link, anchor or API reference.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

import bigearthnet_beam

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(
    r"(?:<!-- docs-test: (?P<mode>run(?: slow)?) -->[ \t]*\n)?^```python\n(?P<code>.*?)^```", re.S | re.M
)
# The public API of issue 23 comes from the api branch; until it is merged, examples written
# against it are expected to fail (strict: the day they pass, the marker goes away by itself).
PENDING_API = [n for n in ("ReadMetadata", "ConvertDataset") if not hasattr(bigearthnet_beam, n)]


def _blocks():
    out = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for m in BLOCK.finditer(text):
            line = text.count("\n", 0, m.start("code")) + 1
            code, mode = m.group("code"), m.group("mode") or ""
            marks = [pytest.mark.slow] if mode == "run slow" else []
            pending = [n for n in PENDING_API if re.search(rf"\b{n}\b", code)]
            if pending:
                reason = f"{', '.join(pending)}: bigearthnet_beam's public API lands with the api branch (issue 23)"
                marks.append(pytest.mark.xfail(strict=True, reason=reason))
            out.append(pytest.param(code, mode, id=f"{page.relative_to(ROOT)}:{line}", marks=marks))
    return out


BLOCKS = _blocks()


def test_the_docs_hold_python_examples_and_some_run():
    assert len(BLOCKS) >= 3, [p.id for p in BLOCKS]
    assert sum(p.values[1].startswith("run") for p in BLOCKS) >= 2


def _missing_attributes(tree: ast.AST, namespace: dict) -> list[str]:
    """``module.attr`` reads in ``tree`` whose module is a ``bigearthnet_beam`` module lacking ``attr``."""
    missing = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)):
            continue
        name = getattr(namespace.get(node.value.id), "__name__", "")
        if not name.startswith("bigearthnet_beam") or hasattr(namespace[node.value.id], node.attr):
            continue
        try:  # a submodule read as an attribute of its package
            importlib.import_module(f"{name}.{node.attr}")
        except ImportError:
            missing.append(f"{name}.{node.attr}")
    return missing


@pytest.mark.parametrize("code,mode", BLOCKS)
def test_every_python_block_compiles_and_names_what_exists(code, mode):
    tree = ast.parse(code)
    namespace: dict = {}
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            exec(compile(ast.Module(body=[node], type_ignores=[]), "<docs>", "exec"), namespace)
    assert _missing_attributes(tree, namespace) == []


RUN = [p for p in BLOCKS if p.values[1].startswith("run")]


@pytest.mark.parametrize("code,mode", RUN)
def test_runnable_blocks_run_on_the_session_data(code, mode, replica, converted, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    paths = {
        "/data/reben/metadata.parquet": str(replica / "metadata.parquet"),
        "/data/reben-tfrecords": str(converted),
        "/data/reben": str(replica),
    }

    def place(m: re.Match) -> str:
        return paths.get(m.group(0)) or str(tmp_path / m.group(0).lstrip("/").replace("/", "_"))

    code = re.sub(r"/data/reben(?:/metadata\.parquet|-[a-z0-9]+)?", place, code)
    exec(compile(code, "<docs>", "exec"), {"__name__": "__docs__"})
