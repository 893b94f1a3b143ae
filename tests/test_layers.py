"""The package's imports flow one way: down the layers, never up, never in a cycle.

Every import counts, including those inside functions and under TYPE_CHECKING: a cycle held together
by a function-level import is still two modules owning one idea (../shared/STYLE.md).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "sentilora"

# Bottom to top. A module may import modules of its own layer or of any layer below it.
LAYERS: list[set[str]] = [
    {"errors"},
    {"files", "progress"},
    {"config", "tables", "metrics", "calibration", "batching", "tokens", "distributed", "schedule", "labels", "baseline"},
    {"data", "heads", "contrastive", "explain", "recipe"},
    {"model"},
    {"bundle", "prefix"},
    {"predict"},
    {"report", "figures", "evaluate", "calibrate", "train", "train_step", "checkpoint", "scoring", "export", "quantize"},
    {"batcher", "guard", "serve", "ray_engine", "cli", "__init__", "__main__"},
]


def _layer_of(name: str) -> int:
    for i, layer in enumerate(LAYERS):
        if name in layer:
            return i
    raise AssertionError(f"sentilora/{name}.py is in no layer: add it to LAYERS in tests/test_layers.py")


def imports_of(source: str, *, module: str) -> set[str]:
    """The sentilora modules that `source` imports, anywhere in the file."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "sentilora" or alias.name.startswith("sentilora."):
                    found.add(alias.name.removeprefix("sentilora").lstrip(".") or "__init__")
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from . import x / from .x import y
                base = node.module or ""
            elif node.module and (node.module == "sentilora" or node.module.startswith("sentilora.")):
                base = node.module.removeprefix("sentilora").lstrip(".")
            else:
                continue
            if base:
                found.add(base.split(".")[0])
            else:  # from sentilora import model / __version__
                names = {a.name for a in node.names}
                found |= {n for n in names if (PACKAGE / f"{n}.py").is_file()} or {"__init__"}
    found.discard(module)
    return found


def graph() -> dict[str, set[str]]:
    return {p.stem: imports_of(p.read_text(encoding="utf-8"), module=p.stem) for p in sorted(PACKAGE.glob("*.py"))}


def upward_imports(g: dict[str, set[str]]) -> list[str]:
    return [f"{m} (layer {_layer_of(m)}) imports {d} (layer {_layer_of(d)})"
            for m, deps in g.items() for d in sorted(deps) if _layer_of(d) > _layer_of(m)]


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
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

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_every_module_has_a_layer() -> None:
    for m in graph():
        _layer_of(m)


def test_no_upward_imports() -> None:
    assert upward_imports(graph()) == []


def test_no_import_cycles() -> None:
    assert cycles(graph()) == []


@pytest.mark.parametrize("planted, expect", [
    # an upward import hidden inside a function, as the old model.py -> prefix.py one was
    ({"model": "def f():\n    from sentilora.predict import Classifier\n"}, "model (layer 4) imports predict"),
    ({"tables": "from sentilora import data\n"}, "tables (layer 2) imports data"),
    ({"metrics": "if True:\n    import sentilora.evaluate\n"}, "metrics (layer 2) imports evaluate"),
])
def test_the_check_catches_a_planted_upward_import(planted: dict[str, str], expect: str) -> None:
    g = graph()
    for m, src in planted.items():
        g[m] = g[m] | imports_of(src, module=m)
    assert any(line.startswith(expect) for line in upward_imports(g))


def test_the_check_catches_a_planted_cycle() -> None:
    g = graph()
    g["evaluate"] = g["evaluate"] | imports_of("def f():\n    from sentilora import calibrate\n", module="evaluate")
    assert ["calibrate", "evaluate"] in cycles(g)
