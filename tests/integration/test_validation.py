"""Every command subject answers bad input with VALIDATION_ERROR and keeps serving."""

from __future__ import annotations

import json

import pytest
from nats.aio.client import Client

from flowbus import subjects
from flowbus.client import AsyncClient
from flowbus.settings import Settings
from tests.helpers.commands import send

BAD_BODIES = [
    pytest.param(b"this is not json", id="malformed-json"),
    pytest.param(b"[1, 2, 3]", id="not-an-object"),
    pytest.param(json.dumps({"no_such_field": 1}).encode(), id="unknown-field"),
    pytest.param(b"\xff\xfe\x00", id="not-utf8"),
]


@pytest.mark.parametrize("body", BAD_BODIES)
async def test_every_command_subject_refuses_bad_input(stack: Settings, nc: Client, body: bytes) -> None:
    for subject in subjects.COMMAND_SUBJECTS:
        reply = await send(nc, subject, body)
        assert reply["ok"] is False, subject
        assert reply["error"]["code"] == "VALIDATION_ERROR", (subject, reply)
        assert reply["error"]["message"], subject
    # Still serving afterwards.
    async with AsyncClient(stack) as client:
        assert isinstance(await client.get_projects(), list)


async def test_wrong_types_name_the_field(stack: Settings, nc: Client) -> None:
    reply = await send(nc, subjects.RegistrationCommands.CREATE_PROJECT, json.dumps({"name": 5}).encode())
    assert reply["error"]["code"] == "VALIDATION_ERROR"
    assert "name" in reply["error"]["message"]


async def test_oversize_payload_is_refused_and_changes_nothing(stack: Settings, nc: Client) -> None:
    limit = stack.nats.max_command_bytes
    body = json.dumps({"name": "big", "description": "x" * (limit + 10)}).encode()
    reply = await send(nc, subjects.RegistrationCommands.CREATE_PROJECT, body)
    assert reply["error"]["code"] == "VALIDATION_ERROR"
    assert str(limit) in reply["error"]["message"]
    async with AsyncClient(stack) as client:
        assert "big" not in [p.name for p in await client.get_projects()]


async def test_empty_and_overlong_names(stack: Settings, nc: Client) -> None:
    for name in ["", "   ", "n" * 256]:
        reply = await send(nc, subjects.RegistrationCommands.CREATE_PROJECT, json.dumps({"name": name}).encode())
        assert reply["error"]["code"] == "VALIDATION_ERROR", name
        rename = {"project": {"name": "anything"}, "new_name": name}
        reply = await send(nc, subjects.RegistrationCommands.RENAME_PROJECT, json.dumps(rename).encode())
        assert reply["error"]["code"] == "VALIDATION_ERROR", name
