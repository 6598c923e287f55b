"""Layers: streams (what a worker runs), encoders (inference), encoders.training, vrec_tools.

Two checks. Every module imports on its own in a fresh interpreter (so no import order hides a
cycle or a missing import), and an import graph read with ``ast`` from the source (imports at the
top and inside functions; ``if TYPE_CHECKING:`` blocks aside) has no cycles, no import of another
module's private names, and no edge from a lower layer to a higher one.
"""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("streams", "encoders", "vrec_tools")

# The one edge from inference to training: the registry exports an ONNX file with torch when it
# is missing (ensure_model / ensure_text_model); a worker whose models are in place never takes it.
ON_DEMAND_EXPORT = {
    ("encoders.registry", "encoders.training.export"),
    ("encoders.registry", "encoders.training.text_export"),
}


def _module_files() -> dict[str, Path]:
    mods: dict[str, Path] = {}
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(parts)] = path
    return mods


MODULES = _module_files()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(name: str, source: str, is_package: bool) -> list[tuple[str, str | None, int]]:
    """``(module, imported name or None, line)`` for each import in ``source``: top level and
    function-local, resolving relative imports; ``if TYPE_CHECKING:`` bodies are left out."""
    found: list[tuple[str, str | None, int]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend((alias.name, None, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                module = ".".join([*base, *([module] if module else [])])
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                if sub in MODULES:  # `from pkg import submodule`
                    found.append((sub, None, node.lineno))
                else:
                    found.append((module, alias.name, node.lineno))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(source))
    return found


def import_graph(
    sources: dict[str, tuple[str, bool]],
) -> tuple[dict[str, set[str]], list[str]]:
    """Edges between our modules, and the private-name imports (``module:line imports _x``)."""
    graph: dict[str, set[str]] = {m: set() for m in sources}
    private: list[str] = []
    for name, (source, is_package) in sources.items():
        for module, imported, line in imports_of(name, source, is_package):
            if module.split(".")[0] not in PACKAGES:
                continue
            if module != name and module in sources:
                graph[name].add(module)
            if imported and imported.startswith("_") and not imported.startswith("__"):
                private.append(f"{name}:{line} imports {imported} from {module}")
    return graph, private


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := dfs(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := dfs(start)):
            return found
    return None


def closure(graph: dict[str, set[str]], start: str) -> set[str]:
    """Modules loaded by importing ``start`` (with the packages above each one)."""
    seen: set[str] = set()
    todo = [start]
    while todo:
        mod = todo.pop()
        if mod in seen:
            continue
        seen.add(mod)
        parts = mod.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)) if ".".join(parts[:i]))
        todo.extend(graph.get(mod, ()))
    return seen


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for src, dests in graph.items():
        for dst in dests:
            if src.startswith("streams") and dst.startswith("vrec_tools"):
                bad.append(f"runtime {src} imports tooling {dst}")
            inference = src.startswith("encoders") and not src.startswith("encoders.training")
            if inference and dst.startswith("vrec_tools"):
                bad.append(f"inference {src} imports tooling {dst}")
            if (
                inference
                and dst.startswith("encoders.training")
                and (src, dst) not in ON_DEMAND_EXPORT
            ):
                bad.append(f"inference {src} imports training {dst}")
    return sorted(bad)


def _sources() -> dict[str, tuple[str, bool]]:
    return {m: (p.read_text(), p.name == "__init__.py") for m, p in MODULES.items()}


def _graph_without_on_demand_export() -> dict[str, set[str]]:
    graph, _ = import_graph(_sources())
    for src, dst in ON_DEMAND_EXPORT:
        graph[src].discard(dst)
    return graph


# ------------------------------------------------------------------ the graph


def test_no_import_cycles() -> None:
    graph = _graph_without_on_demand_export()
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_no_private_names_imported_from_another_module() -> None:
    _, private = import_graph(_sources())
    assert private == []


def test_layers_point_down() -> None:
    graph, _ = import_graph(_sources())
    assert layer_violations(graph) == []


def test_the_worker_never_loads_tooling_or_training() -> None:
    loaded = closure(_graph_without_on_demand_export(), "streams.worker")
    assert "streams.app" in loaded and "encoders.image" in loaded  # the graph is not empty
    assert "vrec_tools.broker" not in loaded
    assert sorted(m for m in loaded if m.startswith(("vrec_tools", "encoders.training"))) == []


# each check fails on a bad import (the checks themselves are tested on a made-up tree)


def _fake(**modules: str) -> dict[str, tuple[str, bool]]:
    return {name: (src, False) for name, src in modules.items()}


def test_checks_catch_bad_imports() -> None:
    graph, private = import_graph(
        _fake(
            **{
                "streams.worker": "from streams.app import build\n",
                "streams.app": "def f():\n    from vrec_tools.broker import KafkaBroker\n",
                "vrec_tools.broker": "from streams.app import _secret\n",
                "encoders.image": "from encoders.training.export import export_onnx\n",
                "encoders.training.export": "import numpy\n",
            }
        )
    )
    assert find_cycle(graph) == ["streams.app", "vrec_tools.broker", "streams.app"]
    assert private == ["vrec_tools.broker:1 imports _secret from streams.app"]
    assert layer_violations(graph) == [
        "inference encoders.image imports training encoders.training.export",
        "runtime streams.app imports tooling vrec_tools.broker",
    ]
    assert "vrec_tools.broker" in closure(graph, "streams.worker")
    # imports only made for type checking are no edges
    typed, _ = import_graph(
        _fake(
            **{
                "streams.app": "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n    from streams.web import Web\n",
                "streams.web": "from streams.app import App\n",
            }
        )
    )
    assert find_cycle(typed) is None


# ------------------------------------------------------------------ fresh interpreters

_HAS_TORCH = importlib.util.find_spec("torch") is not None


def _needs_torch(module: str) -> bool:
    """Training modules may need torch at import time: skipped only where torch is missing."""
    return module.startswith("encoders.training")


def test_every_module_imports_in_a_fresh_interpreter() -> None:
    wanted = [m for m in MODULES if _HAS_TORCH or not _needs_torch(m)]
    # one interpreter per module, a few at a time (each starts from an empty sys.modules)
    script = (
        "import importlib, sys\n"
        "importlib.import_module(sys.argv[1])\n"
        "print('torch' in sys.modules)\n"
    )
    failures: dict[str, str] = {}
    running: list[tuple[str, subprocess.Popen[str]]] = []

    def reap(item: tuple[str, subprocess.Popen[str]]) -> None:
        module, proc = item
        out, err = proc.communicate(timeout=120)
        if proc.returncode != 0:
            failures[module] = err.strip().splitlines()[-1] if err.strip() else out
        elif module.startswith("streams") and out.strip() == "True":
            failures[module] = "the runtime module imports torch"

    for module in wanted:
        proc = subprocess.Popen(
            [sys.executable, "-c", script, module],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        running.append((module, proc))
        if len(running) >= 4:
            reap(running.pop(0))
    for item in running:
        reap(item)
    assert failures == {}
    assert len(wanted) > 50
