"""The import graph of the project's modules (function-level imports included): no cycles, the
packages depend on each other one way only (stream <- training <- inference <- gui <- launch), and
no module imports another module's private names; test modules import no other test module."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("stream", "training", "inference", "gui")
# A package may import only those before it (launch, the top, imports them all).
LAYERS = {"stream": 0, "training": 1, "inference": 2, "gui": 3, "launch": 4}


def project_modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the product (not tests or benchmarks)."""
    modules = {"launch": REPO / "launch.py"}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            modules[name] = path
    return modules


def resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The project module ``name`` refers to (``a.b.c`` may be the name ``c`` of module ``a.b``)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_edges(modules: dict[str, Path]) -> dict[str, set[tuple[str, str]]]:
    """module -> {(imported module, imported name or "")} for every import statement anywhere in it."""
    edges: dict[str, set[tuple[str, str]]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [(alias.name, "") for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parts, base] if base else parts)
                # ``from pkg import name`` runs pkg/__init__ too: an edge to the package as well
                targets = [(base, ""), *((f"{base}.{alias.name}", alias.name) for alias in node.names)]
            else:
                continue
            for target, imported in targets:
                module = resolve(target, modules)
                if module is not None and module != name:
                    edges[name].add((module, imported if module != target else ""))
    return edges


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                other = stack.pop()
                on_stack.discard(other)
                component.append(other)
                if other == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


@pytest.fixture(scope="module")
def edges() -> dict[str, set[tuple[str, str]]]:
    return import_edges(project_modules())


def test_the_graph_covers_the_whole_product(edges) -> None:
    assert {"launch", "stream.source_stage", "inference.worker_stage", "gui.app", "training.train"} <= edges.keys()
    assert ("stream.sources.base", "SourceError") in edges["stream.sources"]  # from-imports are seen
    assert any(module == "stream.formats" for module, _ in edges["stream.sources.file"])  # function-level too


def test_no_import_cycles(edges) -> None:
    graph = {name: {module for module, _ in targets} for name, targets in edges.items()}
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_packages_depend_one_way(edges) -> None:
    backwards = [(name, module) for name, targets in edges.items() for module, _ in targets
                 if LAYERS[module.split(".")[0]] > LAYERS[name.split(".")[0]]]  # fmt: skip
    assert backwards == []


def test_no_module_imports_private_names_of_another(edges) -> None:
    private = [(name, module, imported) for name, targets in edges.items() for module, imported in targets
               if imported.startswith("_")]  # fmt: skip
    assert private == []


def test_test_modules_share_helpers_only_through_the_helpers_module() -> None:
    """A test module imports ``helpers`` (or conftest's fixtures), never another test module."""
    tests = Path(__file__).resolve().parent
    found = []
    for path in sorted(tests.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])  # fmt: skip
            found += [(path.name, name) for name in names
                      if name.split(".")[-1].startswith("test_") or name.startswith("tests.")]  # fmt: skip
    assert found == []
