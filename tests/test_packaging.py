"""pyproject.toml tells the truth: every third-party module the package imports is declared, and every declared
dependency is imported by the package or is a documented runtime plugin."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

import medsign_forensics

PACKAGE = Path(medsign_forensics.__file__).resolve().parent
PYPROJECT = PACKAGE.parent / "pyproject.toml"
# Declared but never imported by name: loaded by another package at run time.
PLUGINS = {
    "pylibjpeg": "pydicom's pixel-data handlers", "pylibjpeg-libjpeg": "pydicom's pixel-data handlers",
    "pylibjpeg-openjpeg": "pydicom's pixel-data handlers", "pylibjpeg-rle": "pydicom's pixel-data handlers",
    "onnxruntime": "imwatermark's RivaGAN imports it lazily",
}


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared(*, dev: bool = True) -> set[str]:
    """Distribution names in dependencies and optional extras (an extra like dask[distributed] declares both);
    ``dev=False`` leaves out the test tools."""
    project = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]
    requirements = list(project["dependencies"])
    for name, extra in project.get("optional-dependencies", {}).items():
        requirements += extra if dev or name != "dev" else []
    names = set()
    for requirement in requirements:
        match = re.match(r"\s*([A-Za-z0-9_.-]+)(?:\[([^\]]+)\])?", requirement)
        assert match, requirement
        names.add(_normalise(match.group(1)))
        names.update(_normalise(extra) for extra in (match.group(2) or "").split(",") if extra)
    return names


def imported_modules() -> set[str]:
    """Top-level third-party modules imported anywhere in the package (module level or inside functions)."""
    modules = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                modules.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    return {m for m in modules if m not in sys.stdlib_module_names and m != PACKAGE.name}


def test_every_imported_module_is_declared():
    distributions = importlib.metadata.packages_distributions()
    names = declared()
    missing = {}
    for module in imported_modules():
        providers = {_normalise(d) for d in distributions.get(module, [])}
        if not providers & names:
            missing[module] = sorted(providers) or ["(not installed)"]
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


def test_every_declared_dependency_is_used():
    distributions = importlib.metadata.packages_distributions()
    provided = {_normalise(d) for module in imported_modules() for d in distributions.get(module, [])}
    unused = declared(dev=False) - provided - set(PLUGINS)
    assert not unused, f"declared in pyproject.toml but never imported by the package: {sorted(unused)}"


def test_no_test_edits_sys_path():
    """Shared test code lives in the tests/helpers package, found through pytest's ``pythonpath`` setting."""
    tests = Path(__file__).resolve().parent
    offenders = [str(p.relative_to(tests)) for p in tests.rglob("*.py")
                 if re.search(r"sys\.path\.(insert|append)|sys\.path\s*=", p.read_text(encoding="utf-8"))
                 and p != Path(__file__).resolve()]
    assert not offenders, f"these test files edit sys.path; import from tests/helpers instead: {offenders}"


def _top_level_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


def test_tests_and_benchmarks_do_not_import_each_other():
    """Benchmarks import the package only (what they share lives in it); tests import the package and
    tests/helpers, never a benchmark script."""
    root = PACKAGE.parent
    scripts = {path.stem for path in (root / "benchmarks").glob("*.py")}
    offenders = []
    for path in sorted((root / "benchmarks").rglob("*.py")):
        edits_path = re.search(r"sys\.path\.(insert|append)|sys\.path\s*=", path.read_text(encoding="utf-8"))
        if edits_path or _top_level_imports(path) & (scripts | {"helpers", "tests"}):
            offenders.append(str(path.relative_to(root)))
    this = Path(__file__).resolve()
    for path in sorted((root / "tests").rglob("*.py")):
        loads_by_path = "spec_from_file_location" in path.read_text(encoding="utf-8") and path != this
        if _top_level_imports(path) & (scripts | {"benchmarks"}) or loads_by_path:
            offenders.append(str(path.relative_to(root)))
    assert not offenders, f"these files reach across tests/ and benchmarks/: {offenders}"
