"""vivace's modules import one another without circles: the package reads in data-flow order.

Every import counts: at module level, inside a function (a lazy import is still a dependency)
and under `if TYPE_CHECKING:` (it never runs, but a reader of the structure sees the edge).
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "vivace"


def module_names(package: Path = PACKAGE) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    names = {}
    for path in package.rglob("*.py"):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def imported(module: str, node: ast.Import | ast.ImportFrom, modules: dict[str, Path]) -> set[str]:
    """The package's modules one import statement loads (`from . import x` loads x, not the package)."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names} & modules.keys()
    base = module if modules[module].name == "__init__.py" else module.rpartition(".")[0]
    for _ in range(node.level - 1):
        base = base.rpartition(".")[0]
    target = node.module if not node.level else f"{base}.{node.module}" if node.module else base
    found = {f"{target}.{alias.name}" for alias in node.names} & modules.keys()
    if node.module is not None and target in modules:
        found.add(target)
    return found


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    modules = module_names(package)
    graph = {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text())
        graph[module] = {target for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                         for target in imported(module, node, modules) if target != module}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path [a, b, ..., a], or None (depth-first search, three colours)."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_reports_a_circle_and_accepts_a_tree():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_import_graph_sees_lazy_and_type_checking_imports(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from . import b\n")
    (pkg / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import f\n")
    assert import_graph(pkg) == {"pkg": set(), "pkg.a": {"pkg.b"}, "pkg.b": {"pkg.a"}}
    assert find_cycle(import_graph(pkg)) == ["pkg.a", "pkg.b", "pkg.a"]


def test_vivace_has_no_import_cycles():
    graph = import_graph()
    assert "vivace.learner" in graph and graph["vivace.train"]  # the walk found the package
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def design_rows(design: Path = PACKAGE.parent / "docs" / "DESIGN.md") -> dict[str, int]:
    """Module -> its row in DESIGN.md's stage table (the data flow, foundations first)."""
    rows: dict[str, int] = {}
    table = [line for line in design.read_text().splitlines() if line.startswith("| ") and "`vivace/" in line]
    for row, line in enumerate(table):
        for path in line.split("|")[2].replace("`", "").split(","):
            path = path.strip().removesuffix("/")
            parts = path.removesuffix(".py").split("/")
            rows[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = row
    return rows


def test_design_table_lists_every_module_and_imports_point_up_it():
    rows, graph = design_rows(), import_graph()
    book = {m for m in graph if m.startswith("vivace.book")}
    assert set(graph) - book == set(rows) - {"vivace.book"}, "DESIGN.md's table and vivace/ list different modules"
    for module, targets in graph.items():
        row = rows["vivace.book" if module in book else module]
        below = sorted(t for t in targets if t not in book and rows[t] > row)
        assert not below, f"{module} (DESIGN.md row {row}) imports {below}, listed below it"
