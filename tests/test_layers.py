"""The package's layers: lower layers never import higher ones, and no module imports itself back in a circle.

Every import counts, function-local ones included, so a circle cannot hide inside a function.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "grasp_dl"

#: Each area of the package and its floor; an area may import only areas on lower floors (and itself).
FLOORS = {
    "runtime": 0,
    "data": 1,
    "mixtures": 2,
    "membership": 2,
    "engine": 2,
    "metrics": 3,
    "figures": 4,
    "models": 5,
    "inference": 6,
    "jobs": 7,
    "api": 8,
    "grasp": 9,
    "cli": 9,
    "utils": 9,
    "__init__": 10,
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _area(module: str) -> str:
    parts = module.split(".")
    return "__init__" if len(parts) == 1 else parts[1]


def _imports(path: Path) -> set[str]:
    """The grasp_dl modules a file imports anywhere in it (``from pkg import module`` resolved to the module)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("grasp_dl"):
            found.add(node.module)
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                as_path = PACKAGE.parent / candidate.replace(".", "/")
                if as_path.with_suffix(".py").is_file() or as_path.is_dir():
                    found.add(candidate)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("grasp_dl"))
    return found


GRAPH = {_module_name(p): _imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def test_every_area_has_a_floor() -> None:
    assert {_area(m) for m in GRAPH} <= set(FLOORS), "a new area of grasp_dl/ needs its floor in FLOORS"


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_no_import_runs_up(module: str) -> None:
    upward = [
        other
        for other in GRAPH[module]
        if _area(other) != _area(module) and FLOORS[_area(other)] > FLOORS[_area(module)]
    ]
    assert not upward, f"{module} imports {upward} from a higher layer"


def test_no_import_circles() -> None:
    """Depth-first search over module imports (a package's __init__ importing its own modules excepted)."""
    graph = {m: {o for o in deps if o in GRAPH and not m.startswith(o + ".") and o != m} for m, deps in GRAPH.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                circle = stack[stack.index(nxt) :] + [nxt]
                raise AssertionError(f"import circle: {' -> '.join(circle)}")
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)


def test_the_rules_of_the_design() -> None:
    """data/ imports no model and no engine; models/ no catalogue scoring; runtime/ no model."""
    for module, deps in GRAPH.items():
        areas = {_area(d) for d in deps}
        if _area(module) == "data":
            assert not areas & {"models", "engine"}, module
        if _area(module) == "models":
            assert "inference" not in areas, module
        if _area(module) == "runtime":
            assert "models" not in areas, module
