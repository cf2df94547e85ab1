"""Input limits over the real stack (issue 16): a flow over the task cap is
refused while the service keeps answering, a log batch cannot write another
run's logs, and the list commands page."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import pytest
from nats.aio.client import Client

from flowbus import subjects
from flowbus.client import AsyncClient
from flowbus.schemas.common import LIST_LIMIT_MAX, MAX_TASKS, ValidationFailed
from flowbus.schemas.runs import LogBatch, LogRecord
from flowbus.settings import NatsTuning, Settings
from tests.helpers import register, unique
from tests.helpers.commands import send


@pytest.fixture
def settings(settings: Settings, database_url: str) -> Settings:
    # (database_url named again: pytest parametrizes an overriding fixture only by what it names.)
    # Room for a flow past the task cap: the cap, not the size limit, must refuse it.
    # Events may carry what two commands set: the EVENTS stream's message limit grows with it.
    nats = NatsTuning(max_command_bytes=3 * 1024 * 1024, events_max_msg_bytes=7 * 1024 * 1024, request_timeout=10.0)
    return settings.model_copy(update={"nats": nats})


def _register_flow(project: str, tasks: int) -> bytes:
    flow = {
        "name": "big",
        "storage": {"type": "module", "module": "m"},
        "tasks": [{"slug": f"task-{i:05d}", "name": f"Task {i}"} for i in range(tasks)],
    }
    return json.dumps({"project_name": project, "serialized_flow": flow}).encode()


async def test_a_flow_over_the_task_cap_is_refused_while_the_service_answers(client: AsyncClient, nc: Client) -> None:
    project = unique("p")
    await client.create_project(project)
    big = _register_flow(project, 30_000)
    assert len(big) < client.settings.nats.max_command_bytes
    refusals = [asyncio.create_task(send(nc, subjects.RegistrationCommands.REGISTER_FLOW, big)) for _ in range(4)]
    # The registration service answers other commands meanwhile.
    assert (await client.get_project(project)).name == project
    for reply in await asyncio.gather(*refusals):
        assert reply["error"]["code"] == "VALIDATION_ERROR"
        assert f"30000 tasks exceed the limit of {MAX_TASKS}" in reply["error"]["message"]
    assert await client.get_flows(project_name=project) == []
    at_cap = await send(nc, subjects.RegistrationCommands.REGISTER_FLOW, _register_flow(project, MAX_TASKS))
    assert at_cap["ok"] is True, at_cap
    assert len(at_cap["data"]["tasks"]) == MAX_TASKS


def _record(run_id: str, message: str) -> LogRecord:
    return LogRecord(flow_run_id=run_id, timestamp=datetime.now(UTC), name="n", level="INFO", message=message)


async def test_a_batch_cannot_write_another_runs_logs(client: AsyncClient, nc: Client) -> None:
    flow = await register(client, unique("p"), unique("f"))
    own, other = await client.create_flow_run(flow.id), await client.create_flow_run(flow.id)
    forged = LogBatch(records=[_record(own, "mine"), _record(other, "forged")])
    await nc.jetstream().publish(subjects.logs(own), forged.model_dump_json().encode())
    assert [r.message for r in await client.get_flow_run_logs(own)] == ["mine"]
    # The other run's own batch, shipped after the forged one, is stored alone.
    await client.write_logs([_record(other, "theirs")])
    assert [r.message for r in await client.get_flow_run_logs(other)] == ["theirs"]


async def test_list_commands_page(client: AsyncClient, nc: Client) -> None:
    project = unique("p")
    first, second = unique("a"), unique("b")
    await register(client, project, first)
    await register(client, project, first)  # version 2
    await register(client, project, second)
    newest = await client.get_flows(project_name=project)
    assert [(f.name, f.version) for f in newest] == [(first, 2), (second, 1)]
    assert await client.get_flows(project_name=project, limit=1) == newest[:1]
    assert await client.get_flows(project_name=project, limit=1, offset=1) == newest[1:]
    every = await client.get_flows(project_name=project, newest_only=False, limit=2)
    assert [(f.name, f.version) for f in every] == [(first, 2), (first, 1)]

    for name in (unique("p"), unique("p")):
        await client.create_project(name)
    projects = await client.get_projects()
    assert [p for i in range(len(projects)) for p in await client.get_projects(limit=1, offset=i)] == projects

    for name in ("a", "b", "c"):
        await client.register_agent(unique(name))
    agents = (await client.get_agents()).agents
    assert (await client.get_agents(limit=2, offset=1)).agents == agents[1:3]

    for subject in (
        subjects.RegistrationCommands.LIST_PROJECTS,
        subjects.RegistrationCommands.LIST_FLOWS,
        subjects.HeartbeatCommands.LIST_AGENTS,
    ):
        reply = await send(nc, subject, {"limit": LIST_LIMIT_MAX + 1})
        assert reply["error"]["code"] == "VALIDATION_ERROR", subject
        assert "limit" in reply["error"]["message"]
        assert (await send(nc, subject, {}))["ok"] is True, subject
    with pytest.raises(ValidationFailed):
        await client.get_projects(limit=LIST_LIMIT_MAX + 1)
