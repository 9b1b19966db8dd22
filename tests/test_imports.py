"""The package's modules import each other without cycles: neither at module level nor inside functions (a
deferred import hides a cycle from Python but not from a reader). Imports for type checking only are not
counted."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "spray"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_nodes(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement, except those under ``if TYPE_CHECKING:``."""
    found: list[ast.Import | ast.ImportFrom] = []
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                found += _import_nodes(child) if not isinstance(child, (ast.Import, ast.ImportFrom)) else [child]
        else:
            found += _import_nodes(node)
    return found


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The spray modules ``path`` imports (``from spray.x import y`` counts spray.x.y when that is a module,
    else spray.x)."""
    imported: set[str] = set()
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    for node in _import_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                imported.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return {name for name in imported if name in modules and name != _module_name(path)}


def import_graph() -> dict[str, set[str]]:
    """spray module -> the spray modules it imports."""
    files = sorted(PACKAGE.rglob("*.py"))
    modules = {_module_name(path) for path in files}
    return {_module_name(path): _imports(path, modules) for path in files}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (depth-first search, colouring nodes)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for child in sorted(graph.get(node, ())):
            if state.get(child) == 1:
                return path[path.index(child):] + [child]
            if child not in state and (cycle := visit(child)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_the_graph_sees_the_imports_between_stage_modules():
    graph = import_graph()
    assert "spray.cache" in graph["spray.attribute"] and "spray.config" in graph["spray.pipeline"]
    assert "spray.progress" in graph["spray.pipeline"]  # imported inside a function


def test_no_spray_module_imports_itself_through_others():
    assert find_cycle(import_graph()) is None
