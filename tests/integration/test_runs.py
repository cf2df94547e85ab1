"""Run creation and state changes through the services."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from flowbus.client import AsyncClient
from flowbus.schemas.common import Archived, Conflict, NotFound, ValidationFailed, VersionLockingError
from flowbus.schemas.flows import ParameterSpec
from flowbus.states import StateType
from tests.helpers import register, unique
from tests.helpers.runs import watch_until_finished


async def test_new_run_is_scheduled_at_version_one(client: AsyncClient) -> None:
    flow = await register(client, unique("p"), "f", tasks=["a", "b"])
    run = await client.create_flow_run(flow.id)
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
    run = await client.create_flow_run(flow.id, parameters={"x": 1})
    assert run.parameters == {"x": 1, "y": 2}
    newer = await register(client, project, "f", parameters=params)
    with pytest.raises(Archived, match=f"Flow {flow.id} is archived."):
        await client.create_flow_run(flow.id)
    by_group = await client.create_flow_run(version_group_id=newer.flow_group_id, parameters={"x": 5})
    assert by_group.flow_id == newer.id
    by_name = await client.create_flow_run(flow_name="f", project_name=project, parameters={"x": 5})
    assert by_name.flow_id == newer.id


async def test_idempotency_key_returns_the_first_run(client: AsyncClient) -> None:
    flow = await register(client, unique("p"), "f")
    first = await client.create_flow_run(flow.id, idempotency_key="k1")
    again = await client.create_flow_run(flow.id, idempotency_key="k1")
    other = await client.create_flow_run(flow.id, idempotency_key="k2")
    assert again.id == first.id
    assert other.id != first.id
    racing = await asyncio.gather(*(client.create_flow_run(flow.id, idempotency_key="k3") for _ in range(6)))
    assert len({r.id for r in racing}) == 1


async def test_labels_and_start_time(client: AsyncClient) -> None:
    flow = await register(client, unique("p"), "f", labels=["b", "a"])
    run = await client.create_flow_run(flow.id)
    assert run.labels == ["a", "b"]
    later = datetime.now(UTC) + timedelta(hours=1)
    explicit = await client.create_flow_run(flow.id, labels=["x"], scheduled_start_time=later)
    assert explicit.labels == ["x"]
    assert explicit.scheduled_start_time == later


async def test_optimistic_locking_and_transition_rules(client: AsyncClient) -> None:
    flow = await register(client, unique("p"), "f")
    run = await client.create_flow_run(flow.id)
    with pytest.raises(VersionLockingError):
        await client.set_flow_run_state(run.id, 7, StateType.SUBMITTED)
    submitted = await client.set_flow_run_state(run.id, 1, StateType.SUBMITTED, agent_id="agent-1")
    assert submitted.version == 2
    running = await client.set_flow_run_state(run.id, 2, StateType.RUNNING)
    done = await client.set_flow_run_state(run.id, running.version, StateType.SUCCESS, "ok")
    with pytest.raises(Conflict, match="already finished"):
        await client.set_flow_run_state(run.id, done.version, StateType.RUNNING)
    detail = await client.get_flow_run(run.id)
    assert detail.run.agent_id == "agent-1"
    assert detail.run.start_time is not None
    assert detail.run.end_time is not None


async def test_exactly_one_claim_wins(client: AsyncClient) -> None:
    flow = await register(client, unique("p"), "f")
    run = await client.create_flow_run(flow.id)
    results = await asyncio.gather(
        *(client.set_flow_run_state(run.id, 1, StateType.SUBMITTED, agent_id=f"a{i}") for i in range(10)),
        return_exceptions=True,
    )
    winners = [r for r in results if not isinstance(r, BaseException)]
    assert len(winners) == 1
    assert all(isinstance(r, VersionLockingError | Conflict) for r in results if isinstance(r, BaseException))


async def test_task_run_cannot_run_before_its_flow_run(client: AsyncClient) -> None:
    flow = await register(client, unique("p"), "f")
    run = await client.create_flow_run(flow.id)
    task_run = (await client.get_flow_run(run.id)).task_runs[0]
    with pytest.raises(Conflict, match="cannot run"):
        await client.set_task_run_state(task_run.id, 1, StateType.RUNNING)


async def test_cancelling_a_flow_run_cancels_its_task_runs(client: AsyncClient) -> None:
    flow = await register(client, unique("p"), "f", tasks=["a", "b"])
    run = await client.create_flow_run(flow.id)
    await client.set_flow_run_state(run.id, 1, StateType.CANCELLED, "stop")
    detail = await client.get_flow_run(run.id)
    assert {t.state.type for t in detail.task_runs} == {StateType.CANCELLED}


async def test_state_events_arrive_in_order_after_commit(client: AsyncClient) -> None:
    flow = await register(client, unique("p"), "f")
    run = await client.create_flow_run(flow.id)
    v = (await client.set_flow_run_state(run.id, 1, StateType.SUBMITTED)).version
    v = (await client.set_flow_run_state(run.id, v, StateType.RUNNING)).version
    await client.set_flow_run_state(run.id, v, StateType.FAILED, "boom")
    seen = [(s.version, s.state.type) for s in (await watch_until_finished(client, run.id)).states]
    assert seen == [
        (1, StateType.SCHEDULED),
        (2, StateType.SUBMITTED),
        (3, StateType.RUNNING),
        (4, StateType.FAILED),
    ]
