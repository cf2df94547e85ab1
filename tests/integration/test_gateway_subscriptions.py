"""GraphQL subscriptions over a real WebSocket (graphql-transport-ws) to the in-process gateway.

A run's states and logs (replayed, then live, ending with the run), the
state changes of a flow's and a project's runs, completing and disconnecting
(their JetStream consumers go away), refusals (unknown ids, bad input, bad
messages) and keys.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect

from flowbus import subjects
from flowbus.client import AsyncClient
from flowbus.schemas.runs import LogBatch, LogRecord
from flowbus.settings import Settings
from flowbus.states import StateType
from flowbus_services.gateway.subscriptions import listening
from tests.helpers.builders import register, unique
from tests.helpers.bus import raw_connect
from tests.helpers.gateway import GraphQL
from tests.helpers.graphql_ws import PROTOCOL, GraphQLWS, refusal
from tests.helpers.waiting import eventually


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """SQLite only: the feeds read NATS streams, and the reads they replay are the
    state service's, tested on both databases in test_queries.py (the suite's
    PostgreSQL time goes where the database matters)."""
    return f"sqlite+aiosqlite:///{tmp_path / 'flowbus.db'}"


RUN_STATES = """
subscription ($id: uuid!) {
  flow_run_state_changes(flow_run_id: $id) {
    flow_run_id flow_id project_id version state previous_state message timestamp deleted replayed
  }
}"""
RUN_LOGS = """
subscription ($id: uuid!, $level: String) {
  flow_run_logs(flow_run_id: $id, level: $level) {
    flow_run_id task_run_id timestamp name level message info replayed
  }
}"""
FLOW_STATES = """
subscription ($id: uuid!) { flow_state_changes(flow_id: $id) { flow_run_id flow_id project_id version state } }"""
PROJECT_STATES = """
subscription ($id: uuid!) {
  project_state_changes(project_id: $id) { flow_run_id flow_id project_id version state }
}"""
EVERY_RUN_STATE = subjects.flow_run_event("*", subjects.FlowRunFact.STATE)


@pytest.fixture
async def ws(gql: GraphQL) -> AsyncIterator[GraphQLWS]:
    async with GraphQLWS.connect(ws_url(gql)) as client:
        yield client


def ws_url(gql: GraphQL) -> str:
    return gql.url.replace("http://", "ws://", 1)


async def consumers(client: AsyncClient, stream: str, subject: str) -> int:
    """How many consumers of ``stream`` filter exactly on ``subject`` (listing them is the services' right)."""
    nc = await raw_connect(client.settings.nats_servers())
    try:
        infos = await nc.jetstream().consumers_info(stream)
    finally:
        await nc.close()
    return sum(1 for info in infos if info.config.filter_subject == subject)


async def wait_for_consumers(client: AsyncClient, stream: str, subject: str, count: int) -> None:
    async def probe() -> int:
        return await consumers(client, stream, subject)

    await eventually(probe, f"{count} consumer(s) of {subject}", until=lambda n: n == count)


async def wait_for_listeners(count: int) -> None:
    """Until ``count`` flow and project feeds receive state changes (this process runs the gateway)."""

    async def probe() -> int:
        return listening()

    await eventually(probe, f"{count} flow or project feed(s) listening", until=lambda n: n == count)


async def publish_logs(client: AsyncClient, run_id: str, messages: list[tuple[str, str]], t0: datetime) -> None:
    records = [
        LogRecord(flow_run_id=run_id, timestamp=t0 + timedelta(seconds=i), name="flow", level=level, message=text)
        for i, (level, text) in enumerate(messages)
    ]
    await client.nc.jetstream().publish(subjects.logs(run_id), LogBatch(records=records).model_dump_json().encode())


def states(items: list[dict[str, Any]], field: str) -> list[tuple[Any, ...]]:
    return [(i[field]["version"], i[field]["state"]) for i in items]


# ---- a run's states ---------------------------------------------------------


async def test_a_runs_states_are_replayed_then_live_and_end_with_a_finished_state(
    client: AsyncClient, ws: GraphQLWS
) -> None:
    flow = await register(client, unique("p"), "f")
    run_id = await client.create_flow_run(flow.id)
    v = (await client.set_flow_run_state(run_id, 1, StateType.SUBMITTED)).version

    feed = await ws.subscribe(RUN_STATES, {"id": run_id})
    replayed = [i["flow_run_state_changes"] for i in await feed.take(2)]
    assert [(i["version"], i["state"], i["previous_state"], i["replayed"]) for i in replayed] == [
        (1, "Scheduled", None, True),
        (2, "Submitted", "Scheduled", True),
    ]
    assert {(i["flow_run_id"], i["flow_id"], i["project_id"]) for i in replayed} == {(run_id, flow.id, flow.project_id)}
    assert {i["deleted"] for i in replayed} == {False}
    first_timestamp = datetime.fromisoformat(replayed[0]["timestamp"])
    assert first_timestamp.tzinfo is not None
    assert first_timestamp <= datetime.fromisoformat(replayed[1]["timestamp"])

    v = (await client.set_flow_run_state(run_id, v, StateType.RUNNING)).version
    running = (await feed.next())["flow_run_state_changes"]
    assert (running["version"], running["state"], running["previous_state"], running["replayed"]) == (
        3,
        "Running",
        "Submitted",
        False,
    )
    await client.set_flow_run_state(run_id, v, StateType.SUCCESS, "all done")
    rest = [i["flow_run_state_changes"] for i in await feed.until_complete()]
    assert [(i["version"], i["state"], i["message"], i["replayed"]) for i in rest] == [
        (4, "Success", "all done", False)
    ]

    # A finished run's feed is its history, then complete.
    again = await ws.subscribe(RUN_STATES, {"id": run_id})
    assert states(await again.until_complete(), "flow_run_state_changes") == [
        (1, "Scheduled"),
        (2, "Submitted"),
        (3, "Running"),
        (4, "Success"),
    ]


async def test_a_deleted_runs_feed_ends_with_a_deletion(client: AsyncClient, ws: GraphQLWS) -> None:
    flow = await register(client, unique("p"), "f")
    run_id = await client.create_flow_run(flow.id)
    feed = await ws.subscribe(RUN_STATES, {"id": run_id})
    assert states(await feed.take(1), "flow_run_state_changes") == [(1, "Scheduled")]
    await client.delete_flow_run(run_id)
    rest = [i["flow_run_state_changes"] for i in await feed.until_complete()]
    assert [(i["deleted"], i["state"], i["version"]) for i in rest] == [(True, None, None)]
    assert datetime.fromisoformat(rest[0]["timestamp"]) > datetime.now(UTC) - timedelta(minutes=5)
    # Gone: now it is unknown.
    assert await (await ws.subscribe(RUN_STATES, {"id": run_id})).error_codes() == ["NOT_FOUND"]


# ---- a run's logs -----------------------------------------------------------


async def test_a_runs_logs_are_replayed_then_live_until_it_ends(client: AsyncClient, ws: GraphQLWS) -> None:
    flow = await register(client, unique("p"), "f")
    run_id = await client.create_flow_run(flow.id)
    t0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
    await publish_logs(client, run_id, [("INFO", "one"), ("DEBUG", "two"), ("WARNING", "three")], t0)
    # Stored (the logs query waits for the log writer), so they are replayed.
    assert len(await client.get_flow_run_logs(run_id)) == 3

    feed = await ws.subscribe(RUN_LOGS, {"id": run_id})
    warnings = await ws.subscribe(RUN_LOGS, {"id": run_id, "level": "warning"})
    replayed = [i["flow_run_logs"] for i in await feed.take(3)]
    assert [(i["message"], i["level"], i["replayed"]) for i in replayed] == [
        ("one", "INFO", True),
        ("two", "DEBUG", True),
        ("three", "WARNING", True),
    ]
    assert replayed[0]["flow_run_id"] == run_id
    assert [datetime.fromisoformat(i["timestamp"]) for i in replayed] == [t0 + timedelta(seconds=i) for i in range(3)]
    assert replayed[0]["task_run_id"] is None
    assert [i["flow_run_logs"]["message"] for i in await warnings.take(1)] == ["three"]

    v = (await client.set_flow_run_state(run_id, 1, StateType.SUBMITTED)).version
    v = (await client.set_flow_run_state(run_id, v, StateType.RUNNING)).version
    await publish_logs(client, run_id, [("INFO", "four"), ("ERROR", "five")], t0 + timedelta(minutes=1))
    live = [i["flow_run_logs"] for i in await feed.take(2)]
    assert [(i["message"], i["replayed"]) for i in live] == [("four", False), ("five", False)]
    assert datetime.fromisoformat(live[1]["timestamp"]) == t0 + timedelta(minutes=1, seconds=1)

    # The last lines shipped just before the final state still arrive, then the feed ends.
    await publish_logs(client, run_id, [("CRITICAL", "six")], t0 + timedelta(minutes=2))
    await client.set_flow_run_state(run_id, v, StateType.FAILED)
    assert [i["flow_run_logs"]["message"] for i in await feed.until_complete()] == ["six"]
    assert [i["flow_run_logs"]["message"] for i in await warnings.until_complete()] == ["five", "six"]

    # A finished run's feed is its logs, then complete.
    again = await ws.subscribe(RUN_LOGS, {"id": run_id})
    messages = [i["flow_run_logs"]["message"] for i in await again.until_complete()]
    assert messages == ["one", "two", "three", "four", "five", "six"]


async def test_a_long_log_is_sent_once_each_whether_stored_yet_or_not(client: AsyncClient, ws: GraphQLWS) -> None:
    """More batches than a consumer sends ahead, published as the feed starts: the log
    writer has stored some of them (replayed), the stream holds them all (live)."""
    flow = await register(client, unique("p"), "f")
    run_id = await client.create_flow_run(flow.id)
    t0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
    count = 1500
    js = client.nc.jetstream()
    for i in range(count):
        at = t0 + timedelta(seconds=i)
        record = LogRecord(flow_run_id=run_id, timestamp=at, name="n", level="INFO", message=str(i))
        await js.publish(subjects.logs(run_id), LogBatch(records=[record]).model_dump_json().encode())
    feed = await ws.subscribe(RUN_LOGS, {"id": run_id})
    await client.set_flow_run_state(run_id, 1, StateType.CANCELLED)
    messages = [i["flow_run_logs"]["message"] for i in await feed.until_complete()]
    assert sorted(messages, key=int) == [str(i) for i in range(count)]


# ---- flows and projects -----------------------------------------------------


async def test_flow_and_project_feeds_carry_their_runs_states_live(client: AsyncClient, gql: GraphQL) -> None:
    project, other = unique("p"), unique("p")
    flow_a = await register(client, project, "a")
    flow_b = await register(client, project, "b")
    flow_c = await register(client, other, "c")
    async with GraphQLWS.connect(ws_url(gql)) as ws:
        flow_feed = await ws.subscribe(FLOW_STATES, {"id": flow_a.id})
        project_feed = await ws.subscribe(PROJECT_STATES, {"id": flow_a.project_id})
        # Live from now: both feeds listen, on the gateway's one consumer of every run's states.
        await wait_for_listeners(2)
        assert await consumers(client, subjects.EVENTS_STREAM, EVERY_RUN_STATE) == 1

        # Another project's run first: had it passed the filter, it would come first.
        run_c_id = await client.create_flow_run(flow_c.id)
        await client.set_flow_run_state(run_c_id, 1, StateType.SUBMITTED)
        run_a_id = await client.create_flow_run(flow_a.id)
        await client.set_flow_run_state(run_a_id, 1, StateType.SUBMITTED)
        run_b_id = await client.create_flow_run(flow_b.id)
        await client.set_flow_run_state(run_b_id, 1, StateType.CANCELLED)

        of_flow = [i["flow_state_changes"] for i in await flow_feed.take(2)]
        assert [(i["flow_run_id"], i["version"], i["state"]) for i in of_flow] == [
            (run_a_id, 1, "Scheduled"),
            (run_a_id, 2, "Submitted"),
        ]
        assert {(i["flow_id"], i["project_id"]) for i in of_flow} == {(flow_a.id, flow_a.project_id)}
        of_project = [i["project_state_changes"] for i in await project_feed.take(4)]
        assert [(i["flow_run_id"], i["flow_id"], i["version"], i["state"]) for i in of_project] == [
            (run_a_id, flow_a.id, 1, "Scheduled"),
            (run_a_id, flow_a.id, 2, "Submitted"),
            (run_b_id, flow_b.id, 1, "Scheduled"),
            (run_b_id, flow_b.id, 2, "Cancelled"),
        ]
        # Flow b's run came after a's on the stream: the flow feed skipped it.
        run_a2_id = await client.create_flow_run(flow_a.id)
        assert [(i["flow_state_changes"]["flow_run_id"]) for i in await flow_feed.take(1)] == [run_a2_id]
    # Disconnected: the gateway deleted the consumer.
    await wait_for_consumers(client, subjects.EVENTS_STREAM, EVERY_RUN_STATE, 0)


async def test_feeds_of_several_clients_share_one_consumer_until_the_last_leaves(
    client: AsyncClient, gql: GraphQL
) -> None:
    flow = await register(client, unique("p"), "f")
    async with GraphQLWS.connect(ws_url(gql)) as first, GraphQLWS.connect(ws_url(gql)) as second:
        feeds = [await ws.subscribe(FLOW_STATES, {"id": flow.id}) for ws in (first, second, second)]
        project_feed = await first.subscribe(PROJECT_STATES, {"id": flow.project_id})
        await wait_for_listeners(4)
        assert await consumers(client, subjects.EVENTS_STREAM, EVERY_RUN_STATE) == 1
        run_id = await client.create_flow_run(flow.id)
        for feed in [*feeds, project_feed]:
            item = (await feed.take(1))[0]
            assert next(iter(item.values()))["flow_run_id"] == run_id
        await first.close()
        await feeds[1].complete()
        # The second client's remaining feed still gets every change.
        await client.set_flow_run_state(run_id, 1, StateType.SUBMITTED)
        assert [i["flow_state_changes"]["state"] for i in await feeds[2].take(1)] == ["Submitted"]
        await wait_for_listeners(1)
        assert await consumers(client, subjects.EVENTS_STREAM, EVERY_RUN_STATE) == 1
    await wait_for_consumers(client, subjects.EVENTS_STREAM, EVERY_RUN_STATE, 0)
    assert listening() == 0


# ---- completing and disconnecting -------------------------------------------


async def test_complete_and_disconnect_delete_the_feeds_consumers(client: AsyncClient, gql: GraphQL) -> None:
    flow = await register(client, unique("p"), "f")
    run_id = await client.create_flow_run(flow.id)
    state_subject = subjects.flow_run_event(run_id, subjects.FlowRunFact.STATE)
    logs_subject = subjects.logs(run_id)
    async with GraphQLWS.connect(ws_url(gql)) as ws:
        feed = await ws.subscribe(RUN_STATES, {"id": run_id})
        await feed.take(1)
        await wait_for_consumers(client, subjects.EVENTS_STREAM, state_subject, 1)
        await feed.complete()
        await wait_for_consumers(client, subjects.EVENTS_STREAM, state_subject, 0)
        # The connection serves on: a new feed of the same run, and one of its logs.
        feed = await ws.subscribe(RUN_STATES, {"id": run_id})
        logs = await ws.subscribe(RUN_LOGS, {"id": run_id})
        await feed.take(1)
        await wait_for_consumers(client, subjects.EVENTS_STREAM, state_subject, 2)
        await wait_for_consumers(client, subjects.LOGS_STREAM, logs_subject, 1)
        await logs.complete()
        await wait_for_consumers(client, subjects.LOGS_STREAM, logs_subject, 0)
        await wait_for_consumers(client, subjects.EVENTS_STREAM, state_subject, 1)
        # The feed left running is still live.
        await client.set_flow_run_state(run_id, 1, StateType.SUBMITTED)
        assert [i["flow_run_state_changes"]["state"] for i in await feed.take(1)] == ["Submitted"]
    await wait_for_consumers(client, subjects.EVENTS_STREAM, state_subject, 0)


# ---- refusals ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "variables"),
    [
        (RUN_STATES, {}),
        (RUN_LOGS, {}),
        (FLOW_STATES, {}),
        (PROJECT_STATES, {}),
    ],
)
async def test_an_unknown_id_is_not_found(ws: GraphQLWS, query: str, variables: dict[str, Any]) -> None:
    feed = await ws.subscribe(query, {"id": str(uuid.uuid4()), **variables})
    assert await feed.error_codes() == ["NOT_FOUND"]


