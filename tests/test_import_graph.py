"""secd's own modules import each other without cycles, and every one of them imports.

The graph is read from the source with ast, so an import inside a function (a factory importing
its adapter lazily) counts: a cycle hidden that way still ties the two modules together.
Imports under `if TYPE_CHECKING:` do not run and are left out.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SERVICES = sorted(p for p in (ROOT / "services").glob("*/secd_*") if (p / "__init__.py").is_file())
PACKAGES = [ROOT / "shared" / "secd_shared", ROOT / "secd", *SERVICES]


def _modules() -> dict[str, Path]:
    """Every module of secd's packages: dotted name -> file."""
    found = {}
    for package in PACKAGES:
        for path in sorted(package.rglob("*.py")):
            parts = path.relative_to(package.parent).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement that can run, at any depth."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the modules of secd it imports."""
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges: set[str] = set()
        for node in _imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                # `from a import b` imports module a.b when there is one, else a name of a.
                targets = [
                    f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                    for alias in node.names
                ]
            edges.update(t for t in targets if t in modules and t != name)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph[node]):
            if other not in index:
                connect(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return found


def test_the_scan_sees_secd_s_packages_and_a_lazy_import():
    modules = _modules()
    assert {"secd_shared.git", "secd_publisher.forge", "secd_verifier.forge", "secd.cli"} <= set(
        modules
    )
    graph = import_graph(modules)
    # make_results_forge imports its GitLab adapter inside the function: the scan sees it.
    assert "secd_publisher.gitlab_forge" in graph["secd_publisher.forge"]


def test_a_cycle_is_found(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "port.py").write_text("def make():\n    from .adapter import A\n")
    (package / "adapter.py").write_text("from pkg.port import make\n")
    (package / "other.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import port\n"
    )
    modules = {
        "pkg": package / "__init__.py",
        "pkg.port": package / "port.py",
        "pkg.adapter": package / "adapter.py",
        "pkg.other": package / "other.py",
    }
    assert cycles(import_graph(modules)) == [["pkg.adapter", "pkg.port"]]


def test_secd_has_no_import_cycles():
    found = cycles(import_graph(_modules()))
    assert not found, "import cycles among secd's modules: " + "; ".join(
        " <-> ".join(component) for component in found
    )


# Modules that run only in an environment of their own, never imported by a service: the model
# attacks run under the model environment's Python (secd_airlock.modelenv), where scikit-learn
# and skops are; tests/airlock/test_models.py runs them there.
OWN_ENVIRONMENT = {"secd_airlock.model_attacks"}


@pytest.mark.parametrize(
    "name",
    sorted(
        name for name in _modules() if not name.endswith("__main__") and name not in OWN_ENVIRONMENT
    ),
)
def test_every_module_imports(name):
    importlib.import_module(name)


def test_no_module_imports_one_that_runs_in_its_own_environment():
    graph = import_graph(_modules())
    importers = {name for name, imported in graph.items() if imported & OWN_ENVIRONMENT}
    assert not importers
