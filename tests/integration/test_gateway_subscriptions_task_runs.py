"""The task-run feed of a flow run (``task_run_state_changes``) over a real WebSocket.

Each task run's current state replayed from the database, then each new one
live (mapped children made later included), each once across the replay's
boundary; the feed ends with its run, finished or deleted; an unknown run is
NOT_FOUND; a read-only key may subscribe. On both databases, unlike test_gateway_subscriptions.py: the
replay is this feed's own query.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import pytest

from flowbus.client import AsyncClient
from flowbus.schemas.api_keys import Role
from flowbus.settings import Settings
from flowbus.states import StateType
from tests.helpers.builders import register, unique
from tests.helpers.gateway import GraphQL
from tests.helpers.graphql_ws import GraphQLWS

TASK_STATES = """
subscription ($id: uuid!) {
  task_run_state_changes(flow_run_id: $id) {
    flow_run_id flow_id project_id task_run_id task_id task_slug task_name map_index
    version state previous_state message timestamp replayed
  }
}"""


@pytest.fixture
async def ws(gql: GraphQL) -> AsyncIterator[GraphQLWS]:
    async with GraphQLWS.connect(gql.url.replace("http://", "ws://", 1)) as client:
        yield client


async def task_ids(gql: GraphQL, flow_id: str) -> dict[str, str]:
    """The flow's tasks, slug -> id, as the UI reads them."""
    query = "query ($id: uuid!) { task(where: {flow_id: {_eq: $id}}) { id slug } }"
    return {t["slug"]: t["id"] for t in (await gql.data(query, {"id": flow_id}))["task"]}


async def running_run(client: AsyncClient, flow_id: str) -> tuple[str, dict[str, str]]:
    """A Running run of the flow and its task runs, task slug -> task run id."""
    run_id = await client.create_flow_run(flow_id)
    v = (await client.set_flow_run_state(run_id, 1, StateType.SUBMITTED)).version
    await client.set_flow_run_state(run_id, v, StateType.RUNNING)
    task_runs = (await client.get_flow_run_info(run_id)).task_runs
    return run_id, {t.task_slug: t.id for t in task_runs}


