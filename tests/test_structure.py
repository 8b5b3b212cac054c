"""The package's shape: imports point one way, and functions stay readable."""
from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import sys
from pathlib import Path

import neurosql_med

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "neurosql_med"
CLI = ROOT / "cli"  # installed as neurosql_med.cli
LONGEST_FUNCTION = 60
LONGEST_SIGNATURE = 8  # parameters of a public entry point, beside one options object


def _sources() -> list[Path]:
    """Every module of the package, the command line included."""
    return sorted(PACKAGE.rglob("*.py")) + sorted(CLI.rglob("*.py"))


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_nodes(tree: ast.AST):
    """Every node that runs: ``if TYPE_CHECKING:`` blocks only name types for the reader."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            continue
        yield node
        yield from _runtime_nodes(node)


def _imports(path: Path) -> set[str]:
    """Every neurosql_med module ``path`` imports at run time, at the top or inside a function."""
    found = set()
    for node in _runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("neurosql_med"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("neurosql_med"))
    return found


def _graph() -> dict[str, set[str]]:
    files = {_module(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {m for m in _imports(path) if m in files and m != name} for name, path in files.items()}


def test_no_import_cycles():
    graph = _graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(trail[trail.index(nxt):] + [node, nxt]) if nxt in trail else f"{node} -> {nxt}")
            elif nxt not in state:
                visit(nxt, trail + [node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    assert not cycles, cycles


# Each top-level part of the package may import only parts listed before it.
LAYERS = ("errors", "version", "bounded", "config", "options", "runtime", "metrics", "engine", "io", "data", "viz", "training",
          "synthesis", "evaluation", "export")


def test_imports_point_down_the_layers():
    rank = {name: i for i, name in enumerate(LAYERS)}
    upward = []
    for module, imported in _graph().items():
        parts = module.split(".")
        if len(parts) < 2:
            continue  # the package root re-exports entry points lazily
        for other in imported:
            if rank[other.split(".")[1]] > rank[parts[1]]:
                upward.append(f"{module} -> {other}")
    assert not upward, upward


def test_functions_fit_on_a_screen():
    long = []
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > LONGEST_FUNCTION:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({length} lines)")
    assert not long, long


def _entry_points() -> dict[str, object]:
    """What the command line calls in the library (every name cli/ imports from neurosql_med), the
    package's exports (``neurosql_med.__all__``), and the command functions themselves."""
    found: dict[str, object] = {}
    for path in sorted(CLI.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("neurosql_med"):
                module = importlib.import_module(node.module)
                found |= {f"{node.module}.{a.name}": getattr(module, a.name) for a in node.names}
    found |= {f"neurosql_med.{name}": getattr(neurosql_med, name) for name in neurosql_med.__all__}
    cli_module = importlib.import_module("neurosql_med.cli.main")
    found |= {f"cli.{name}": value for name, value in vars(cli_module).items()
              if inspect.isfunction(value) and value.__module__ == cli_module.__name__}
    return {name: value for name, value in found.items() if callable(value) and not isinstance(value, type(sys))}


def test_entry_points_take_options_objects_not_long_parameter_lists():
    """An entry point takes at most LONGEST_SIGNATURE parameters besides one options object: a command's
    many settings go into its options dataclass (neurosql_med/options.py), which the CLI is built from."""
    long = []
    for name, entry in _entry_points().items():
        if inspect.isclass(entry) and dataclasses.is_dataclass(entry):
            continue  # an options object (or a result record) is the one object, not a parameter list
        try:
            parameters = inspect.signature(entry).parameters
        except (TypeError, ValueError):
            continue
        counted = [p for p in parameters if p not in ("self", "options")]
        if len(counted) > LONGEST_SIGNATURE:
            long.append(f"{name} ({len(counted)} parameters)")
    assert not long, long


def test_the_entry_points_are_found():
    names = _entry_points()
    assert {"neurosql_med.synthesis.synthesize.synthesize", "neurosql_med.training.run.fit_scans",
            "neurosql_med.evaluation.evaluate.evaluate", "neurosql_med.SyntheticDataset", "cli.fit"} <= set(names)
