"""The package's shape: wings that name the pipeline, imports that point only down it, no import circles.

The imports are read from the sources (every `import` statement, lazy and TYPE_CHECKING ones included), so a
function-level import cannot hide an upward arrow.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import poisonbench

PACKAGE = Path(poisonbench.__file__).parent

# Down the pipeline: a wing may import the wings of a lower rank (and itself), never a higher or equal one.
# attacks and defenses are peers: neither knows the other.
RANKS = {"core": 0, "data": 1, "engine": 2, "attacks": 3, "defenses": 3, "poisons": 4, "experiment": 5,
         "report": 6, "sweeps": 7, "cli": 8}

# Upward imports that exist today and are to go, each a known defect; the test fails if one is added, and if one of
# these is removed without being struck from the list. Issue 56 emptied it: sweeps build specs through the library.
KNOWN_UPWARD: set[tuple[str, str]] = set()


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The package modules `name` imports: relative imports resolved; `from pkg import mod` is an import of
    `pkg.mod` (not of `pkg`'s other modules) when `mod` is a module, else of `pkg`."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            targets = [f"{source}.{a.name}" if f"{source}.{a.name}" in known else source for a in node.names]
        else:
            continue
        out.update(t for t in targets if t in known and t != name)
    return out


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports_of(name, path, set(mods)) for name, path in mods.items()}


def wing(name: str) -> str | None:
    """The wing of a module; None for the package root, `__main__` and `api` (the entry points above every wing)."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in RANKS else None


def upward(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    out = set()
    for source, targets in graph.items():
        for target in targets:
            a, b = wing(source), wing(target)
            if a is None or b is None or a == b:
                continue  # the root's version string is below everything, `__main__` above
            if RANKS[b] >= RANKS[a]:
                out.add((source, target))
    return out


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []
    counter = [0]
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_every_module_lives_in_a_wing_and_the_wings_are_few():
    loose = sorted(p.name for p in PACKAGE.glob("*.py"))
    # the two entry points above every wing: the command (`__main__`) and the Python API (`api`, docs/api.md)
    assert loose == ["__init__.py", "__main__.py", "api.py"]
    wings = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file())
    assert wings == sorted(RANKS)
    assert len(wings) <= 12


def test_imports_point_only_down_the_pipeline():
    found = upward(import_graph())
    assert found - KNOWN_UPWARD == set(), "imports that point up the pipeline"
    assert KNOWN_UPWARD - found == set(), "gone from the code: strike them from KNOWN_UPWARD"


def test_there_is_no_import_circle():
    graph = import_graph()
    for source, target in KNOWN_UPWARD:
        graph[source].discard(target)
    assert circles(graph) == []


def test_the_layer_checks_catch_an_upward_import_and_a_circle(tmp_path, monkeypatch):
    """The checks themselves: an engine module importing an experiment module is upward, and two modules that
    import each other are a circle."""
    graph = {"poisonbench.engine.training": {"poisonbench.experiment.records"},
             "poisonbench.experiment.records": {"poisonbench.core.io"},
             "poisonbench.core.io": set(),
             "poisonbench.attacks.gm": {"poisonbench.defenses.hint"},
             "poisonbench.defenses.hint": set()}
    assert upward(graph) == {("poisonbench.engine.training", "poisonbench.experiment.records"),
                             ("poisonbench.attacks.gm", "poisonbench.defenses.hint")}
    graph["poisonbench.experiment.records"].add("poisonbench.engine.training")
    assert circles(graph) == [["poisonbench.engine.training", "poisonbench.experiment.records"]]


@pytest.mark.parametrize("statement,expected", [
    ("from ..experiment.records import RunStore", {"poisonbench.experiment.records"}),
    ("from ..experiment import records", {"poisonbench.experiment.records"}),
    ("import poisonbench.experiment.records as r", {"poisonbench.experiment.records"}),
    ("def f():\n    from ..report import tables\n", {"poisonbench.report.tables"}),
])
def test_every_kind_of_import_is_read(tmp_path, statement, expected):
    path = tmp_path / "training.py"
    path.write_text(statement + "\n")
    known = set(modules())
    assert imports_of("poisonbench.engine.training", path, known) == expected