def items(payloads: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [p["task_run_state_changes"] for p in payloads]


def brief(item: dict[str, Any]) -> tuple[Any, ...]:
    return (item["task_slug"], item["map_index"], item["version"], item["state"], item["replayed"])


async def test_task_states_are_replayed_then_live_and_end_with_the_run(
    client: AsyncClient, gql: GraphQL, ws: GraphQLWS
) -> None:
    flow = await register(client, unique("p"), "f", tasks=["a", "b"])
    tasks = await task_ids(gql, flow.id)
    run_id, task_runs = await running_run(client, flow.id)
    a_version = (await client.set_task_run_state(task_runs["a-1"], 1, StateType.RUNNING, "going")).version

    feed = await ws.subscribe(TASK_STATES, {"id": run_id})
    replayed = items(await feed.take(2))
    # Each task run's current state, the oldest first.
    assert [brief(i) for i in replayed] == [("b-1", -1, 1, "Pending", True), ("a-1", -1, 2, "Running", True)]
    assert [(i["task_run_id"], i["task_id"], i["task_name"]) for i in replayed] == [
        (task_runs["b-1"], tasks["b-1"], "b"),
        (task_runs["a-1"], tasks["a-1"], "a"),
    ]
    assert {(i["flow_run_id"], i["flow_id"], i["project_id"]) for i in replayed} == {(run_id, flow.id, flow.project_id)}
    assert (replayed[1]["message"], replayed[1]["previous_state"]) == ("going", None)
    assert datetime.fromisoformat(replayed[0]["timestamp"]) <= datetime.fromisoformat(replayed[1]["timestamp"])

    await client.set_task_run_state(task_runs["a-1"], a_version, StateType.SUCCESS, "a done")
    child = (await client.ensure_task_run(run_id, tasks["b-1"], 0)).task_run
    await client.set_task_run_state(task_runs["b-1"], 1, StateType.MAPPED)
    live = items(await feed.take(3))
    assert [brief(i) for i in live] == [
        ("a-1", -1, 3, "Success", False),
        ("b-1", 0, 1, "Pending", False),
        ("b-1", -1, 2, "Mapped", False),
    ]
    assert [(i["previous_state"], i["message"]) for i in live[::2]] == [("Running", "a done"), ("Pending", None)]
    assert (live[1]["task_run_id"], live[1]["task_id"]) == (child.id, tasks["b-1"])
    assert datetime.fromisoformat(live[0]["timestamp"]).tzinfo is not None

    # A task state set just before the run's final state still arrives, then the feed ends.
    await client.set_task_run_state(child.id, 1, StateType.SUCCESS)
    await client.set_flow_run_state(run_id, None, StateType.SUCCESS)
    assert [brief(i) for i in items(await feed.until_complete())] == [("b-1", 0, 2, "Success", False)]

    # A finished run's feed is its task runs' states, then complete.
    again = items(await (await ws.subscribe(TASK_STATES, {"id": run_id})).until_complete())
    assert sorted(brief(i) for i in again) == [
        ("a-1", -1, 3, "Success", True),
        ("b-1", -1, 2, "Mapped", True),
        ("b-1", 0, 2, "Success", True),
    ]


async def test_each_task_state_is_sent_once_across_the_replay(client: AsyncClient, ws: GraphQLWS) -> None:
    """States set before the feed (in the stream and the database), while it starts
    (either) and after (the stream only): each task run's versions once, in order."""
    names = [f"t{i}" for i in range(20)]
    flow = await register(client, unique("p"), "f", tasks=names)
    run_id, task_runs = await running_run(client, flow.id)
    for task_run_id in list(task_runs.values())[:10]:
        await client.set_task_run_state(task_run_id, 1, StateType.RUNNING)

    async def run_every_task() -> None:
        for task_run_id in task_runs.values():
            await client.set_task_run_state(task_run_id, None, StateType.RUNNING)
            await client.set_task_run_state(task_run_id, None, StateType.SUCCESS)

    writer = asyncio.create_task(run_every_task())
    feed = await ws.subscribe(TASK_STATES, {"id": run_id})
    await writer
    await client.set_flow_run_state(run_id, None, StateType.SUCCESS)

    versions: dict[str, list[int]] = defaultdict(list)
    for item in items(await feed.until_complete()):
        versions[item["task_run_id"]].append(item["version"])
    finals = {t.id: t.version for t in (await client.get_flow_run_info(run_id)).task_runs}
    assert set(versions) == set(finals)
    for task_run_id, seen in versions.items():
        # From the version replayed (whichever it was) to the last, none twice, none missed.
        assert seen == list(range(seen[0], finals[task_run_id] + 1)), (task_run_id, seen)


async def test_a_deleted_runs_task_feed_ends(client: AsyncClient, ws: GraphQLWS) -> None:
    flow = await register(client, unique("p"), "f", tasks=["a"])
    run_id = await client.create_flow_run(flow.id)
    feed = await ws.subscribe(TASK_STATES, {"id": run_id})
    assert [brief(i) for i in items(await feed.take(1))] == [("a-1", -1, 1, "Pending", True)]
    await client.delete_flow_run(run_id)
    assert await feed.until_complete() == []


async def test_an_unknown_run_is_not_found(ws: GraphQLWS) -> None:
    feed = await ws.subscribe(TASK_STATES, {"id": str(uuid.uuid4())})
    assert await feed.error_codes() == ["NOT_FOUND"]
    bad = await ws.subscribe(TASK_STATES, {"id": "not-a-uuid"})
    assert await bad.error_codes() == ["VALIDATION_ERROR"]


class TestKeys:
    @pytest.fixture
    def settings(self, settings: Settings, database_url: str) -> Settings:
        # (database_url named here too, or pytest loses its parameters through the override)
        return settings.model_copy(update={"gateway": settings.gateway.model_copy(update={"auth": "on"})})

    async def test_a_read_only_key_may_subscribe(self, client: AsyncClient, gql: GraphQL) -> None:
        flow = await register(client, unique("p"), "f", tasks=["a"])
        run_id = await client.create_flow_run(flow.id)
        key = (await client.create_api_key(unique("viewer"), Role.READ_ONLY)).key
        url = gql.url.replace("http://", "ws://", 1)
        async with GraphQLWS.connect(url, payload={"Authorization": f"Bearer {key}"}) as ws:
            feed = await ws.subscribe(TASK_STATES, {"id": run_id})
            assert [brief(i) for i in items(await feed.take(1))] == [("a-1", -1, 1, "Pending", True)]
