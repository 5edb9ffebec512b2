"""The import graph of the repo's own packages, read with `ast` (nothing is imported): no cycles,
and dependencies that point one way (design.md, "Dependencies point one way"). Imports inside
functions count too: a lazy import still ties the two modules together."""

from __future__ import annotations

import ast
import graphlib
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("curate", "indexes", "pipelines", "models", "kernels")
CLI = "curate.cli"  # the application on top: the one core module that may reach every package


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    """Dotted names an import statement may refer to (a package, a module, or a name in one)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:  # relative: resolved against the importing module's package
        package = module.split(".") if is_package else module.split(".")[:-1]
        package = package[: len(package) - node.level + 1]
        base = ".".join(package + ([node.module] if node.module else []))
    return [f"{base}.{alias.name}" for alias in node.names] + [base]


def _resolve(name: str, modules: set[str]) -> str | None:
    """The longest prefix of `name` that is one of the repo's modules."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in modules:
            return ".".join(parts[:end])
    return None


@cache
def import_graph() -> dict[str, set[str]]:
    """module -> the repo modules it imports (anywhere in its body)."""
    files = {_module_name(p): p for package in PACKAGES for p in (REPO / package).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import | ast.ImportFrom):
                for name in _imported(node, module, path.name == "__init__.py"):
                    target = _resolve(name, set(files))
                    # `from pkg import mod` names both pkg and pkg.mod: keep only the module itself
                    if target and target != module and not (name == target and _names_submodule(node, target, files)):
                        targets.add(target)
        graph[module] = targets
    return graph


def _names_submodule(node: ast.AST, package: str, files: dict[str, Path]) -> bool:
    return isinstance(node, ast.ImportFrom) and all(f"{package}.{a.name}" in files for a in node.names)


def _package(module: str) -> str:
    return module.split(".")[0]


def test_the_graph_sees_the_repo():
    graph = import_graph()
    assert {"curate.cli", "curate.tokenizer", "indexes.engine", "pipelines.runner"} <= set(graph)
    assert "indexes.search_loops" in graph["indexes.engine"] and "curate.tokenizer" in graph["indexes.build"]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Cycles of the graph, found one at a time by graphlib and cut at one edge, until none is left."""
    graph = {node: set(targets) for node, targets in graph.items()}
    found = []
    while True:
        try:
            graphlib.TopologicalSorter(graph).prepare()
            return found
        except graphlib.CycleError as e:
            cycle = e.args[1]  # [a, b, ..., a]: each node is imported by the one after it
            found.append(cycle[::-1])
            graph[cycle[1]].discard(cycle[0])


def test_no_import_cycles_between_modules():
    found = cycles(import_graph())
    assert not found, "import cycles: " + "; ".join(" -> ".join(c) for c in found)


def test_no_import_cycles_between_packages():
    """Package level, below the CLI: e.g. pipelines may use models, then models may not use pipelines."""
    packages: dict[str, set[str]] = {p: set() for p in PACKAGES}
    for module, targets in import_graph().items():
        if module != CLI:
            packages[_package(module)] |= {_package(t) for t in targets} - {_package(module)}
    found = cycles(packages)
    assert not found, "package cycles: " + "; ".join(" -> ".join(c) for c in found)


def test_the_core_imports_no_outer_package():
    outer = {"indexes", "pipelines", "models"}
    offenders = sorted(
        f"{module} imports {target}"
        for module, targets in import_graph().items()
        if _package(module) == "curate" and module != CLI
        for target in targets
        if _package(target) in outer
    )
    rule = "the core (curate/ less its CLI) must not import indexes, pipelines or models: "
    assert not offenders, rule + "; ".join(offenders)


def test_kernels_know_only_tensors():
    offenders = sorted(
        f"{module} imports {target}"
        for module, targets in import_graph().items()
        if _package(module) == "kernels"
        for target in targets
        if _package(target) != "kernels"
    )
    assert not offenders, "kernels/ must import no other package of the repo: " + "; ".join(offenders)


def test_the_checks_catch_a_cycle_and_a_wrong_arrow(tmp_path, monkeypatch):
    """The checks above on a made-up repo that breaks both rules."""
    for name, body in {
        "curate/__init__.py": "",
        "curate/a.py": "from curate import b\n",
        "curate/b.py": "def f():\n    import curate.a\n    from indexes.x import y\n",
        "indexes/__init__.py": "",
        "indexes/x.py": "y = 1\n",
    }.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(body)
    monkeypatch.setitem(globals(), "REPO", tmp_path)
    import_graph.cache_clear()
    try:
        graph = import_graph()
        assert graph["curate.a"] == {"curate.b"} and graph["curate.b"] == {"curate.a", "indexes.x"}
        assert [sorted(c) for c in cycles(graph)] == [["curate.a", "curate.a", "curate.b"]]
        with pytest.raises(AssertionError, match="import cycles: curate"):
            test_no_import_cycles_between_modules()
        with pytest.raises(AssertionError, match="curate.b imports indexes.x"):
            test_the_core_imports_no_outer_package()
    finally:
        import_graph.cache_clear()
