"""The transactional outbox (flowbus.runtime.outbox): events that survive a
crash between the commit and the publish, published once, in both reply
modes, and rows deleted only once their events are stored."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy, StreamConfig
from sqlmodel import col, select

from flowbus import subjects
from flowbus.bus_auth import BusRole
from flowbus.client import AsyncClient
from flowbus.db.engine import Database
from flowbus.db.migrate import upgrade_async
from flowbus.db.outbox import OutboxBatch
from flowbus.db.tables import Outbox, Project, utcnow
from flowbus.runtime.batching import GroupCommitter
from flowbus.runtime.nats import connect, ensure_streams
from flowbus.runtime.outbox import OutboxRelay
from flowbus.runtime.service import service_context
from flowbus.schemas.flows import CreateProject, FlowOut, ProjectOut, ProjectRef, RegisterFlow, RenameProject
from flowbus.schemas.runs import CreateFlowRun, FlowRunOut
from flowbus.settings import Settings
from flowbus_services.registration import usecases as registration
from flowbus_services.registry import build_service_app
from flowbus_services.run_creation import usecases as run_creation
from tests.helpers import serialized_flow, unique
from tests.helpers.bus import raw_connect


async def _events_of(settings: Settings, flow_run_id: str, expected: int) -> list[tuple[str, str | None]]:
    """Every message of the run's event subjects in the stream, with its message id."""
    nc = await raw_connect(settings.nats_servers())
    try:
        js = nc.jetstream()
        got: list[tuple[str, str | None]] = []
        done = asyncio.Event()

        async def on_msg(msg: Msg) -> None:
            got.append((msg.subject, (msg.headers or {}).get("Nats-Msg-Id")))
            if len(got) >= expected:
                done.set()

        sub = await js.subscribe(
            subjects.flow_run_events(flow_run_id),
            stream=subjects.EVENTS_STREAM,
            cb=on_msg,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
        )
        async with asyncio.timeout(20):
            await done.wait()
        # The stream itself says how many messages each of the run's subjects holds: a duplicate would show.
        info = await js.stream_info(subjects.EVENTS_STREAM, subjects_filter=subjects.flow_run_events(flow_run_id))
        await sub.unsubscribe()
        assert sum((info.state.subjects or {}).values()) == expected
        return got
    finally:
        await nc.close()


@asynccontextmanager
async def _direct(settings: Settings, name: str) -> AsyncIterator[tuple[Database, Client, FlowOut]]:
    """For calling use cases directly, without a service: the migrated database
    (with run_creation's relay, which a test may replace), NATS with the streams,
    and a flow whose runs no agent takes."""
    await upgrade_async(settings.resolved_database_url())
    db = Database(settings.resolved_database_url())
    nc = await connect(settings, f"test-{name}", BusRole.SERVICE)
    try:
        await ensure_streams(nc.jetstream(), settings)
        OutboxRelay(subjects.Service.RUN_CREATION, db, nc)
        project = unique("p")
        await registration.create_project(db, CreateProject(name=project))
        flow = await registration.register_flow(
            db, RegisterFlow(project_name=project, serialized_flow=serialized_flow(name, labels=["nobody"]))
        )
        yield db, nc, flow
    finally:
        await nc.close()
        await db.dispose()


async def test_events_survive_a_crash_between_commit_and_publish(settings: Settings) -> None:
    """A create commits its run and stages its events; the process dies before
    publishing (its relay never connected), or after publishing but before
    deleting the rows. The next service instance publishes them, exactly once."""
    async with _direct(settings, "crash") as (db, nc, flow):
        # Crash 1: committed, nothing published (the relay that took the batch never connected).
        OutboxRelay(subjects.Service.RUN_CREATION, db)
        [first] = await run_creation.create_flow_runs(db, [CreateFlowRun(flow_id=flow.id)], None)

        # Crash 2: committed and published from memory, the row not yet deleted.
        class PublishThenDie(OutboxRelay):
            async def _delete_published(self) -> None:
                raise SystemExit("killed before deleting the published rows")

        dying = PublishThenDie(subjects.Service.RUN_CREATION, db, nc)
        [second] = await run_creation.create_flow_runs(db, [CreateFlowRun(flow_id=flow.id)], None)
        assert not isinstance(first, Exception)
        assert not isinstance(second, Exception)
        with pytest.raises(SystemExit):
            await dying.sweep()

    # The restarted service's relay publishes what is left.
    async with AsyncExitStack() as apps:
        app = await apps.enter_async_context(build_service_app("run_creation", settings))
        relay = service_context(app).relay
        await relay.publish_pending()  # whatever its sweep has not done yet: the outbox is empty after this
        for run in (first, second):
            got = await _events_of(settings, run.id, expected=2)
            assert {msg_id for _s, msg_id in got} == {
                f"flow_run:{run.id}:created",
                subjects.state_event_msg_id(run.id, 1),
            }
        async with AsyncClient(settings) as client:
            assert (await client.create_flow_run_out(flow.id, idempotency_key="after")).version == 1


