"""Fixtures of the chaos tier: one `flowbus up` that every probe of the tier shares, each probe's own
agents and flows on it, and the combined JSON summary written when the session ends.

The stack is started once for the tier (a start costs seconds that the
tier's budget of a few minutes cannot spare per probe); each probe works
on a flow and a label of its own, so its figures count its own runs only.
A probe that kills the stack starts it again before it ends.

The summary goes to ``CHAOS_REPORT`` when set (`make chaos` prints it),
else to ``chaos-report.json`` in the session's temporary folder.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client
from sqlalchemy.ext.asyncio import AsyncEngine

from flowbus.bus_auth import BusRole
from flowbus.client import AsyncClient
from flowbus.runtime.nats import connect
from tests.helpers.chaos import REPORT, database_engine
from tests.helpers.chaos_stack import ChaosStack, Probe


@pytest.fixture(scope="package", autouse=True)
def _report_path(tmp_path_factory: pytest.TempPathFactory) -> None:
    REPORT.default_path = tmp_path_factory.getbasetemp() / "chaos-report.json"


@pytest.fixture(scope="package")
def chaos_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChaosStack]:
    stack = ChaosStack(tmp_path_factory.mktemp("chaos"))
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture
def probe(chaos_stack: ChaosStack, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Probe]:
    """The probe's folder, label and agents on the shared stack, which it leaves running."""
    if not chaos_stack.alive():  # an earlier probe failed with the stack down
        chaos_stack.start()
    name = request.node.name.removeprefix("test_").replace("[", "-").rstrip("]").replace("_", "-")
    probe = Probe(name, chaos_stack, tmp_path)
    try:
        yield probe
    finally:
        probe.stop_agents()
        if not chaos_stack.alive():
            chaos_stack.start()


@pytest.fixture
async def client(chaos_stack: ChaosStack) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(chaos_stack.settings()) as c:
        yield c


@pytest.fixture
async def service_nc(chaos_stack: ChaosStack) -> AsyncIterator[Client]:
    """A NATS connection with the stack's ``service`` credential: it may read
    the EVENTS stream and publish on every subject (the fuzz's)."""
    nc = await connect(chaos_stack.settings(), "chaos-probe", BusRole.SERVICE)
    try:
        yield nc
    finally:
        await nc.close()


@pytest.fixture
async def engine(chaos_stack: ChaosStack) -> AsyncIterator[AsyncEngine]:
    """The stack's database, read by the analysis (tests.helpers.chaos)."""
    engine = database_engine(chaos_stack.db_url)
    try:
        yield engine
    finally:
        await engine.dispose()


def pytest_sessionfinish(session: pytest.Session) -> None:
    if REPORT.probes:
        configured = os.environ.get("CHAOS_REPORT", "").strip()
        REPORT.write(Path(configured) if configured else REPORT.default_path)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not REPORT.probes:
        return
    combined = REPORT.combined()
    terminalreporter.section("chaos summary")
    for probe in combined["per_probe"]:
        shown = {k: v for k, v in probe.items() if k not in ("per_probe",) and not isinstance(v, list | dict)}
        terminalreporter.write_line(json.dumps(shown))
    terminalreporter.write_line(f"failing: {combined['failing'] or 'nothing'}")