async def test_bad_input_is_a_validation_error_and_the_connection_serves_on(client: AsyncClient, ws: GraphQLWS) -> None:
    flow = await register(client, unique("p"), "f")
    run_id = await client.create_flow_run(flow.id)
    for query, variables in [
        (RUN_STATES, {"id": "not-a-uuid"}),
        (RUN_STATES, {}),
        (RUN_LOGS, {"id": run_id, "level": "LOUD"}),
        ("subscription { flow_run_state_changes(flow_run_id: 1) { state } }", None),
        ("subscription { no_such_feed { state } }", None),
        ("subscription { flow_run_state_changes(", None),
        ("subscription { " + "a { " * 100 + "b" + " }" * 100 + " }", None),
    ]:
        assert set(await (await ws.subscribe(query, variables)).error_codes()) == {"VALIDATION_ERROR"}, query
    # Payloads that are not GraphQL requests.
    for payload in [{"query": 42}, {"query": "{ hello }", "variables": [1]}, "query", None]:
        assert await (await ws.send_subscribe(payload)).error_codes() == ["VALIDATION_ERROR"], payload
    feed = await ws.subscribe(RUN_STATES, {"id": run_id})
    assert states(await feed.take(1), "flow_run_state_changes") == [(1, "Scheduled")]


async def test_queries_run_over_the_socket_too(ws: GraphQLWS) -> None:
    query = await ws.subscribe("{ hello api { backend } }")
    assert await query.until_complete() == [{"hello": "👋", "api": {"backend": "flowbus"}}]


