"""Run creation through the run_creation service (services/run_creation/usecases.py):
a new run's state, version, parameters and labels, idempotency keys, and
the commands it refuses."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from nats.aio.client import Client

from flowbus import subjects
from flowbus.client import AsyncClient
from flowbus.schemas.common import Archived, ErrorCode, NotFound, ValidationFailed
from flowbus.schemas.flows import ParameterSpec
from flowbus.schemas.runs import CreateFlowRun
from flowbus.settings import Settings
from flowbus.states import StateType
from tests.helpers import register, unique
from tests.helpers.commands import send


async def test_new_run_is_scheduled_at_version_one(client: AsyncClient) -> None:
    flow = await register(client, unique("p"), "f", tasks=["a", "b"])
    run = await client.create_flow_run_out(flow.id)
    assert run.state.type is StateType.SCHEDULED
    assert run.state.message == "Flow run scheduled."
    assert run.version == 1
    assert "-" in run.name
    detail = await client.get_flow_run(run.id)
    assert sorted(t.task_slug for t in detail.task_runs) == ["a-1", "b-1"]
    assert all(t.state.type is StateType.PENDING for t in detail.task_runs)


async def test_creation_errors(client: AsyncClient) -> None:
    project = unique("p")
    params = [ParameterSpec(name="x", required=True), ParameterSpec(name="y", default=2)]
    flow = await register(client, project, "f", parameters=params)
    with pytest.raises(NotFound, match="Flow nope not found"):
        await client.create_flow_run("nope")
    with pytest.raises(ValidationFailed, match="Required parameters were not supplied"):
        await client.create_flow_run(flow.id)
    with pytest.raises(ValidationFailed, match="Unknown parameters"):
        await client.create_flow_run(flow.id, parameters={"x": 1, "z": 3})
    run = await client.create_flow_run_out(flow.id, parameters={"x": 1})
    assert run.parameters == {"x": 1, "y": 2}
    newer = await register(client, project, "f", parameters=params)
    with pytest.raises(Archived, match=f"Flow {flow.id} is archived."):
        await client.create_flow_run(flow.id)
    by_group = await client.create_flow_run_out(version_group_id=newer.flow_group_id, parameters={"x": 5})
    assert by_group.flow_id == newer.id
    by_name = await client.create_flow_run_out(flow_name="f", project_name=project, parameters={"x": 5})
    assert by_name.flow_id == newer.id


async def test_idempotency_key_returns_the_first_run(client: AsyncClient) -> None:
    flow = await register(client, unique("p"), "f")
    first_id = await client.create_flow_run(flow.id, idempotency_key="k1")
    again_id = await client.create_flow_run(flow.id, idempotency_key="k1")
    other_id = await client.create_flow_run(flow.id, idempotency_key="k2")
    assert again_id == first_id
    assert other_id != first_id
    racing = await asyncio.gather(*(client.create_flow_run(flow.id, idempotency_key="k3") for _ in range(6)))
    assert len(set(racing)) == 1


async def test_labels_and_start_time(client: AsyncClient) -> None:
    flow = await register(client, unique("p"), "f", labels=["b", "a"])
    run = await client.create_flow_run_out(flow.id)
    assert run.labels == ["a", "b"]
    later = datetime.now(UTC) + timedelta(hours=1)
    explicit = await client.create_flow_run_out(flow.id, labels=["x"], scheduled_start_time=later)
    assert explicit.labels == ["x"]
    assert explicit.scheduled_start_time == later


async def test_oversize_and_malformed_creates_are_refused_and_create_nothing(
    stack: Settings, client: AsyncClient, nc: Client
) -> None:
    flow = await register(client, unique("p"), "big")
    limit = stack.nats.max_command_bytes
    oversize = CreateFlowRun(flow_id=flow.id, context={"blob": "x" * (limit + 10)}).model_dump_json().encode()
    bodies = [
        oversize,
        b'{"flow_id": "' + flow.id.encode() + b'", "parameters": [1, 2]}',
        b'{"flow_id": "' + flow.id.encode() + b'", "scheduled_start_time": "2030-01-01T10:00:00"}',
        b'{"flow_id": ',
    ]
    for body in bodies:
        reply = await send(nc, subjects.RunCreationCommands.CREATE_FLOW_RUN, body)
        assert reply["ok"] is False
        assert reply["error"]["code"] == ErrorCode.VALIDATION_ERROR, body[:80]
    assert str(limit) in (await send(nc, subjects.RunCreationCommands.CREATE_FLOW_RUN, oversize))["error"]["message"]
    assert await client.get_flow_runs(flow_id=flow.id) == []
    assert (await client.create_flow_run_out(flow.id)).version == 1  # and the service still serves
