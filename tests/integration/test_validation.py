"""Every command subject answers bad input with VALIDATION_ERROR and keeps serving."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from nats.aio.client import Client

from flowbus import subjects
from flowbus.client import AsyncClient
from flowbus.schemas.common import MAX_JSON_DEPTH
from flowbus.settings import Settings
from tests.helpers.commands import send

BAD_BODIES = [
    pytest.param(b"this is not json", id="malformed-json"),
    pytest.param(b"[1, 2, 3]", id="not-an-object"),
    pytest.param(json.dumps({"no_such_field": 1}).encode(), id="unknown-field"),
    pytest.param(b"\xff\xfe\x00", id="not-utf8"),
    # Issue 16 (F12): json.loads raised RecursionError, answered INTERNAL with a traceback logged.
    pytest.param(b'{"a":' * 1000 + b"1" + b"}" * 1000, id="nested-1000-objects"),
    pytest.param(b"[" * 1000 + b"]" * 1000, id="nested-1000-arrays"),
]


@pytest.mark.parametrize("body", BAD_BODIES)
async def test_every_command_subject_refuses_bad_input(
    stack: Settings, nc: Client, body: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    for subject in subjects.COMMAND_SUBJECTS:
        reply = await send(nc, subject, body)
        assert reply["ok"] is False, subject
        assert reply["error"]["code"] == "VALIDATION_ERROR", (subject, reply)
        assert reply["error"]["message"], subject
    # Refusals, not bugs: no service logged an error for them.
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    # Still serving afterwards.
    async with AsyncClient(stack) as client:
        assert isinstance(await client.get_projects(), list)


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("subject", "command"),
    [
        # The fast lane (pydantic-core parses the bytes) ...
        pytest.param(
            subjects.RunCreationCommands.CREATE_FLOW_RUN, lambda v: {"flow_id": "f", "parameters": {"p": v}}, id="fast"
        ),
        pytest.param(
            subjects.StateCommands.SET_FLOW_RUN_STATE,
            lambda v: {"flow_run_id": "r", "version": 1, "state": {"type": "Success", "result": {"r": v}}},
            id="fast-result",
        ),
        # ... and faststream (json.loads, then pydantic) refuse the same depth.
        pytest.param(
            subjects.RegistrationCommands.SET_FLOW_GROUP_DEFAULT_PARAMETERS,
            lambda v: {"flow_group_id": "g", "parameters": {"p": v}},
            id="faststream",
        ),
    ],
)
async def test_json_fields_deeper_than_the_cap_are_refused(
    stack: Settings, nc: Client, subject: str, command: Any
) -> None:
    for depth in (MAX_JSON_DEPTH, 100):
        reply = await send(nc, subject, command(_nested(depth)))
        assert reply["error"]["code"] == "VALIDATION_ERROR", (depth, reply)
        assert f"deeper than {MAX_JSON_DEPTH} levels" in reply["error"]["message"]


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
