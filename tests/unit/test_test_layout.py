"""The tests' own layout: no module under tests/ imports a test module or a conftest.

What tests share lives in tests/helpers/ and fixtures in conftest.py files,
so that a helper has one obvious home and importing it never drags in
another module's tests. Checked on the syntax tree: import statements,
relative ones included, and module names inside strings (the code a test
hands to ``python -c`` or ``-m``, ``pytest_plugins``).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"

_IMPORT_IN_TEXT = re.compile(r"\b(?:from|import)\s+(tests(?:\.\w+)+)")
_MODULE_NAME = re.compile(r"tests(?:\.\w+)+")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _absolute(node: ast.ImportFrom, module: str) -> str:
    """The module an ``ImportFrom`` names, relative imports resolved against ``module``."""
    if not node.level:
        return node.module or ""
    package = module.split(".")[: -node.level]
    return ".".join([*package, *([node.module] if node.module else [])])


def imported_modules(source: str, module: str) -> set[str]:
    """Every module ``source`` (the module ``module``) may import, by import statement or in a string."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, module)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import test_x`
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            found.update(_IMPORT_IN_TEXT.findall(node.value))
            if _MODULE_NAME.fullmatch(node.value):
                found.add(node.value)
    return found


def is_test_module(name: str) -> bool:
    parts = name.split(".")
    return parts[0] == "tests" and (parts[-1].startswith("test_") or parts[-1] == "conftest")


def imported_test_modules(path: Path) -> list[str]:
    module = module_name(path)
    imported = imported_modules(path.read_text(), module)
    return sorted(name for name in imported if is_test_module(name) and name != module)


def test_no_module_under_tests_imports_a_test_module_or_a_conftest() -> None:
    checked = [path for path in sorted(TESTS.rglob("*.py")) if path != Path(__file__).resolve()]  # not its examples
    offenders = {module_name(path): names for path in checked if (names := imported_test_modules(path))}
    assert not offenders, f"move what these share into tests/helpers/ or a conftest.py fixture: {offenders}"


TEST_MODULE_IMPORTS = [
    "from tests.e2e.test_tutorial import run",
    "import tests.integration.test_agent",
    "from tests.integration import test_agent",
    "from .test_agent import watch",
    "from . import test_agent",
    "from tests.conftest import unique",
    "code = 'import asyncio; from tests.integration.test_write_lock import increment'",
    "pytest_plugins = ['tests.integration.test_agent']",
]
HELPER_IMPORTS = [
    "from tests.helpers import unique",
    "from tests.helpers.processes import FLOWBUS",
    "import pytest",
    "command = ['python', '-m', 'tests.helpers.sqlite_counter']",
    "from flowbus.tasks import create_flow_run",
]


@pytest.mark.parametrize(
    ("source", "imports_a_test_module"),
    [(source, True) for source in TEST_MODULE_IMPORTS] + [(source, False) for source in HELPER_IMPORTS],
)
def test_the_check_sees_every_way_of_importing_a_test_module_and_lets_helpers_be(
    source: str, imports_a_test_module: bool
) -> None:
    imported = imported_modules(source, "tests.integration.test_example")
    assert any(is_test_module(name) for name in imported) is imports_a_test_module, imported
