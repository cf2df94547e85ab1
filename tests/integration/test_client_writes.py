"""The client calls the gateway's mutations rest on: projects by id, a run's run
config, shipping logs and heartbeats, registering an agent, a flow's tasks and
edges added after it, and the task runs of mapped children made on demand; bad
values are refused as VALIDATION_ERROR before anything is sent."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from sqlalchemy import select

from flowbus.client import AsyncClient
from flowbus.db.engine import Database
from flowbus.db.tables import RunHeartbeat, Task
from flowbus.schemas.common import MAX_TASKS, NotFound, ValidationFailed
from flowbus.schemas.flows import EdgeSpec, RunConfigSpec, TaskSpec
from flowbus.schemas.runs import LogRecord
from flowbus.settings import Settings
from flowbus.states import StateType
from tests.helpers import register, unique
from tests.helpers.waiting import eventually


async def test_projects_by_id(client: AsyncClient) -> None:
    project = await client.create_project(unique("p"))
    assert (await client.get_project(project_id=project.id)).name == project.name
    new_name = unique("q")
    await client.rename_project(None, new_name, project_id=project.id)
    await client.set_project_description(None, "by id", project_id=project.id)
    assert (await client.get_project(new_name)).description == "by id"
    with pytest.raises(ValidationFailed):
        await client.get_project(new_name, project_id=project.id)  # both
    with pytest.raises(ValidationFailed):
        await client.create_project("   ")
    await client.delete_project(None, project_id=project.id)
    with pytest.raises(NotFound):
        await client.get_project(project_id=project.id)


async def test_run_config_labels_of_one_run(client: AsyncClient) -> None:
    flow = await register(client, unique("p"), unique("f"), labels=["flow-label"])
    run = await client.create_flow_run_out(flow.id, run_config=RunConfigSpec(labels=["gpu"]))
    assert run.labels == ["gpu"]
    assert (await client.create_flow_run_out(flow.id)).labels == ["flow-label"]


async def test_write_logs_ships_batches_per_run(client: AsyncClient) -> None:
    flow = await register(client, unique("p"), unique("f"))
    first, second = await client.create_flow_run_out(flow.id), await client.create_flow_run_out(flow.id)
    now = datetime.now(UTC)
    records = [
        LogRecord(flow_run_id=run.id, timestamp=now, name="t", level="INFO", message=f"{run.id}-{i}")
        for run in (first, second)
        for i in range(1500)  # more than one batch each
    ]
    assert await client.write_logs(records) == 3000
    for run in (first, second):
        stored = await client.get_flow_run_logs(run.id, limit=10_000)
        assert sorted(r.message for r in stored) == sorted(f"{run.id}-{i}" for i in range(1500))
    bad = LogRecord(flow_run_id="a.b", timestamp=now, name="t", level="INFO", message="m")
    with pytest.raises(ValidationFailed):
        await client.write_logs([bad])


async def test_heartbeat_and_agent_registration(client: AsyncClient, stack: Settings) -> None:
    flow = await register(client, unique("p"), unique("f"))
    run_id = await client.create_flow_run(flow.id)
    await client.send_flow_run_heartbeat(run_id)
    db = Database(stack.resolved_database_url())
    try:

        async def beats() -> list[str]:
            async with db.read_session() as session:
                return list((await session.execute(select(RunHeartbeat.flow_run_id))).scalars())  # type: ignore[call-overload]

        assert await eventually(beats, "the heartbeat recorded") == [run_id]
    finally:
        await db.dispose()
    with pytest.raises(ValidationFailed):
        await client.send_flow_run_heartbeat("a.b")

    agent = await client.register_agent("laptop", agent_type="docker", labels=["x"])
    again = await client.register_agent("laptop-2", agent_id=agent.id)
    assert again.id == agent.id
    listed = {a.id: (a.name, a.type, a.labels) for a in (await client.get_agents()).agents}
    assert listed == {agent.id: ("laptop-2", "local", [])}
    with pytest.raises(ValidationFailed):
        await client.register_agent("")


async def test_add_flow_tasks_adds_what_the_flow_lacks(client: AsyncClient) -> None:
    flow = await register(client, unique("p"), unique("f"), tasks=["a"])
    tasks = [TaskSpec(slug="a-1", name="renamed"), TaskSpec(slug="b-1", name="b", max_retries=2, tags=["etl"])]
    edges = [EdgeSpec(upstream="a-1", downstream="b-1", key="x")]
    added = await client.add_flow_tasks(flow.id, tasks=tasks, edges=edges)
    # A known slug is left as it is (its name too); a resend changes nothing.
    assert [(t.slug, t.name, t.max_retries, t.tags) for t in added.tasks] == [
        ("a-1", "a", 0, []),
        ("b-1", "b", 2, ["etl"]),
    ]
    assert added.edges == edges
    again = await client.add_flow_tasks(flow.id, tasks=tasks, edges=edges)
    assert (again.tasks, again.edges) == (added.tasks, added.edges)
    assert (await client.get_flow(flow.id)).tasks == added.tasks
    # Runs made from now on have a task run per task.
    run = await client.create_flow_run_out(flow.id)
    assert sorted(t.task_slug for t in (await client.get_flow_run(run.id)).task_runs) == ["a-1", "b-1"]

    with pytest.raises(ValidationFailed, match="does not have"):
        await client.add_flow_tasks(flow.id, edges=[EdgeSpec(upstream="b-1", downstream="c-1")])
    with pytest.raises(NotFound):
        await client.add_flow_tasks(unique("no-such-flow"), tasks=tasks)
    with pytest.raises(ValidationFailed):
        await client.add_flow_tasks(flow.id, tasks=[TaskSpec(slug=f"t{i}", name="t") for i in range(MAX_TASKS + 1)])
    unchanged = await client.get_flow(flow.id)
    assert (len(unchanged.tasks), unchanged.edges) == (2, edges)


async def test_add_flow_tasks_from_writers_at_once(client: AsyncClient) -> None:
    """Batches sent at the same time (two registrations of one flow): every task and edge lands once."""
    flow = await register(client, unique("p"), unique("f"), tasks=["root"])
    batches = [
        ([TaskSpec(slug=f"t{i}-1", name=f"t{i}")], [EdgeSpec(upstream="root-1", downstream=f"t{i}-1")])
        for i in range(8)
    ]
    await asyncio.gather(*(client.add_flow_tasks(flow.id, tasks=t, edges=e) for t, e in batches + batches))
    stored = await client.get_flow(flow.id)
    assert sorted(t.slug for t in stored.tasks) == sorted(["root-1", *(f"t{i}-1" for i in range(8))])
    assert sorted(e.downstream for e in stored.edges) == sorted(f"t{i}-1" for i in range(8))
    run = await client.create_flow_run_out(flow.id)
    assert len((await client.get_flow_run(run.id)).task_runs) == 9


async def task_ids(stack: Settings, flow_id: str) -> dict[str, str]:
    """A flow version's task ids by slug (the ids Prefect's runner names tasks by)."""
    db = Database(stack.resolved_database_url())
    try:
        async with db.read_session() as session:
            rows = (await session.execute(select(Task.slug, Task.id).where(Task.flow_id == flow_id))).all()  # type: ignore[call-overload]
    finally:
        await db.dispose()
    return {row.slug: row.id for row in rows}


async def test_ensure_task_run_makes_a_mapped_child_once(client: AsyncClient, stack: Settings) -> None:
    flow = await register(client, unique("p"), unique("f"), tasks=["map"])
    other = await register(client, unique("p"), unique("f"), tasks=["map"])
    run = await client.create_flow_run_out(flow.id)
    [pre_created] = (await client.get_flow_run(run.id)).task_runs
    task_id = (await task_ids(stack, flow.id))["map-1"]

    own = await client.ensure_task_run(run.id, task_id)
    assert (own.task_run.id, own.serialized_state) == (pre_created.id, None)
    child = await client.ensure_task_run(run.id, task_id, 0)
    assert child.task_run.id != pre_created.id
    assert (child.task_run.task_slug, child.task_run.map_index, child.task_run.version) == ("map-1", 0, 1)
    assert (child.task_run.state.type, child.task_run.state.message) == (StateType.PENDING, "Task run created")
    assert (await client.ensure_task_run(run.id, task_id, 0)).task_run == child.task_run
    # Asked for by several runners at once: one task run.
    made = await asyncio.gather(*(client.ensure_task_run(run.id, task_id, 1) for _ in range(6)))
    assert len({m.task_run.id for m in made}) == 1
    listed = (await client.get_flow_run(run.id)).task_runs
    assert sorted(t.map_index for t in listed) == [-1, 0, 1]

    # Its states are set as any task run's.
    await client.set_flow_run_state(run.id, 1, StateType.SUBMITTED)
    await client.set_flow_run_state(run.id, 2, StateType.RUNNING)
    await client.set_task_run_state(child.task_run.id, 1, StateType.RUNNING)
    assert (await client.ensure_task_run(run.id, task_id, 0)).task_run.state.type is StateType.RUNNING

    with pytest.raises(ValidationFailed, match="Invalid task ID"):
        await client.ensure_task_run(run.id, (await task_ids(stack, other.id))["map-1"], 0)
    with pytest.raises(ValidationFailed, match="Invalid task ID"):
        await client.ensure_task_run(run.id, unique("no-such-task"), 0)
    with pytest.raises(NotFound):
        await client.ensure_task_run(unique("no-such-run"), task_id, 0)
    with pytest.raises(ValidationFailed):
        await client.ensure_task_run(run.id, task_id, -2)
    assert len((await client.get_flow_run(run.id)).task_runs) == 3