@pytest.mark.parametrize(
    "frame",
    ["not json", "[1, 2]", json.dumps({"type": "no_such_type"}), json.dumps({"type": "subscribe", "payload": {}})],
)
async def test_a_message_outside_the_protocol_closes_with_4400(ws: GraphQLWS, frame: str) -> None:
    await ws.ws.send(frame)
    assert await ws.closed() == 4400


async def test_a_message_over_the_size_limit_closes_with_1009(ws: GraphQLWS, stack: Settings) -> None:
    big = {"query": "{ hello }", "variables": {"x": "a" * (stack.gateway.max_body_bytes + 1)}}
    await ws.send({"id": "1", "type": "subscribe", "payload": big})
    assert await ws.closed() == 1009


# ---- keys -------------------------------------------------------------------


class TestKeys:
    @pytest.fixture
    def settings(self, settings: Settings, database_url: str) -> Settings:
        # (database_url named here too, or pytest loses its parameters through the override)
        return settings.model_copy(update={"gateway": settings.gateway.model_copy(update={"auth": "on"})})

    async def test_no_key_or_a_wrong_key_is_refused_with_4403(self, gql: GraphQL) -> None:
        url = ws_url(gql)
        assert await refusal(url) == 4403
        assert await refusal(url, payload={"Authorization": "Bearer fb_wrong"}) == 4403
        assert await refusal(url, payload={"authorization": "Bearer fb_wrong"}) == 4403
        assert await refusal(url, payload={"headers": {"Authorization": "Bearer fb_wrong"}}) == 4403
        assert await refusal(url, headers={"Authorization": "Bearer fb_wrong"}) == 4403
        assert await refusal(url, payload={"Authorization": "Basic abc"}) == 4403
        # A subscribe before an acknowledged connection_init is refused too.
        async with connect(url, subprotocols=[PROTOCOL]) as raw:
            await raw.send(json.dumps({"id": "1", "type": "subscribe", "payload": {"query": "{ hello }"}}))
            await raw.wait_closed()
            assert raw.close_code == 4401


