"""The project's modules import one way: no cycles between modules, and each package only
imports the layers below it (schemas <- transforms <- beam_pipeline / trainer <- the CLI)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("schemas", "transforms", "synth", "launch", "trainer", "beam_pipeline")
# What each package may import besides itself. The CLI (beam_pipeline.cli and its __main__)
# sits on top and may import every package.
ALLOWED = {
    "schemas": set(),
    "transforms": {"schemas"},
    "synth": {"schemas", "transforms"},
    "launch": {"schemas", "transforms"},
    "trainer": {"schemas", "transforms"},
    "beam_pipeline": {"schemas", "transforms", "synth", "launch"},
}
CLI_MODULES = {"beam_pipeline.cli", "beam_pipeline.__main__"}


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            mods[name.removesuffix(".__init__")] = path
    return mods


def _imports(name: str, path: Path, mods: dict[str, Path]) -> set[str]:
    """Project modules imported anywhere in a module (function-level imports included)."""
    pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for n in names:
            while n and n not in mods:
                n = n.rpartition(".")[0]
            if n and n != name:
                found.add(n)
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {m: _imports(m, p, mods) for m, p in mods.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (iterative Tarjan)."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter[0]
        counter[0] += 1
        stack.append(start)
        on.add(start)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
    return out


def test_the_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert _cycles(graph) == [["a", "b", "c"]]


def test_no_import_cycles_between_project_modules():
    graph = _graph()
    assert len(graph) > 40  # the whole project was parsed
    assert _cycles(graph) == []


def test_packages_import_only_the_layers_below_them():
    wrong = []
    for mod, targets in sorted(_graph().items()):
        if mod in CLI_MODULES:
            continue
        pkg = mod.split(".")[0]
        for t in sorted(targets):
            other = t.split(".")[0]
            if other != pkg and other not in ALLOWED[pkg]:
                wrong.append(f"{mod} imports {t}")
    assert wrong == []
