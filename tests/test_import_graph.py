"""The package's import graph has no cycle.

Every ``import speechkit...`` / ``from speechkit... import ...`` anywhere in a module (top
level, ``if TYPE_CHECKING:`` blocks and function bodies alike) is an edge of a static graph
read with ``ast``; a cycle means two modules depend on each other, which a deferred import only
hides. The test names the modules of every cycle it finds.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _module_files(package: str = "speechkit") -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` under ``ROOT/package``."""
    files = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        files[".".join(parts)] = path
    return files


def _imported(module: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The known modules ``module`` imports (a ``from pkg import sub`` counts ``pkg.sub``)."""
    is_package = path.name == "__init__.py"
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = module.split(".") if is_package else module.split(".")[:-1]
                parent = parent[: len(parent) - (node.level - 1)]
                base = ".".join(parent + ([base] if base else []))
            targets.add(base)
            targets.update(f"{base}.{alias.name}" for alias in node.names)
    return {t for t in targets if t in known and t != module}


def import_graph(package: str = "speechkit") -> dict[str, set[str]]:
    """Module -> modules of the same package it imports."""
    known = _module_files(package)
    return {m: _imported(m, p, known) for m, p in known.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_speechkit_has_no_import_cycle():
    graph = import_graph()
    assert "speechkit.data.crop" in graph and "speechkit.data.augment" in graph
    # the crop helpers used to live in speaker_dataset, which augment imported back
    assert "speechkit.data.speaker_dataset" not in graph["speechkit.data.augment"]
    assert "speechkit.data.embedding_dataset" not in graph["speechkit.data.separation_dataset"]
    found = cycles(graph)
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_modules_import_public_names_only():
    """No ``from speechkit.data.X import _private`` between modules of speechkit/."""
    offenders = []
    for module, path in _module_files().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("speechkit"):
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        offenders.append(f"{module}: {node.module}.{alias.name}")
    assert not offenders, offenders