class TestKeysOfRoles:
    """With the gateway's key store (flowbus_services.gateway.keys): keys, roles and revocation on the socket."""

    @pytest.fixture
    def settings(self, settings: Settings, database_url: str) -> Settings:
        pytest.importorskip("flowbus_services.gateway.keys", reason="no key store in this tree yet")
        return settings.model_copy(update={"gateway": settings.gateway.model_copy(update={"auth": "on"})})

    @staticmethod
    async def new_key(client: AsyncClient, role: str) -> tuple[str, str]:
        keys: Any = client  # the key calls come with the key store
        name = unique(f"key-{role}")
        return name, (await keys.create_api_key(name, role)).key

    async def test_a_key_in_any_of_its_places_lets_a_client_in(self, client: AsyncClient, gql: GraphQL) -> None:
        _, key = await self.new_key(client, "read-only")
        url = ws_url(gql)
        places: list[dict[str, Any]] = [
            {"payload": {"Authorization": f"Bearer {key}"}},
            {"payload": {"authorization": f"Bearer {key}"}},
            {"payload": {"headers": {"Authorization": f"Bearer {key}"}}},
            {"headers": {"Authorization": f"Bearer {key}"}},
        ]
        for place in places:
            async with GraphQLWS.connect(url, **place) as ws:
                assert await (await ws.subscribe("{ hello }")).until_complete() == [{"hello": "👋"}], place

    async def test_each_role_may_subscribe_and_nothing_more_than_it_may(
        self, client: AsyncClient, gql: GraphQL
    ) -> None:
        flow = await register(client, unique("p"), "f")
        run_id = await client.create_flow_run(flow.id)
        for role in ("read-only", "runner", "user", "admin"):
            _, key = await self.new_key(client, role)
            async with GraphQLWS.connect(ws_url(gql), payload={"Authorization": f"Bearer {key}"}) as ws:
                feed = await ws.subscribe(RUN_STATES, {"id": run_id})
                assert states(await feed.take(1), "flow_run_state_changes") == [(1, "Scheduled")], role
                if role in ("read-only", "runner"):
                    create = await ws.subscribe('mutation { create_project(input: {name: "p"}) { id } }')
                    assert await create.error_codes() == ["FORBIDDEN"], role
                keys = await ws.subscribe("{ api_key { name } }")
                if role != "admin":
                    assert await keys.error_codes() == ["FORBIDDEN"], role
                else:
                    assert len((await keys.until_complete())[0]["api_key"]) >= 4

    async def test_a_revoked_key_closes_its_socket_at_once(self, client: AsyncClient, gql: GraphQL) -> None:
        flow = await register(client, unique("p"), "f")
        run_id = await client.create_flow_run(flow.id)
        state_subject = subjects.flow_run_event(run_id, subjects.FlowRunFact.STATE)
        name, key = await self.new_key(client, "read-only")
        keys: Any = client
        async with GraphQLWS.connect(ws_url(gql), payload={"Authorization": f"Bearer {key}"}) as ws:
            feed = await ws.subscribe(RUN_STATES, {"id": run_id})
            await feed.take(1)
            await wait_for_consumers(client, subjects.EVENTS_STREAM, state_subject, 1)
            await keys.delete_api_key(name)
            assert await ws.closed() == 4403
        await wait_for_consumers(client, subjects.EVENTS_STREAM, state_subject, 0)
        assert await refusal(ws_url(gql), payload={"Authorization": f"Bearer {key}"}) == 4403
