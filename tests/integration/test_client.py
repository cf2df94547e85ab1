"""The client against the real services: following a run (stored, then live,
nothing twice) and the blocking twins that were once missing."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from flowbus import subjects
from flowbus.client import AsyncClient, Client, FollowItem
from flowbus.schemas.runs import HistoryEntry, LogBatch, LogRecord, StateChanged
from flowbus.settings import Settings
from flowbus.states import StateType
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
    run = await client.create_flow_run(flow.id)
    await client.set_flow_run_state(run.id, 1, StateType.SUBMITTED)
    await client.set_flow_run_state(run.id, 2, StateType.RUNNING)
    await publish_logs(client, [log(run.id, "one", "DEBUG"), log(run.id, "two")])
    await stored_logs(client, run.id, 2)

    seen: list[str] = []
    replayed = asyncio.Event()

    async def follow() -> None:
        async for item in client.follow_flow_run(run.id, level="info"):
            seen.append(describe(item))
            if describe(item) == "log two":
                replayed.set()

    following = asyncio.create_task(follow())
    async with asyncio.timeout(30):
        await replayed.wait()
    await publish_logs(client, [log(run.id, "three", "DEBUG"), log(run.id, "four", "WARNING")])
    await client.set_flow_run_state(run.id, 3, StateType.SUCCESS)
    async with asyncio.timeout(30):
        await following
    assert seen[:4] == ["stored Scheduled", "stored Submitted", "stored Running", "log two"]
    # The two streams arrive independently; the log comes before the end all the same.
    assert sorted(seen[4:]) == ["live Success", "log four"]


async def test_following_a_finished_run_returns_what_is_stored(client: AsyncClient) -> None:
    flow = await register(client, unique("p"), "f")
    run = await client.create_flow_run(flow.id)
    await client.cancel_flow_run(run.id, "not needed")
    items = [describe(item) async for item in client.follow_flow_run(run.id)]
    assert items == ["stored Scheduled", "stored Cancelled"]


async def test_the_blocking_client_gets_a_project_and_explains_a_waiting_run(
    client: AsyncClient, stack: Settings
) -> None:
    project = unique("p")
    flow = await register(client, project, "f")
    run = await client.create_flow_run(flow.id, scheduled_start_time=datetime.now(UTC) - timedelta(seconds=1))

    def blocking() -> tuple[str, str | None]:
        with Client(stack) as sync:
            return sync.get_project(project).name, sync.explain_waiting_run(run.id)

    # The services run on this loop: the blocking client waits in a thread.
    name, reason = await asyncio.to_thread(blocking)
    assert name == project
    assert reason == "No agent is online: start one with `flowbus agent local start`."
