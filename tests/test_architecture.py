"""The layout holds: no import cycle, the rooms import only what they may (``docs/design.md``), one module owns
a noisy module's state, and the public namespace is short.

The import graph is built from the installed package's source with ``ast``: every ``import`` counts, at module
level or inside a function (an import moved into a function to dodge a cycle is still a cycle), except those
under ``if TYPE_CHECKING:``.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
from pathlib import Path

import pytest

import nrnn_plugin

PACKAGE = "nrnn_plugin"


def _modules() -> dict[str, Path]:
    """Every module of the installed package (``adapters`` is installed as ``nrnn_plugin.adapters``)."""
    found: dict[str, Path] = {}
    todo = [(PACKAGE, Path(nrnn_plugin.__file__).parent)]
    while todo:
        name, folder = todo.pop()
        for path in sorted(folder.iterdir()):
            if path.is_dir() and (path / "__init__.py").exists():
                todo.append((f"{name}.{path.name}", path))
            elif path.suffix == ".py":
                found[name if path.stem == "__init__" else f"{name}.{path.stem}"] = path
    adapters = importlib.util.find_spec(f"{PACKAGE}.adapters")
    assert adapters is not None and adapters.submodule_search_locations
    for location in adapters.submodule_search_locations:
        todo = [(f"{PACKAGE}.adapters", Path(location))]
        while todo:
            name, folder = todo.pop()
            for path in sorted(folder.iterdir()):
                if path.is_dir() and (path / "__init__.py").exists():
                    todo.append((f"{name}.{path.name}", path))
                elif path.suffix == ".py":
                    found[name if path.stem == "__init__" else f"{name}.{path.stem}"] = path
    found.pop(f"{PACKAGE}.__main__", None)  # the console entry, not part of the library
    return found


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(child) for stmt in node.body for child in ast.walk(stmt))
    return skipped


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """Names imported by the module at ``path``: package modules resolved, other top-level packages as is."""
    tree = ast.parse(path.read_text())
    skipped = _type_checking_nodes(tree)
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                names.add(candidate if candidate in modules else node.module)
    return names


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, modules) for name, path in modules.items()}


def _internal(graph: dict[str, set[str]], name: str) -> set[str]:
    return {target for target in graph[name] if target in graph}


def test_the_graph_sees_the_whole_package(graph):
    for expected in (
        "nrnn_plugin.runtime",
        "nrnn_plugin.plugins.manager",
        "nrnn_plugin.app.cli",
        "nrnn_plugin.adapters.forecasting.classes",
        "nrnn_plugin.integrations.lightning",
    ):
        assert expected in graph
    assert "nrnn_plugin.runtime" in graph["nrnn_plugin.swap"]  # edges are found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of the graph's internal edges (``[a, b, ..., a]``) by depth-first search, or ``None``."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = 1
        stack.append(name)
        for target in sorted(_internal(graph, name)):
            if state.get(target) == 1:
                return stack[stack.index(target) :] + [target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        stack.pop()
        state[name] = 2
        return None

    for name in sorted(graph):
        if name not in state:
            found = visit(name)
            if found:
                return found
    return None


def test_no_import_cycle(graph):
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_check_can_fail():
    """The check finds a planted cycle (it is not vacuous)."""
    assert find_cycle({"a": {"b"}, "b": {"c", "x"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


LIBRARY_FORBIDDEN = ("nrnn_plugin.app", "nrnn_plugin.adapters")
FRAMEWORKS = ("lightning", "pytorch_lightning", "pytorch_forecasting", "darts", "neuralforecast", "gluonts")


def _room(name: str) -> str:
    for room in ("app", "adapters", "integrations"):
        if name.startswith(f"{PACKAGE}.{room}"):
            return room
    return "core"


def test_the_library_never_imports_the_application_or_the_adapters(graph):
    for name, targets in graph.items():
        if _room(name) in ("core", "integrations"):
            bad = sorted(t for t in targets if t.startswith(LIBRARY_FORBIDDEN))
            assert not bad, f"{name} imports {bad}"


def test_the_core_knows_no_training_framework(graph):
    for name, targets in graph.items():
        if _room(name) == "core":
            bad = sorted(t for t in targets if t.split(".")[0] in FRAMEWORKS)
            assert not bad, f"{name} imports {bad}"


def test_the_lightning_integration_knows_lightning_only(graph):
    for name, targets in graph.items():
        if _room(name) == "integrations":
            bad = sorted(t for t in targets if t.split(".")[0] in FRAMEWORKS[2:])
            assert not bad, f"{name} imports {bad}"


def test_noise_and_validation_import_nothing_from_the_package(graph):
    for name in ("nrnn_plugin.noise", "nrnn_plugin.validation"):
        assert not {t for t in graph[name] if t.startswith(PACKAGE)}, graph[name]


def test_only_the_runtime_module_touches_a_modules_noise_state():
    modules = _modules()
    touching = sorted(name for name, path in modules.items() if "_nrnn_runtime" in path.read_text())
    assert touching == ["nrnn_plugin.runtime"]


def test_public_namespace_is_short():
    """``dir(nrnn_plugin)`` is the ten public names, and each (lazy ones included) is the object of its module."""
    homes = {
        "NoiseConfig": "nrnn_plugin.config",
        "Schedule": "nrnn_plugin.config",
        "register_noise": "nrnn_plugin.swap",
        "remove_noise": "nrnn_plugin.swap",
        "is_noisy": "nrnn_plugin.swap",
        "noisy_modules": "nrnn_plugin.swap",
        "explicit_regularizer": "nrnn_plugin.regularizer.api",
        "NoisyRNNCallback": "nrnn_plugin.integrations.lightning",
        "NRNN": "nrnn_plugin.layers.nrnn",
        "hookimpl": "nrnn_plugin.plugins.hookspecs",
    }
    assert dir(nrnn_plugin) == sorted([*nrnn_plugin.__all__, "__version__"])
    assert set(nrnn_plugin.__all__) == set(homes)
    for name, module in homes.items():
        assert getattr(nrnn_plugin, name) is getattr(importlib.import_module(module), name), name
    with pytest.raises(AttributeError, match="no attribute 'NoisyLSTM'"):
        nrnn_plugin.NoisyLSTM  # noqa: B018 (the lookup is the test)


def test_module_sizes_stay_small():
    """No module over 400 lines except the hand-written kernels (``docs/design.md``)."""
    kernels = {"nrnn_plugin.layers.functions"}
    large = {name: len(path.read_text().splitlines()) for name, path in _modules().items()}
    over = {name: lines for name, lines in large.items() if lines > 400 and name not in kernels}
    assert not over, over
