"""Publishing after commit is the unit of work's job: a write's events are in
the stream before anyone hears of the write, with no handler or use case
asking for it, and a write whose events nothing would publish does not commit."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import pytest
from nats.js import JetStreamContext
from sqlmodel import select

from flowbus import subjects
from flowbus.client import AsyncClient
from flowbus.db.engine import Database
from flowbus.db.migrate import upgrade_async
from flowbus.db.tables import Project
from flowbus.embedded import build_service_app
from flowbus.runtime.nats import connect, ensure_streams
from flowbus.runtime.outbox import OutboxRelay
from flowbus.schemas.flows import CreateProject, ProjectOut, ProjectRef, RenameProject
from flowbus.settings import Settings
from services.registration import usecases as registration
from tests.conftest import unique
from tests.helpers import serialized_flow


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
        nc = await connect(settings, "test-outbox")
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
