"""The layering of specdyn's packages: imports (module-level and lazy ones inside functions) only point down.

Top to bottom: entry points and the API, the report, plots, evaluations, the analyze and train pipelines, the
store (and the task models), the spectral maths and checkpoint reading, and the base utilities. Packages on
one layer below the entry layer are independent of each other. docs/architecture.md draws the same picture.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "specdyn"

LAYERS = [
    {"specdyn", "specdyn.__main__", "specdyn.cli", "specdyn.commands"},
    {"specdyn.report"},
    {"specdyn.plots"},
    {"specdyn.evals", "specdyn.integrations"},
    {"specdyn.analyze", "specdyn.train"},
    {"specdyn.store", "specdyn.tasks", "specdyn.branching", "specdyn.arch"},
    {"specdyn.spectral", "specdyn.io"},
    {
        "specdyn.options",
        "specdyn.train_options",
        "specdyn.selection",
        "specdyn.names",
        "specdyn.console",
        "specdyn.errors",
        "specdyn.files",
        "specdyn.version",
    },
]
SHARED = {0, len(LAYERS) - 1}  # layers whose members may import each other (entry points; base utilities)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, known: set[str]) -> set[str]:
    """Every specdyn module `path` imports, anywhere in the file."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "specdyn":
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                out.add(sub if sub in known else node.module)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "specdyn"}
    return out


def import_graph() -> dict[str, set[str]]:
    files = sorted(PACKAGE.rglob("*.py"))
    known = {module_name(p) for p in files}
    return {module_name(p): imports_of(p, known) for p in files}


def unit(module: str) -> str:
    """The package (or top-level module) a module belongs to: `specdyn.io.hf` -> `specdyn.io`."""
    return ".".join(module.split(".")[:2])


def layer_of(module: str) -> int:
    for i, members in enumerate(LAYERS):
        if unit(module) in members:
            return i
    raise AssertionError(f"{module} is on no layer; add its package to LAYERS (and docs/architecture.md)")


def violations(graph: dict[str, set[str]]) -> list[str]:
    out = []
    for src, targets in sorted(graph.items()):
        for dst in sorted(targets):
            a, b = layer_of(src), layer_of(dst)
            if unit(src) == unit(dst):
                continue
            if b < a or (b == a and a not in SHARED):
                out.append(f"{src} (layer {a}) imports {dst} (layer {b})")
    return out


def test_imports_only_point_down():
    assert violations(import_graph()) == []


@pytest.mark.parametrize(
    "src, dst",
    [
        ("specdyn.store.reading", "specdyn.commands.info"),  # up: the store reaching into the CLI
        ("specdyn.plots.interp", "specdyn.commands.plot"),
        ("specdyn.spectral.metrics", "specdyn.store.layout"),  # up: the maths knowing the store
        ("specdyn.io.hf", "specdyn.spectral.matrices"),  # sideways between independent packages
        ("specdyn.analyze.run", "specdyn.train"),
    ],
)
def test_an_import_that_runs_back_up_fails(src, dst):
    graph = import_graph()
    graph[src] = graph.get(src, set()) | {dst}
    assert any(v.startswith(f"{src} ") and dst in v for v in violations(graph))


def test_every_module_is_on_a_layer():
    for module in import_graph():
        layer_of(module)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Import circles between modules (lazy imports included): the strongly connected components of size > 1."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_circles():
    graph = {m: {t for t in targets if t != m and t != "specdyn"} for m, targets in import_graph().items()}
    assert cycles(graph) == []


def test_an_import_circle_fails():
    graph = import_graph()
    graph["specdyn.spectral.metrics"] = graph["specdyn.spectral.metrics"] | {"specdyn.spectral.heavy_tail"}
    graph["specdyn.spectral.heavy_tail"] = graph["specdyn.spectral.heavy_tail"] | {"specdyn.spectral.metrics"}
    assert ["specdyn.spectral.heavy_tail", "specdyn.spectral.metrics"] in cycles(graph)
