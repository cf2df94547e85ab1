"""The import layers, checked over the syntax tree of every .py file of the repository.

- no service imports another service (nor the composition root beside them);
- the shared library (``libs/flowbus``) never imports ``flowbus_services``;
- the SDK (``flowbus.sdk``) imports neither ``flowbus.agent`` nor ``flowbus.client`` at module level;
- no import cycle at module level.

Each rule is a function over the imports of a source tree, so the tests at the
end also run it on a small tree broken on purpose and see it complain.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICES = "flowbus_services"


@dataclass(frozen=True)
class Import:
    importer: str
    imported: str
    how: str  # "module level" (runs when the importer is imported), "in a function" or "by name"
    line: int

    @property
    def module_level(self) -> bool:
        return self.how == "module level"

    def __str__(self) -> str:
        return f"{self.importer}:{self.line} imports {self.imported}" + ("" if self.module_level else f" ({self.how})")


def modules_of(root: Path) -> dict[str, Path]:
    """Every module of the tree by dotted name: ``libs/`` holds ``flowbus``; the rest is named from the root."""
    found: dict[str, Path] = {}
    for base, top in ((root / "libs", "flowbus"), (root, SERVICES), (root, "tests")):
        for path in sorted((base / top).rglob("*.py")):
            parts = list(path.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def imports_of(modules: dict[str, Path]) -> list[Import]:
    found: list[Import] = []
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for stmt, module_level in _walk(tree.body, module_level=True):
            for target in _targets(stmt, package):
                # `from pkg import name` imports the module pkg.name when there is one, else pkg.
                imported = target if target in modules or "." not in target else target.rpartition(".")[0]
                found.append(Import(name, imported, "module level" if module_level else "in a function", stmt.lineno))
        # A module named in a string ("flowbus_services.state.main") is imported by name somewhere.
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and _names_a_module(node.value, modules):
                found.append(Import(name, node.value, "by name", node.lineno))
    return found


def _names_a_module(text: str, modules: dict[str, Path]) -> bool:
    return ("." in text and text in modules) or _in(text, SERVICES)


def _walk(body: list[ast.stmt], module_level: bool) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement, and whether it runs when the module is imported."""
    for stmt in body:
        if isinstance(stmt, ast.If) and _is_type_checking(stmt.test):
            yield from _walk(stmt.body, module_level=False)
            yield from _walk(stmt.orelse, module_level)
            continue
        if isinstance(stmt, ast.Import | ast.ImportFrom):
            yield stmt, module_level
            continue
        inner = module_level and not isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        for block in _blocks(stmt):
            yield from _walk(block, inner)


def _blocks(stmt: ast.stmt) -> Iterator[list[ast.stmt]]:
    for field in ("body", "orelse", "finalbody"):
        children = getattr(stmt, field, None)
        if isinstance(children, list) and children and isinstance(children[0], ast.stmt):
            yield children
    for handler in getattr(stmt, "handlers", []):
        yield handler.body
    for case in getattr(stmt, "cases", []):
        yield case.body


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _targets(stmt: ast.Import | ast.ImportFrom, package: str) -> list[str]:
    if isinstance(stmt, ast.Import):
        return [alias.name for alias in stmt.names]
    base = stmt.module or ""
    if stmt.level:
        anchor = package.split(".")[: len(package.split(".")) - (stmt.level - 1)]
        base = ".".join([*anchor, base] if base else anchor)
    return [f"{base}.{alias.name}" for alias in stmt.names]


def _in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


# ---- the rules -------------------------------------------------------------------


def service_of(module: str, services: set[str]) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == SERVICES and parts[1] in services else None


def cross_service_imports(imports: list[Import], services: set[str]) -> list[Import]:
    """A service module importing any other part of flowbus_services than its own service."""
    bad = []
    for imp in imports:
        own = service_of(imp.importer, services)
        if own is not None and _in(imp.imported, SERVICES) and not _in(imp.imported, f"{SERVICES}.{own}"):
            bad.append(imp)
    return bad


def libs_importing_services(imports: list[Import]) -> list[Import]:
    return [imp for imp in imports if _in(imp.importer, "flowbus") and _in(imp.imported, SERVICES)]


def sdk_importing_agent_or_client(imports: list[Import]) -> list[Import]:
    return [
        imp
        for imp in imports
        if imp.module_level
        and _in(imp.importer, "flowbus.sdk")
        and (_in(imp.imported, "flowbus.agent") or _in(imp.imported, "flowbus.client"))
    ]


def module_level_cycles(imports: list[Import], modules: set[str]) -> list[list[str]]:
    """Strongly connected groups of modules that import each other at module level."""
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for imp in imports:
        if imp.module_level and imp.imported in modules:
            graph[imp.importer].add(imp.imported)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1 or node in graph[node]:
                cycles.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def services_in(root: Path) -> set[str]:
    return {p.parent.name for p in (root / SERVICES).glob("*/__init__.py")}


