"""Service handlers in memory with faststream's TestNatsBroker (no server)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from faststream.nats import TestNatsBroker

from flowbus import subjects
from flowbus.db.migrate import upgrade_async
from flowbus.settings import NatsTuning, Settings
from services.registration.main import build_app as registration_app


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[TestNatsBroker]:
    settings = Settings(
        home=tmp_path,
        nats_url="nats://127.0.0.1:1",
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'unit.db'}",
        nats=NatsTuning(max_command_bytes=1024),
    )
    app = registration_app(settings)
    await upgrade_async(settings.resolved_database_url())
    async with TestNatsBroker(app.broker) as test_broker:
        yield test_broker
    await app.flowbus_context.db.dispose()  # type: ignore[attr-defined]


async def _ask(broker: TestNatsBroker, subject: str, body: object) -> dict:
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = await broker.request(payload, subject)
    return json.loads(await response.decode() if not isinstance(response.body, bytes) else response.body)


async def test_create_project_replies_with_an_envelope(broker: TestNatsBroker) -> None:
    reply = await _ask(broker, subjects.RegistrationCommands.CREATE_PROJECT, {"name": "unit"})
    assert reply["ok"] is True
    assert reply["data"]["name"] == "unit"
    again = await _ask(broker, subjects.RegistrationCommands.CREATE_PROJECT, {"name": "unit"})
    assert again["error"]["code"] == "CONFLICT"


@pytest.mark.parametrize("body", [b"{broken", b"[]", {"name": 1}, {"name": "x", "bogus": True}])
async def test_malformed_commands_get_validation_error(broker: TestNatsBroker, body: object) -> None:
    reply = await _ask(broker, subjects.RegistrationCommands.CREATE_PROJECT, body)
    assert reply["ok"] is False
    assert reply["error"]["code"] == "VALIDATION_ERROR"


async def test_oversize_command_is_refused(broker: TestNatsBroker) -> None:
    reply = await _ask(broker, subjects.RegistrationCommands.CREATE_PROJECT, {"name": "x", "description": "y" * 2000})
    assert reply["error"]["code"] == "VALIDATION_ERROR"
    assert "1024" in reply["error"]["message"]


async def test_unknown_flow_is_not_found(broker: TestNatsBroker) -> None:
    reply = await _ask(broker, subjects.RegistrationCommands.GET_FLOW, {"flow_id": "missing"})
    assert reply["error"] == {"code": "NOT_FOUND", "message": "Flow missing not found", "details": None}
