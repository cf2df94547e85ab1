"""The client against the real services: following a run (stored, then live,
nothing twice), the blocking twins that were once missing, and the 1.x
shapes of create_flow_run (the id) and get_flow_run_info (flat)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from flowbus import subjects
from flowbus.client import AsyncClient, Client, FlowRunInfo, FollowItem
from flowbus.schemas.runs import FlowRunOut, HistoryEntry, LogBatch, LogRecord, StateChanged
from flowbus.settings import Settings
from flowbus.states import Running, Scheduled, StateType, Submitted, Success
from tests.helpers import register, unique


def log(run_id: str, message: str, level: str = "INFO", at: datetime | None = None) -> LogRecord:
    return LogRecord(flow_run_id=run_id, timestamp=at or datetime.now(UTC), level=level, name="flow", message=message)


async def publish_logs(client: AsyncClient, records: list[LogRecord]) -> None:
    await client.nc.jetstream().publish(
        subjects.logs(records[0].flow_run_id), LogBatch(records=records).model_dump_json().encode()
    )


async def stored_logs(client: AsyncClient, run_id: str, count: int) -> None:
    async with asyncio.timeout(30):  # the log writer persists the batch
        while len(await client.get_flow_run_logs(run_id)) < count:
            await asyncio.sleep(0.05)


def describe(item: FollowItem) -> str:
    if isinstance(item, HistoryEntry):
        return f"stored {item.type.value}"
    if isinstance(item, StateChanged):
        return f"live {item.state.type.value}"
    if isinstance(item, LogRecord):
        return f"log {item.message}"
    return "deleted"


async def test_following_replays_what_is_stored_then_streams_the_rest_once(client: AsyncClient) -> None:
    flow = await register(client, unique("p"), "f")
    run_id = await client.create_flow_run(flow.id)
    await client.set_flow_run_state(run_id, 1, StateType.SUBMITTED)
    await client.set_flow_run_state(run_id, 2, StateType.RUNNING)
    await publish_logs(client, [log(run_id, "one", "DEBUG"), log(run_id, "two")])
    await stored_logs(client, run_id, 2)

    seen: list[str] = []
    replayed = asyncio.Event()

    async def follow() -> None:
        async for item in client.follow_flow_run(run_id, level="info"):
            seen.append(describe(item))
            if describe(item) == "log two":
                replayed.set()

    following = asyncio.create_task(follow())
    async with asyncio.timeout(30):
        await replayed.wait()
    await publish_logs(client, [log(run_id, "three", "DEBUG"), log(run_id, "four", "WARNING")])
    await client.set_flow_run_state(run_id, 3, StateType.SUCCESS)
    async with asyncio.timeout(30):
        await following
    assert seen[:4] == ["stored Scheduled", "stored Submitted", "stored Running", "log two"]
    # The two streams arrive independently; the log comes before the end all the same.
    assert sorted(seen[4:]) == ["live Success", "log four"]


async def test_following_a_finished_run_returns_what_is_stored(client: AsyncClient) -> None:
    flow = await register(client, unique("p"), "f")
    run_id = await client.create_flow_run(flow.id)
    await client.cancel_flow_run(run_id, "not needed")
    items = [describe(item) async for item in client.follow_flow_run(run_id)]
    assert items == ["stored Scheduled", "stored Cancelled"]


async def test_the_blocking_client_gets_a_project_and_explains_a_waiting_run(
    client: AsyncClient, stack: Settings
) -> None:
    project = unique("p")
    flow = await register(client, project, "f")
    run_id = await client.create_flow_run(flow.id, scheduled_start_time=datetime.now(UTC) - timedelta(seconds=1))

    def blocking() -> tuple[str, str | None]:
        with Client(stack) as sync:
            return sync.get_project(project).name, sync.explain_waiting_run(run_id)

    # The services run on this loop: the blocking client waits in a thread.
    name, reason = await asyncio.to_thread(blocking)
    assert name == project
    assert reason == "No agent is online: start one with `flowbus agent local start`."


async def test_the_1x_calls_create_an_id_read_a_flat_info_and_set_states_at_its_version(client: AsyncClient) -> None:
    flow = await register(client, unique("p"), "f", tasks=["a"])
    run_id = await client.create_flow_run(flow.id, context={"team": "data"}, labels=["gpu"], run_name="nightly")
    assert isinstance(run_id, str)

    info = await client.get_flow_run_info(run_id)
    assert (info.id, info.name, info.flow_id, info.version) == (run_id, "nightly", flow.id, 1)
    assert (info.parameters, info.context, info.labels) == ({}, {"team": "data"}, ["gpu"])
    assert isinstance(info.state, Scheduled)
    assert not info.state.is_finished()
    assert [(t.task_slug, t.state.type) for t in info.task_runs] == [("a-1", StateType.PENDING)]
    detail = await client.get_flow_run(run_id)
    assert info.run == detail.run
    assert info.scheduled_start_time == detail.run.scheduled_start_time

    for state in (Submitted(), Running(), Success(message="It worked!")):
        await client.set_flow_run_state(info.id, info.version, state)
        info = await client.get_flow_run_info(run_id)
    assert isinstance(info.state, Success)
    assert info.state.is_successful()
    assert (info.state.message, info.version, info.run.state.version) == ("It worked!", 4, 4)


async def test_create_flow_run_out_returns_the_run_the_id_names(client: AsyncClient) -> None:
    flow = await register(client, unique("p"), "f")
    created = await client.create_flow_run_out(flow.id, idempotency_key="once")
    assert (created.flow_id, created.version, created.state.type) == (flow.id, 1, StateType.SCHEDULED)
    assert await client.create_flow_run(flow.id, idempotency_key="once") == created.id
    assert (await client.get_flow_run(created.id)).run.name == created.name


async def test_the_blocking_client_has_the_same_1x_shapes(client: AsyncClient, stack: Settings) -> None:
    flow = await register(client, unique("p"), "f")

    def blocking() -> tuple[str, FlowRunOut, FlowRunInfo]:
        with Client(stack) as sync:
            run_id = sync.create_flow_run(flow.id, idempotency_key="blocking")
            created = sync.create_flow_run_out(flow.id, idempotency_key="blocking")
            info = sync.get_flow_run_info(run_id)
            sync.set_flow_run_state(run_id, info.version, Submitted("claimed"))
            return run_id, created, sync.get_flow_run_info(run_id)

    run_id, created, info = await asyncio.to_thread(blocking)
    assert isinstance(run_id, str)
    assert created.id == run_id
    assert (info.id, info.version, info.state) == (run_id, 2, Submitted("claimed"))
