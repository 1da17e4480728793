"""The package's parts form layers: no import cycle between subpackages (or top-level modules).

Every ``import`` and ``from ... import`` in medsign_forensics counts, at module level and inside functions
alike: a deferred import hides a cycle from the interpreter, not from the design.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path

import medsign_forensics

PACKAGE = Path(medsign_forensics.__file__).resolve().parent
ROOT = PACKAGE.name


def _unit(module: str, package: Path) -> str | None:
    """The subpackage or top-level module that ``module`` (dotted) belongs to; None outside the package or for
    the package root itself (which holds only ``__version__``)."""
    parts = module.split(".")
    if parts[0] != ROOT or len(parts) < 2:
        return None
    head = parts[1]
    return head if (package / head).is_dir() or (package / f"{head}.py").is_file() else None


def _imported(path: Path, package_dir: Path) -> Iterator[str]:
    """Every dotted name an import in ``path`` may load: the module, and for ``from m import x`` also ``m.x``
    (``from medsign_forensics import key`` loads the key module)."""
    dotted = path.relative_to(package_dir.parent).with_suffix("").parts
    package = dotted[:-1]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[: len(package) - node.level + 1]) if node.level else ""
            module = ".".join(filter(None, [base, node.module or ""]))
            yield module
            yield from (f"{module}.{alias.name}" for alias in node.names)


def unit_graph(package: Path = PACKAGE) -> dict[str, dict[str, set[str]]]:
    """unit -> imported unit -> the files (relative paths) whose imports make that edge."""
    graph: dict[str, dict[str, set[str]]] = {}
    for path in sorted(package.rglob("*.py")):
        source = _unit(".".join(path.relative_to(package.parent).with_suffix("").parts), package)
        if source is None:
            continue
        for name in _imported(path, package):
            target = _unit(name, package)
            if target is not None and target != source:
                graph.setdefault(source, {}).setdefault(target, set()).add(str(path.relative_to(package.parent)))
    return graph


def find_cycle(graph: Mapping[str, Mapping[str, object]]) -> list[str] | None:
    """One cycle of the directed graph as [a, b, ..., a], or None when it is acyclic (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, {})):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_finder_sees_a_cycle_through_a_function_level_import(tmp_path):
    pkg = tmp_path / ROOT
    (pkg / "alpha").mkdir(parents=True)
    (pkg / "beta").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "alpha" / "__init__.py").write_text("from medsign_forensics.beta.core import thing\n")
    (pkg / "beta" / "__init__.py").write_text("")
    (pkg / "beta" / "core.py").write_text("def thing():\n    from ..alpha import other\n")
    (pkg / "leaf.py").write_text("import numpy\n")
    graph = unit_graph(pkg)
    assert find_cycle(graph) in (["alpha", "beta", "alpha"], ["beta", "alpha", "beta"])
    (pkg / "beta" / "core.py").write_text("def thing():\n    from medsign_forensics import leaf\n")
    graph = unit_graph(pkg)
    assert graph == {"alpha": {"beta": {f"{ROOT}/alpha/__init__.py"}}, "beta": {"leaf": {f"{ROOT}/beta/core.py"}}}
    assert find_cycle(graph) is None


def test_no_import_cycle_between_subpackages():
    graph = unit_graph()
    cycle = find_cycle(graph)
    if cycle:
        edges = [f"{a} -> {b} ({', '.join(sorted(graph[a][b]))})" for a, b in zip(cycle, cycle[1:])]
        raise AssertionError("import cycle between parts of the package:\n  " + "\n  ".join(edges))


def test_key_is_a_leaf():
    assert set(unit_graph().get("key", {})) <= {"config", "errors"}
