"""Every import among pokediff's modules points down: no cycle, counting the imports inside functions.

An import hidden in a function still closes a circle: it only moves the failure from import time to
the first call, and it ties the modules together as much as a top-level import does (dvc.yaml's code
deps follow it, see pipelines/stage_deps.py). So the graph here holds every `import` / `from ... import`
anywhere in a module's source, parsed with ast, never executed.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def module_name(path: Path, src: Path) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(src: Path, package: str = "pokediff") -> dict[str, set[str]]:
    """module -> the package's modules it names in any import statement (top level or in a function).

    ``from a.b import c`` names a.b (its __init__ runs) and a.b.c when that is a module; a parent
    package that Python initialises on the way is not an edge of its own, so a package __init__ that
    re-exports its modules is not a cycle by itself."""
    modules = {module_name(p, src): p for p in (src / package).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]
        named: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import):
                named.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from . / .. import
                    parent = here.split(".")[: len(here.split(".")) - (node.level - 1)]
                    base = ".".join(parent + ([node.module] if node.module else []))
                named.add(base)
                named.update(f"{base}.{alias.name}" for alias in node.names)
        graph[name] = {m for m in named if m in modules and m != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
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


def test_no_import_cycle_among_pokediff_modules():
    graph = import_graph(SRC)
    assert len(graph) > 40 and graph["pokediff.stages.train"], "the graph must cover the package"
    assert cycles(graph) == []


def test_tracking_is_imported_only_from_above():
    """MLflow code sits at the top: only the stages (and tracking itself) import it."""
    graph = import_graph(SRC)
    importers = sorted(m for m, deps in graph.items() if any(d.startswith("pokediff.tracking") for d in deps)
                       and not m.startswith(("pokediff.tracking", "pokediff.stages.")))
    assert importers == []


def test_a_cycle_closed_inside_a_function_is_found(tmp_path):
    """The detector sees function-level and relative imports (what hid the old circles)."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text('"""A package."""\n')
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from .. import a\n    return a\n")
    (pkg / "c.py").write_text("import pkg.a\n")
    graph = import_graph(tmp_path, "pkg")
    assert graph["pkg.sub.b"] == {"pkg", "pkg.a"}
    assert cycles(graph) == [["pkg.a", "pkg.sub.b"]]


def test_only_tracking_imports_mlflow():
    """pokediff.tracking is the one home of MLflow calls, for the library, the flows and the benchmarks."""
    root = SRC.parent
    offenders = []
    for folder in ("src", "pipelines", "benchmarks"):
        for path in (root / folder).rglob("*.py"):
            if (root / "src" / "pokediff" / "tracking") in path.parents:
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module or ""] if isinstance(node, ast.ImportFrom) else []
                if any(n == "mlflow" or n.startswith("mlflow.") for n in names):
                    offenders.append(f"{path.relative_to(root)}:{node.lineno}")
    assert offenders == []
