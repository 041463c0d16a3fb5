"""The results and sweeps modules import each other one way: evaluation, then robustness and figures, the report
and the diagnosis on top, sweeps beside them; imports inside functions count too (a cycle hidden by a late
import is still a cycle)."""

from __future__ import annotations

import ast
from pathlib import Path

import mmvid

PACKAGE = Path(mmvid.__file__).resolve().parent
LAYERS = ("mmvid.results", "mmvid.sweeps")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The modules of ``known`` that ``path`` imports anywhere in its text (top level or inside a function)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        found |= {n for n in names if n in known}
    return found


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    known = {m for m in paths if m.startswith(LAYERS)}
    return {m: imports_of(paths[m], known) - {m} for m in known}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as the list of its modules (first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for dep in sorted(graph[m]):
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        path.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (cycle := visit(m)):
            return cycle
    return None


def test_results_and_sweeps_modules_import_without_a_cycle():
    graph = import_graph()
    assert "mmvid.results.diagnosis.shapley" in graph and "mmvid.sweeps.running" in graph  # the walk sees them
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_evaluation_is_the_bottom_of_the_results():
    """evaluation imports no other results module; robustness and figures import no report or diagnosis."""
    graph = import_graph()
    assert not {d for d in graph["mmvid.results.evaluation"] if d.startswith("mmvid.results")}
    for m in ("mmvid.results.robustness", "mmvid.results.figures"):
        assert not {d for d in graph[m] if d.startswith(("mmvid.results.report", "mmvid.results.diagnosis"))}, m