async def test_each_batch_deletes_the_outbox_rows_published_before_it(settings: Settings) -> None:
    """The relay's published rows go in the next batch's own transaction, not in a separate delete."""
    async with _direct(settings, "clear") as (db, nc, flow):
        relay = OutboxRelay(subjects.Service.RUN_CREATION, db, nc)  # its sweep never runs here

        async def outbox_rows() -> list[int]:
            async with db.read_session() as session:
                rows = await session.exec(select(col(Outbox.id)).where(Outbox.owner == "run_creation"))
                return sorted(row_id for row_id in rows.all() if row_id is not None)

        await relay.publish_pending()  # earlier tests' leftovers, if any
        await run_creation.create_flow_runs(db, [CreateFlowRun(flow_id=flow.id)], None)  # published on return
        [first_row] = await outbox_rows()  # published, kept until the next transaction
        await run_creation.create_flow_runs(db, [CreateFlowRun(flow_id=flow.id)], None)
        [second_row] = await outbox_rows()
        assert second_row != first_row, "the second batch's transaction deleted the first batch's row"


async def test_a_relay_that_does_not_wait_for_acks_still_publishes_every_batch_once(settings: Settings) -> None:
    """``reply_after_events="sent"``: ``publish_committed`` returns once the
    events are sent; the acknowledgements arrive later, and only then are the
    rows let go (deleted by a later batch's transaction)."""
    async with _direct(settings, "sent") as (db, nc, flow):
        relay = OutboxRelay(subjects.Service.RUN_CREATION, db, nc, reply_after_stored=False)
        await relay.publish_pending()  # earlier tests' leftovers, if any
        # As in the service: a group committer publishes each batch before its replies.
        creates: GroupCommitter[CreateFlowRun, FlowRunOut] = GroupCommitter(
            "creates", partial(run_creation.create_flow_runs, db, idempotency_ttl=None), relay.publish_before_reply, 1
        )
        runs = []
        for _ in range(3):
            runs += await asyncio.gather(*(creates.submit(CreateFlowRun(flow_id=flow.id)) for _ in range(5)))
        await creates.close()
        await relay.close()  # every acknowledgement is in
        for run in runs:
            assert not isinstance(run, Exception)
            got = await _events_of(settings, run.id, expected=2)
            assert [msg_id for _s, msg_id in got] == [
                f"flow_run:{run.id}:created",
                subjects.state_event_msg_id(run.id, 1),
            ]
        await relay.sweep()  # deletes the confirmed rows and publishes nothing again
        async with db.read_session() as session:
            rows = await session.exec(select(col(Outbox.id)).where(Outbox.owner == "run_creation"))
            assert rows.all() == []


async def test_a_sent_batch_that_is_refused_is_published_again_on_the_next_pass(settings: Settings) -> None:
    """The acknowledgements of a batch sent without waiting fail (no stream
    stores its subject yet): the batch goes back to the front of the relay's
    queue, and once a stream is there, the next pass publishes it."""
    async with _direct(settings, "refused") as (db, nc, _flow):
        owner = unique("owner")
        relay = OutboxRelay(owner, db, nc, reply_after_stored=False)
        stream = unique("later").replace("-", "_").upper()
        batch = OutboxBatch()
        # Under flowbus.: the only subjects the service credential may publish to.
        batch.messages.append((f"flowbus.test.{stream}.a", f"{stream}-1", b"first"))
        async with db.write_connection() as conn:
            await relay.stage(conn, batch, utcnow())
        relay.committed(batch)
        await relay.publish_committed()  # sent; the 503 comes back later
        await relay.close()
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name=stream, subjects=[f"flowbus.test.{stream}.>"]))
        await relay.sweep()  # the failed batch is first in line, before any row
        await relay.close()
        assert (await js.stream_info(stream)).state.messages == 1
        assert (await js.get_msg(stream, 1)).data == b"first"
        await relay.sweep()
        async with db.read_session() as session:
            rows = await session.exec(select(col(Outbox.id)).where(Outbox.owner == owner))
            assert rows.all() == []


