"""Every command subject answers bad input with VALIDATION_ERROR and keeps serving."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client

from flowbus import subjects
from flowbus.client import AsyncClient
from flowbus.schemas.common import MAX_JSON_DEPTH
from flowbus.settings import Settings
from tests.helpers.commands import send
from tests.helpers.scripts import register_greeting_flow
from tests.helpers.waiting import eventually

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
    # Deeper than nats.max_json_depth (64) the whole payload is refused before this cap is looked at.
    for depth in (MAX_JSON_DEPTH, 50):
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


def _hostile_bodies(max_bytes: int) -> dict[str, bytes]:
    """What the fuzzing found answered INTERNAL, and its neighbours."""
    field = {"flow_id": "f", "parameters": {"p": "DEEP"}}
    return {
        "nested-10000-top-level": b"[" * 10_000 + b"]" * 10_000,
        "nested-1000-in-a-field": json.dumps(field).replace('"DEEP"', '{"a":' * 1000 + "1" + "}" * 1000).encode(),
        "nested-65-objects": b'{"a":' * 65 + b"1" + b"}" * 65,
        "2-MiB": json.dumps({"name": "x" * max(2 << 20, max_bytes + 1)}).encode(),
        "random-bytes": random.Random(16).randbytes(64 << 10),
    }


HOSTILE_SUBJECTS = [
    # faststream: registration, scheduler, heartbeat queries, state queries ...
    subjects.RegistrationCommands.CREATE_PROJECT,
    subjects.RegistrationCommands.REGISTER_FLOW,
    subjects.SchedulerCommands.STATUS,
    subjects.HeartbeatCommands.REGISTER_AGENT,
    subjects.HeartbeatCommands.LIST_AGENTS,
    subjects.StateCommands.GET_FLOW_RUN,
    subjects.StateCommands.LIST_FLOW_RUNS,
    # ... and the fast lane.
    subjects.RunCreationCommands.CREATE_FLOW_RUN,
    subjects.StateCommands.SET_FLOW_RUN_STATE,
    subjects.StateCommands.SET_TASK_RUN_STATE,
    subjects.StateCommands.CANCEL_FLOW_RUN,
]


async def test_hostile_payloads_are_validation_errors_on_every_kind_of_subject(
    stack: Settings, nc: Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    for name, body in _hostile_bodies(stack.nats.max_command_bytes).items():
        for subject in HOSTILE_SUBJECTS:
            reply = await send(nc, subject, body)
            assert reply["ok"] is False, (name, subject)
            assert reply["error"]["code"] == "VALIDATION_ERROR", (name, subject, reply)
            if name.startswith("nested"):
                assert "nested deeper than 64 levels" in reply["error"]["message"], (subject, reply)
    # Heartbeats answer nobody: a deep one is dropped with one line.
    deep = _hostile_bodies(stack.nats.max_command_bytes)["nested-10000-top-level"]
    await nc.publish(subjects.flow_run_heartbeat("r"), deep)
    await nc.publish(subjects.agent_heartbeat("a"), deep)

    def dropped() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.getMessage().startswith("dropping a message on flowbus.hb")]

    async def both_dropped() -> list[str]:
        return dropped()

    lines = await eventually(both_dropped, "both heartbeats dropped", until=lambda found: len(found) == 2)
    assert all("nested deeper than 64 levels" in line for line in lines)
    # Every service still answers.
    for subject in (
        subjects.RegistrationCommands.LIST_PROJECTS,
        subjects.HeartbeatCommands.LIST_AGENTS,
        subjects.StateCommands.LIST_FLOW_RUNS,
        subjects.SchedulerCommands.STATUS,
    ):
        reply = await send(nc, subject, {})
        assert reply["ok"] is True, (subject, reply)
    reply = await send(nc, subjects.RunCreationCommands.CREATE_FLOW_RUN, {"flow_id": "no-such-flow"})
    assert reply["error"]["code"] == "NOT_FOUND", reply
    # Refusals, not bugs: nothing logged a traceback or an error.
    assert "Traceback" not in caplog.text
    assert [r.getMessage() for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR] == []


# Integers past what a database column holds (SQLite and PostgreSQL: 64-bit
# signed), in every integer field of a command that reaches the database, on
# a run that exists (so the field is not refused for another reason first).
# The chaos suite's fuzz (tests/chaos/test_fuzz.py) found list_flow_runs and
# ensure_task_run answering INTERNAL (SQLite's OverflowError) for such values.
# A version too big is a version no run is at: VERSION_LOCKING_ERROR.
TOO_BIG: list[Any] = [2**31, 2**63, 2**64, -(2**63) - 1, 1e30]
WIDE_INTEGER_FIELDS = [
    pytest.param(subjects.StateCommands.LIST_FLOW_RUNS, {"offset": "N"}, id="list_flow_runs-offset"),
    pytest.param(subjects.RegistrationCommands.LIST_FLOWS, {"offset": "N"}, id="list_flows-offset"),
    pytest.param(subjects.RegistrationCommands.LIST_PROJECTS, {"offset": "N"}, id="list_projects-offset"),
    pytest.param(subjects.HeartbeatCommands.LIST_AGENTS, {"offset": "N"}, id="list_agents-offset"),
    pytest.param(
        subjects.StateCommands.SET_FLOW_RUN_STATE,
        {"flow_run_id": "RUN", "version": "N", "state": {"type": "Running"}},
        id="set_flow_run_state-version",
    ),
    pytest.param(
        subjects.StateCommands.SET_TASK_RUN_STATE,
        {"task_run_id": "TASK_RUN", "version": "N", "state": {"type": "Running"}},
        id="set_task_run_state-version",
    ),
    pytest.param(subjects.StateCommands.DELETE_FLOW_RUN, {"flow_run_id": "RUN", "version": "N"}, id="delete-version"),
    pytest.param(
        subjects.StateCommands.ENSURE_TASK_RUN,
        {"flow_run_id": "RUN", "task_id": "TASK", "map_index": "N"},
        id="ensure_task_run-map_index",
    ),
    pytest.param(
        subjects.RegistrationCommands.ADD_FLOW_TASKS,
        {"flow_id": "FLOW", "tasks": [{"slug": "extra-1", "name": "extra", "max_retries": "N"}]},
        id="add_flow_tasks-max_retries",
    ),
]


async def _task_id(settings: Settings, flow_id: str) -> str:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(settings.resolved_database_url())
    try:
        async with engine.connect() as conn:
            query = text("SELECT id FROM task WHERE flow_id = :flow AND slug LIKE 'greet%'")
            return str((await conn.execute(query, {"flow": flow_id})).scalar_one())
    finally:
        await engine.dispose()


@pytest.mark.parametrize(("subject", "template"), WIDE_INTEGER_FIELDS)
async def test_integers_too_big_for_a_column_are_validation_errors(
    stack: Settings,
    nc: Client,
    subject: str,
    template: dict[str, Any],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    async with AsyncClient(stack) as client:
        flow_id = await register_greeting_flow(client, tmp_path)
        run_id = await client.create_flow_run(flow_id, labels=["nobody-takes-it"])
        task_run = (await client.get_flow_run(run_id)).task_runs[0]
        ids = {"RUN": run_id, "TASK_RUN": task_run.id, "FLOW": flow_id, "TASK": await _task_id(stack, flow_id)}
    for value in TOO_BIG:
        text = json.dumps(template).replace('"N"', json.dumps(value))
        for placeholder, real in ids.items():
            text = text.replace(f'"{placeholder}"', json.dumps(real))
        reply = await send(nc, subject, text.encode())
        assert reply["ok"] is False, (subject, value, reply)
        allowed = {"VALIDATION_ERROR", "VERSION_LOCKING_ERROR"} if '"version"' in text else {"VALIDATION_ERROR"}
        assert reply["error"]["code"] in allowed, (subject, value, reply)
    assert "Traceback" not in caplog.text
