"""Fixtures of the end-to-end tier: a user's home and work folders, and `flowbus up` serving them.

The processes themselves are started with tests/helpers/processes.py.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.processes import FLOWBUS, UP_READY, start, stop, wait_for_line


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """``FLOWBUS_HOME``: where `flowbus up` keeps its data and endpoint file."""
    return tmp_path / "flowbus-home"


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """The folder the user works in: flow scripts go here, commands run here."""
    path = tmp_path / "work"
    path.mkdir()
    return path


@pytest.fixture
def server(home: Path, workdir: Path) -> Iterator[subprocess.Popen[str]]:
    """`flowbus up` on ``home``, serving until the test ends."""
    proc = start([FLOWBUS, "up"], home, workdir)
    try:
        wait_for_line(proc, UP_READY)
        yield proc
    finally:
        stop(proc)
