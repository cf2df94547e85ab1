"""The client calls the gateway's mutations rest on: projects by id, a run's run
config, shipping logs and heartbeats, and registering an agent; bad values are
refused as VALIDATION_ERROR before anything is sent."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import select

from flowbus.client import AsyncClient
from flowbus.db.engine import Database
from flowbus.db.tables import RunHeartbeat
from flowbus.schemas.common import NotFound, ValidationFailed
from flowbus.schemas.flows import RunConfigSpec
from flowbus.schemas.runs import LogRecord
from flowbus.settings import Settings
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