# ---- the repository --------------------------------------------------------------


@pytest.fixture(scope="module")
def repo() -> tuple[dict[str, Path], list[Import]]:
    modules = modules_of(ROOT)
    return modules, imports_of(modules)


def test_the_checks_see_the_whole_repository(repo: tuple[dict[str, Path], list[Import]]) -> None:
    modules, imports = repo
    assert {"flowbus.client", "flowbus.sdk.flow", f"{SERVICES}.state.main", "tests.helpers.waiting"} <= set(modules)
    assert services_in(ROOT) == {"registration", "run_creation", "state", "heartbeat", "scheduler", "gateway"}
    # The registry names the services' entry modules; it imports them when it builds one.
    assert {i.imported for i in imports if i.importer == f"{SERVICES}.registry" and i.how == "by name"} == {
        f"{SERVICES}.{name}.main" for name in services_in(ROOT)
    }


def test_no_service_imports_another_service(repo: tuple[dict[str, Path], list[Import]]) -> None:
    assert [str(i) for i in cross_service_imports(repo[1], services_in(ROOT))] == []


def test_the_shared_library_never_imports_the_services(repo: tuple[dict[str, Path], list[Import]]) -> None:
    assert [str(i) for i in libs_importing_services(repo[1])] == []


def test_the_sdk_imports_neither_agent_nor_client_at_module_level(repo: tuple[dict[str, Path], list[Import]]) -> None:
    assert [str(i) for i in sdk_importing_agent_or_client(repo[1])] == []


def test_no_import_cycle_at_module_level(repo: tuple[dict[str, Path], list[Import]]) -> None:
    modules, imports = repo
    assert module_level_cycles(imports, set(modules)) == []


# ---- the rules catch what they are for --------------------------------------------

BROKEN = {
    "libs/flowbus/__init__.py": "from flowbus.sdk import flow\n",
    "libs/flowbus/sdk/__init__.py": "",
    "libs/flowbus/sdk/flow.py": "from flowbus import __version__\nfrom flowbus.client import Client\n",
    "libs/flowbus/sdk/engine.py": "def run():\n    from flowbus.agent import local\n",
    "libs/flowbus/client.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from flowbus.sdk import flow\n",
    "libs/flowbus/agent/__init__.py": "",
    "libs/flowbus/agent/local.py": "",
    "libs/flowbus/registry.py": "import importlib\ndef build():\n    importlib.import_module('flowbus_services.state')",
    "libs/flowbus/up.py": "MAINS = {'state': 'flowbus_services.state.main'}\n",
    f"{SERVICES}/__init__.py": "",
    f"{SERVICES}/up.py": "from flowbus_services.state import main\n",
    f"{SERVICES}/state/__init__.py": "",
    f"{SERVICES}/state/main.py": "from flowbus_services.state import handlers\n",
    f"{SERVICES}/state/handlers.py": "from flowbus_services.registration.handlers import register\n",
    f"{SERVICES}/registration/__init__.py": "",
    f"{SERVICES}/registration/handlers.py": "from ..registry import SERVICE_MODULES\n",
    f"{SERVICES}/registry.py": "",
    "tests/__init__.py": "",
}


@pytest.fixture
def broken(tmp_path: Path) -> tuple[dict[str, Path], list[Import]]:
    for rel, text in BROKEN.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    modules = modules_of(tmp_path)
    return modules, imports_of(modules)


def test_a_service_importing_another_or_the_root_is_caught(broken: tuple[dict[str, Path], list[Import]]) -> None:
    found = sorted(str(i) for i in cross_service_imports(broken[1], {"state", "registration"}))
    assert found == [
        f"{SERVICES}.registration.handlers:1 imports {SERVICES}.registry",
        f"{SERVICES}.state.handlers:1 imports {SERVICES}.registration.handlers",
    ]


def test_the_library_loading_a_service_by_name_is_caught(broken: tuple[dict[str, Path], list[Import]]) -> None:
    found = sorted(str(i) for i in libs_importing_services(broken[1]))
    assert found == [
        f"flowbus.registry:3 imports {SERVICES}.state (by name)",
        f"flowbus.up:1 imports {SERVICES}.state.main (by name)",
    ]


def test_the_sdk_importing_the_client_at_module_level_is_caught(broken: tuple[dict[str, Path], list[Import]]) -> None:
    # engine.py's function-local import of the agent is allowed.
    assert [str(i) for i in sdk_importing_agent_or_client(broken[1])] == ["flowbus.sdk.flow:2 imports flowbus.client"]


def test_a_cycle_at_module_level_is_caught(broken: tuple[dict[str, Path], list[Import]]) -> None:
    modules, imports = broken
    # flowbus -> flowbus.sdk.flow -> flowbus (the version import); client's TYPE_CHECKING import is no edge.
    assert module_level_cycles(imports, set(modules)) == [["flowbus", "flowbus.sdk.flow"]]
