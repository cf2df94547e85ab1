"""Fixtures of the Prefect 1.4.1 compatibility tier: one `flowbus up` per test
module, a Prefect 1.x user's shell pointed at its gateway, and, for modules
that run flows, one `prefect agent local start` shared by their tests.

A module changes the settings of its `flowbus up` or of its Prefect commands
by overriding ``flowbus_settings`` or ``prefect_settings``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.prefect1 import PREFECT1_BIN, Agent, Flowbus, PrefectUser, prefect_env, start_flowbus


@pytest.fixture(scope="session")
def prefect1_env() -> Path:
    """The pinned prefect 1.4.1 environment; the tier fails (it does not skip) without it."""
    if not (PREFECT1_BIN / "prefect").exists():
        pytest.fail(
            f"The Prefect 1.4.1 environment is missing ({PREFECT1_BIN / 'prefect'} does not exist). "
            "Run `make compat` (or `make compat-env`) to build it from tests/compat/prefect1-requirements.txt.",
            pytrace=False,
        )
    return PREFECT1_BIN.parent


@pytest.fixture(scope="module")
def flowbus_settings() -> dict[str, str]:
    """``FLOWBUS_*`` variables for the module's `flowbus up` (none by default)."""
    return {}


@pytest.fixture(scope="module")
def prefect_settings() -> dict[str, str]:
    """``PREFECT__*`` variables a module adds to every Prefect command (none by default)."""
    return {}


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The module's folders: flowbus's home, the Prefect user's home and work folder, the logs."""
    root = tmp_path_factory.mktemp("compat")
    paths = {name: root / name for name in ("flowbus-home", "user-home", "work", "logs")}
    for name in ("user-home", "work", "logs"):
        paths[name].mkdir()
    return paths


@pytest.fixture(scope="module")
def flowbus(
    prefect1_env: Path, folders: dict[str, Path], flowbus_settings: dict[str, str], bus_credentials: Path
) -> Iterator[Flowbus]:
    """`flowbus up` in a fresh home, serving the module's tests."""
    server = start_flowbus(folders["flowbus-home"], folders["work"], folders["logs"], flowbus_settings)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def user(flowbus: Flowbus, folders: dict[str, Path], prefect_settings: dict[str, str]) -> Iterator[PrefectUser]:
    """A Prefect 1.x user's shell, switched to the module's flowbus by the three settings."""
    env = prefect_env(folders["user-home"], flowbus.graphql_url, flowbus.api_key, prefect_settings)
    shell = PrefectUser(folders["work"], folders["logs"], env)
    try:
        yield shell
    finally:
        shell.stop_all()


@pytest.fixture(scope="module")
def agent(user: PrefectUser) -> Iterator[Agent]:
    """`prefect agent local start --label compat`, polling until the module ends."""
    started = Agent(user, ["compat"])
    try:
        started.wait_ready()
        yield started
    finally:
        started.stop()
