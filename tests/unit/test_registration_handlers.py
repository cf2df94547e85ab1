"""The registration service's handlers in memory, with faststream's
TestNatsBroker (no server): replies, validation, oversize commands."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from faststream.nats import NatsBroker, TestNatsBroker

from flowbus import subjects
from flowbus.db.migrate import upgrade_async
from flowbus.runtime.service import service_context
from flowbus.settings import NatsTuning, Settings
from flowbus_services.registration.main import build_app as registration_app


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[NatsBroker]:
    settings = Settings(
        home=tmp_path,
        nats_url="nats://127.0.0.1:1",
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'unit.db'}",
        nats=NatsTuning(max_command_bytes=1024),
    )
    app = registration_app(settings)
    await upgrade_async(settings.resolved_database_url())
    assert isinstance(app.broker, NatsBroker)
    async with TestNatsBroker(app.broker) as test_broker:
        yield test_broker
    await service_context(app).db.dispose()


async def _ask(broker: NatsBroker, subject: str, body: object) -> dict[str, Any]:
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = await broker.request(payload, subject)
    reply: dict[str, Any] = json.loads(response.body)
    return reply


async def test_create_project_replies_with_an_envelope(broker: NatsBroker) -> None:
    reply = await _ask(broker, subjects.RegistrationCommands.CREATE_PROJECT, {"name": "unit"})
    assert reply["ok"] is True
    assert reply["data"]["name"] == "unit"
    again = await _ask(broker, subjects.RegistrationCommands.CREATE_PROJECT, {"name": "unit"})
    assert again["error"]["code"] == "CONFLICT"


@pytest.mark.parametrize("body", [b"{broken", b"[]", {"name": 1}, {"name": "x", "bogus": True}])
async def test_malformed_commands_get_validation_error(broker: NatsBroker, body: object) -> None:
    reply = await _ask(broker, subjects.RegistrationCommands.CREATE_PROJECT, body)
    assert reply["ok"] is False
    assert reply["error"]["code"] == "VALIDATION_ERROR"


async def test_oversize_command_is_refused(broker: NatsBroker) -> None:
    reply = await _ask(broker, subjects.RegistrationCommands.CREATE_PROJECT, {"name": "x", "description": "y" * 2000})
    assert reply["error"]["code"] == "VALIDATION_ERROR"
    assert "1024" in reply["error"]["message"]


async def test_unknown_flow_is_not_found(broker: NatsBroker) -> None:
    reply = await _ask(broker, subjects.RegistrationCommands.GET_FLOW, {"flow_id": "missing"})
    assert reply["error"] == {"code": "NOT_FOUND", "message": "Flow missing not found", "details": None}
