"""mmvid's modules import one way: data -> models -> plug-ins -> engine -> results -> commands (docs/architecture.md).

The test reads every module's imports from its source, those inside functions included (an import placed in a
function to keep torch out of option checking still ties the modules together), and fails on an import cycle
and on an import of a higher layer.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "mmvid"

# Each module's layer, by the longest matching prefix: a module may import its own layer and those below.
LAYERS = {
    "mmvid.errors": 0, "mmvid._version": 0, "mmvid.schema": 0, "mmvid.registry_base": 0, "mmvid.registry": 0,
    "mmvid.workspace": 0, "mmvid.config.sections": 0,
    "mmvid.data": 1,
    "mmvid.models": 2, "mmvid.measures": 2,
    "mmvid.augment": 3, "mmvid.balance": 3, "mmvid.tracking": 3, "mmvid.distributed.collectives": 3,
    "mmvid.plugins": 4, "mmvid.config": 4,
    "mmvid.runfiles": 5, "mmvid.engine": 5, "mmvid.distributed": 5, "mmvid.corruptions": 5,
    "mmvid.results": 6, "mmvid.sweeps": 6,
    "mmvid.api": 7, "mmvid.workflows": 7,
    "mmvid.cli": 8, "mmvid.docs_tables": 8, "mmvid": 9,
}


def module_names() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """module -> the mmvid modules it imports (``from mmvid.x import y`` names the module ``mmvid.x.y`` where
    that is a module, else ``mmvid.x``)."""
    modules = module_names()

    def owner(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, path in modules.items():
        targets = set()
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets |= {owner(a.name) for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the module's package, up level - 1
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
                targets |= {owner(f"{base}.{a.name}") or owner(base) for a in node.names}
        graph[name] = {t for t in targets if t and t != name}
    return graph


def layer(module: str) -> int:
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return LAYERS[best]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_test_sees_imports_inside_functions():
    graph = import_graph()
    assert "mmvid.engine" in {layer_name for m in graph for layer_name in graph[m]} or any(
        t.startswith("mmvid.engine") for m in graph for t in graph[m])
    assert "mmvid.api" in graph["mmvid"]  # imported inside __getattr__ only


def test_no_import_cycle():
    found = cycles(import_graph())
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_every_import_goes_to_the_same_or_a_lower_layer():
    graph = import_graph()
    upward = [f"{a} (layer {layer(a)}) imports {b} (layer {layer(b)})"
              for a in sorted(graph) for b in sorted(graph[a]) if layer(b) > layer(a)]
    assert not upward, "\n".join(upward)


def test_every_module_has_a_layer():
    assert all(any(m == p or m.startswith(p + ".") for p in LAYERS) for m in module_names())
