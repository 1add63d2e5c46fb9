"""The package's layout holds: data flows one way down the README's Layout order, with no circles.

Every ``import covidxray...`` is read from the source (at module level and inside functions alike),
so a lazy import that runs back up a stage fails here as a plain one would.
"""

from __future__ import annotations

import ast
from pathlib import Path

import covidxray

PACKAGE = Path(covidxray.__file__).parent
#: The README's Layout order: a module may import from its own stage and the stages before it.
STAGES = (
    ("errors", "files", "progress", "labels", "backend", "version"),
    ("models",),
    ("data",),
    ("config",),
    ("rundir",),
    ("presets",),
    ("inference",),
    ("evaluation",),
    ("reports",),
    ("training", "web"),
    ("cli", "__main__"),
)
STAGE = {name: rank for rank, names in enumerate(STAGES) for name in names}


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts == ("__init__",):
            continue  # the package's face: names every command's function, loaded on first use
        found[".".join(p for p in parts if p != "__init__")] = path
    return found


def _imports(path: Path) -> set[str]:
    """The covidxray modules ``path`` imports, as names under the package (``data.images``)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "covidxray":
                names |= {alias.name for alias in node.names}
            elif node.module.startswith("covidxray."):
                names.add(node.module.removeprefix("covidxray."))
        elif isinstance(node, ast.Import):
            names |= {a.name.removeprefix("covidxray.") for a in node.names if a.name.startswith("covidxray.")}
    return names


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        targets = set()
        for imported in _imports(path):
            while imported and imported not in modules:  # a name imported from a module: its module
                imported = imported.rpartition(".")[0]
            if imported and imported != name:
                targets.add(imported)
        graph[name] = targets
    return graph


def test_every_module_has_a_stage():
    assert not [name for name in _modules() if name.split(".")[0] not in STAGE]


def test_no_module_imports_from_a_later_stage():
    upward = [f"{name} -> {target}" for name, targets in _graph().items() for target in targets
              if STAGE[target.split(".")[0]] > STAGE[name.split(".")[0]]]
    assert upward == []


def test_no_import_circles():
    graph, circles = _graph(), []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for target in sorted(graph[name]):
            if state.get(target) == 1:
                circles.append(" -> ".join(path[path.index(target):] + [target]))
            elif target not in state:
                visit(target, path + [target])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert circles == []


def test_the_checks_see_an_upward_import_and_a_circle(tmp_path):
    """The walk itself: a lazy import inside a function counts."""
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from covidxray.cli.main import main\n    from covidxray import rundir\n")
    assert _imports(module) == {"cli.main", "rundir"}
