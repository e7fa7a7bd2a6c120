"""The layers import one way, and the modules import each other in no circle.

The rooms of ``celery_taskq`` and what each may import of the project:

================  ============================================================================
room              may import
================  ============================================================================
``core``          the core only; never Celery, kombu, click, FastAPI or Starlette
``api``           the core (``celery_taskq.api``, the public functions)
``root``          the API and the core (``celery_taskq/__init__.py``, the public names)
``celery``        the core, and the API for its enqueue hook; never click or the web framework
``reports``       the core only; never Celery, kombu, click or the web framework
``web``           everything below it: reports, Celery layer, API, core; never the CLI
``cli``           everything
``__main__``      the CLI
``migrations``    the core
``examples``      the public names and the core
================  ============================================================================

The directions are read from the source (every import, wherever it stands); the runtime tests
import each room with what it must not use made unimportable. No circle means none among the
imports made when a module loads, and none hidden by an import inside a function either;
imports under ``if TYPE_CHECKING:`` never run and are left out.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import celery_taskq

PACKAGE = "celery_taskq"
PACKAGE_ROOT = Path(celery_taskq.__file__).resolve().parent

ALLOWED: dict[str, set[str]] = {
    "core": {"core"},
    "api": {"core"},
    "root": {"api", "core"},
    "celery": {"celery", "api", "core"},
    "reports": {"reports", "core"},
    "web": {"web", "reports", "celery", "api", "root", "core"},
    "cli": {"cli", "web", "reports", "celery", "api", "root", "core"},
    "entry": {"cli"},
    "migrations": {"core"},
    "examples": {"root", "core"},
}
"""Room → the rooms of the project its modules may import."""

THIRD_PARTY_FORBIDDEN: dict[str, set[str]] = {
    "core": {"celery", "kombu", "click", "fastapi", "starlette", "flask", "django"},
    "api": {"celery", "kombu", "click", "fastapi", "starlette", "flask", "django"},
    "root": {"celery", "kombu", "click", "fastapi", "starlette", "flask", "django"},
    "reports": {"celery", "kombu", "click", "fastapi", "starlette", "flask", "django"},
    "celery": {"click", "fastapi", "starlette", "flask", "django"},
}
"""Room → top-level packages its modules must never import."""

WEB_AND_CLI = ["click", "fastapi", "starlette", "flask", "django"]


def room_of(module: str) -> str:
    """The room of a module of the project (see the module's table)."""
    if module == PACKAGE:
        return "root"
    part = module.split(".")[1]
    return {"__main__": "entry"}.get(part, part)


def project_modules() -> dict[str, Path]:
    """Every module of the package, by dotted name (a package by its ``__init__.py``)."""
    modules = {}
    for path in sorted(PACKAGE_ROOT.rglob("*.py")):
        parts = [PACKAGE, *path.relative_to(PACKAGE_ROOT).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


MODULES = project_modules()


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imported(module: str, node: ast.Import | ast.ImportFrom) -> Iterator[str]:
    """The modules an import statement of ``module`` names: a submodule where it names one."""
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
        return
    base = node.module or ""
    if node.level:
        package = module.split(".")
        if MODULES[module].name != "__init__.py":
            package.pop()
        package = package[: len(package) - node.level + 1]
        base = ".".join([*package, base] if base else package)
    for alias in node.names:
        submodule = f"{base}.{alias.name}"
        yield submodule if submodule in MODULES else base


def imports_of(module: str, *, in_functions: bool = True, type_only: bool = True) -> set[str]:
    """The modules ``module`` imports; without ``in_functions``, not those imported inside a
    function; without ``type_only``, not those under ``if TYPE_CHECKING:``."""
    tree = ast.parse(MODULES[module].read_text(), str(MODULES[module]))
    found: set[str] = set()

    def visit(nodes: list[ast.AST]) -> None:
        for node in nodes:
            if isinstance(node, ast.Import | ast.ImportFrom):
                found.update(_imported(module, node))
            elif not in_functions and isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            elif not type_only and isinstance(node, ast.If) and _is_type_checking(node):
                visit(list(node.orelse))
            else:
                visit(list(ast.iter_child_nodes(node)))

    visit(list(tree.body))
    return found


def test_every_module_is_in_a_room() -> None:
    assert {module: room_of(module) for module in MODULES if room_of(module) not in ALLOWED} == {}


def test_every_room_imports_only_the_rooms_below_it() -> None:
    # Given every import of every module, wherever it stands
    wrong = []
    for module in MODULES:
        room = room_of(module)
        for imported in imports_of(module):
            # When an import names a room of the project, or a package the room must not use
            if imported == PACKAGE or imported.startswith(PACKAGE + "."):
                if room_of(imported) not in ALLOWED[room]:
                    wrong.append(f"{module} ({room}) imports {imported} ({room_of(imported)})")
            elif imported.split(".")[0] in THIRD_PARTY_FORBIDDEN.get(room, set()):
                wrong.append(f"{module} ({room}) imports {imported}")
    # Then it is one the table allows
    assert wrong == []


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path that returns to its start, or ``None``."""
    done: set[str] = set()
    path: list[str] = []
    on_path: set[str] = set()

    def walk(node: str) -> list[str] | None:
        path.append(node)
        on_path.add(node)
        for target in sorted(graph[node]):
            if target in on_path:
                return [*path[path.index(target) :], target]
            if target not in done:
                cycle = walk(target)
                if cycle is not None:
                    return cycle
        path.pop()
        on_path.discard(node)
        done.add(node)
        return None

    for start in sorted(graph):
        if start not in done:
            cycle = walk(start)
            if cycle is not None:
                return cycle
    return None


def import_graph(*, in_functions: bool) -> dict[str, set[str]]:
    """Module → the modules of the project it imports (type-only imports left out)."""
    return {
        module: {
            imported
            for imported in imports_of(module, in_functions=in_functions, type_only=False)
            if imported in MODULES and imported != module
        }
        for module in MODULES
    }


def test_no_import_circle_between_the_modules() -> None:
    # Given the imports each module makes when it loads (type-only imports left out)
    graph = import_graph(in_functions=False)
    # Then they form no circle
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_no_import_circle_is_dodged_by_an_import_inside_a_function() -> None:
    # Given also the imports made inside functions (a circle hidden from the module level)
    graph = import_graph(in_functions=True)
    # Then they form no circle either
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_the_cycle_finder_finds_a_circle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def importable(modules: list[str], blocked: list[str]) -> subprocess.CompletedProcess[str]:
    """Import ``modules`` in a fresh interpreter with ``blocked`` made unimportable."""
    program = "\n".join(
        [
            "import sys",
            *(f"sys.modules[{name!r}] = None" for name in blocked),
            *(f"import {module}" for module in modules),
        ]
    )
    return subprocess.run([sys.executable, "-c", program], capture_output=True, text=True)


def modules_of(*rooms: str) -> list[str]:
    """The modules of the given rooms (migrations run only under Alembic: left out)."""
    return [module for module in MODULES if room_of(module) in rooms]


@pytest.mark.parametrize(
    ("rooms", "blocked"),
    [
        (
            ("root", "api", "core"),
            ["celery", "kombu", *WEB_AND_CLI]
            + [f"{PACKAGE}.{room}" for room in ("celery", "reports", "web", "cli")],
        ),
        (
            ("reports",),
            ["celery", "kombu", *WEB_AND_CLI]
            + [f"{PACKAGE}.{room}" for room in ("celery", "web", "cli")],
        ),
        (
            ("celery",),
            # Celery itself imports click: that the layer does not is checked from the source.
            ["fastapi", "starlette", "flask", "django"]
            + [f"{PACKAGE}.{room}" for room in ("reports", "web", "cli")],
        ),
    ],
    ids=["core", "reports", "celery"],
)
def test_each_room_imports_without_what_it_must_not_use(
    rooms: tuple[str, ...], blocked: list[str]
) -> None:
    # Given the packages a room must not use made unimportable, When its modules are imported
    result = importable(modules_of(*rooms), blocked)
    # Then nothing fails to import
    assert result.returncode == 0, result.stderr


def test_the_reports_package_names_what_its_sections_define() -> None:
    reports = importlib.import_module(f"{PACKAGE}.reports")
    for name in reports.__all__:
        module = importlib.import_module(f"{PACKAGE}.reports.{reports._EXPORTS[name]}")
        assert getattr(reports, name) is getattr(module, name), name