async def test_a_sent_batch_waiting_for_its_acks_is_not_swept_and_is_sent_again_if_they_never_come(
    settings: Settings,
) -> None:
    """A subject that a plain subscriber hears but no stream stores: the batch
    is delivered, no acknowledgement comes. While the relay waits for it, a
    sweep (grace 0) leaves the row alone; once the wait times out, the batch
    is sent again."""
    async with _direct(settings, "unacked") as (db, nc, _flow):
        owner, subject = unique("owner"), f"flowbus.test.{unique('sink')}.a"
        heard: asyncio.Queue[bytes] = asyncio.Queue()

        async def on_msg(msg: Msg) -> None:
            await heard.put(msg.data)

        await nc.subscribe(subject, cb=on_msg)
        relay = OutboxRelay(owner, db, nc, reply_after_stored=False, grace=0, ack_timeout=1.0)
        batch = OutboxBatch()
        batch.messages.append((subject, unique("id"), b"once"))
        async with db.write_connection() as conn:
            await relay.stage(conn, batch, utcnow())
        relay.committed(batch)
        await relay.publish_committed()
        async with asyncio.timeout(10):
            assert await heard.get() == b"once"
        await relay.sweep()  # the row is past its grace, but its acknowledgements are awaited
        await relay.close()  # no acknowledgement within ack_timeout: the batch goes back in line
        assert heard.empty(), "the sweep sent a batch whose acknowledgements were still awaited"
        await relay.publish_committed()
        async with asyncio.timeout(10):
            assert await heard.get() == b"once"
        await relay.close()


async def _last(js: JetStreamContext, subject: str) -> bytes:
    """The newest message on ``subject`` in the events stream, read at once: no waiting, no retry."""
    return (await js.get_last_msg(subjects.EVENTS_STREAM, subject)).data or b""


@pytest.mark.parametrize("reply_after_events", ["stored", "sent"])
async def test_a_registration_write_is_in_the_stream_when_its_reply_arrives(
    settings: Settings, reply_after_events: str
) -> None:
    settings = settings.model_copy(
        update={"nats": settings.nats.model_copy(update={"reply_after_events": reply_after_events})}
    )
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(build_service_app(subjects.Service.REGISTRATION, settings))
        client = await stack.enter_async_context(AsyncClient(settings))
        js = client.nc.jetstream()
        project = await client.create_project(unique("p"))
        assert ProjectOut.model_validate_json(await _last(js, subjects.project_event(project.id, "created"))) == project
        renamed = await client.rename_project(project.name, unique("q"))
        event = ProjectOut.model_validate_json(await _last(js, subjects.project_event(project.id, "renamed")))
        assert event.name == renamed.name
        flow = await client.register(serialized_flow("published"), renamed.name)
        assert b'"registered"' in await _last(js, subjects.flow_event(flow.id, subjects.FlowFact.REGISTERED))
        await client.archive_flow(flow.id)
        assert b'"archived"' in await _last(js, subjects.flow_event(flow.id, subjects.FlowFact.ARCHIVED))


@asynccontextmanager
async def _database(settings: Settings) -> AsyncIterator[Database]:
    await upgrade_async(settings.resolved_database_url())
    db = Database(settings.resolved_database_url())
    try:
        yield db
    finally:
        await db.dispose()


async def test_a_use_case_has_published_its_events_when_it_returns(settings: Settings) -> None:
    """Called directly, with no handler around it: the unit of work publishes on its own."""
    async with _database(settings) as db:
        nc = await connect(settings, "test-outbox", BusRole.SERVICE)
        try:
            await ensure_streams(nc.jetstream(), settings)
            OutboxRelay(subjects.Service.REGISTRATION, db, nc)
            project = await registration.create_project(db, CreateProject(name=unique("p")))
            js = nc.jetstream()
            assert b'"id"' in await _last(js, subjects.project_event(project.id, subjects.ProjectFact.CREATED))
            rename = RenameProject(project=ProjectRef(name=project.name), new_name=unique("q"))
            renamed = await registration.rename_project(db, rename)
            assert renamed.name.encode() in await _last(js, subjects.project_event(project.id, "renamed"))
        finally:
            await nc.close()


async def test_a_write_whose_events_nothing_would_publish_is_rolled_back(settings: Settings) -> None:
    async with _database(settings) as db:  # no relay: nothing would ever publish
        name = unique("p")
        with pytest.raises(RuntimeError, match="without an outbox"):
            await registration.create_project(db, CreateProject(name=name))
        async with db.read_session() as session:
            assert (await session.exec(select(Project).where(Project.name == name))).first() is None
