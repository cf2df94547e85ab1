"""Registration through the service: projects, versions, archiving, idempotency."""

from __future__ import annotations

import pytest
from nats.aio.client import Client
from sqlmodel import select

from flowbus.client import AsyncClient
from flowbus.db.engine import Database
from flowbus.db.tables import Task
from flowbus.schemas.common import Conflict, NotFound, ValidationFailed
from flowbus.schemas.flows import ParameterSpec, SerializedFlow
from flowbus.settings import Settings
from tests.helpers import register, serialized_flow, unique
from tests.helpers.commands import send


async def test_project_names_are_unique(client: AsyncClient) -> None:
    name = unique("proj")
    created = await client.create_project(name)
    with pytest.raises(Conflict, match="already exists"):
        await client.create_project(name)
    again = await client.create_project(name, skip_if_exists=True)
    assert again.id == created.id
    assert name in [p.name for p in await client.get_projects()]


async def test_register_needs_a_project(client: AsyncClient) -> None:
    with pytest.raises(NotFound, match="not found"):
        await client.register(serialized_flow("f"), unique("missing"))


async def test_new_version_archives_the_old_one(client: AsyncClient) -> None:
    project = unique("proj")
    v1 = await register(client, project, "etl")
    v2 = await register(client, project, "etl")
    assert (v1.version, v2.version) == (1, 2)
    assert v2.flow_group_id == v1.flow_group_id
    assert (await client.get_flow(v1.id)).archived is True
    assert (await client.get_flow(v2.id)).archived is False
    newest = await client.get_flows(project_name=project)
    assert [f.id for f in newest] == [v2.id]
    assert len(await client.get_flows(project_name=project, newest_only=False)) == 2


async def test_same_name_in_another_project_is_another_group(client: AsyncClient) -> None:
    a = await register(client, unique("a"), "etl")
    b = await register(client, unique("b"), "etl")
    assert a.flow_group_id != b.flow_group_id
    assert b.version == 1


async def test_idempotency_key_skips_unchanged_registration(client: AsyncClient) -> None:
    project = unique("proj")
    first = await register(client, project, "etl", idempotency_key="hash-1")
    again = await register(client, project, "etl", idempotency_key="hash-1")
    assert again.skipped is True
    assert again.id == first.id
    changed = await register(client, project, "etl", idempotency_key="hash-2")
    assert changed.version == 2


async def test_explicit_version_group(client: AsyncClient) -> None:
    project = unique("proj")
    group = unique("group")
    a = await register(client, project, "one", version_group_id=group)
    b = await register(client, project, "two", version_group_id=group)
    assert a.flow_group_id == b.flow_group_id == group
    assert b.version == 2


async def test_invalid_serialized_flows_are_refused(client: AsyncClient, nc: Client) -> None:
    project = unique("proj")
    await client.create_project(project)
    good = serialized_flow("f").model_dump(mode="json")
    bad_variants = [
        {k: v for k, v in good.items() if k != "name"},
        {**good, "tasks": [{"slug": "a", "name": "a"}, {"slug": "a", "name": "b"}]},
        {**good, "parameters": {"x": 1}},
    ]
    for variant in bad_variants:
        with pytest.raises(Exception) as info:  # noqa: PT011
            SerializedFlow.model_validate(variant)
        assert "validation error" in str(info.value).lower()
    # And through the wire: the service refuses and stores nothing.
    from flowbus import subjects

    for variant in bad_variants:
        body = {"project_name": project, "serialized_flow": variant}
        reply = await send(nc, subjects.RegistrationCommands.REGISTER_FLOW, body)
        assert reply["error"]["code"] == "VALIDATION_ERROR"
    assert await client.get_flows(project_name=project) == []
    with pytest.raises(ValidationFailed):
        raise ValidationFailed("sanity")


async def test_concurrent_registrations_never_duplicate_versions(client: AsyncClient) -> None:
    import asyncio

    project = unique("proj")
    await client.create_project(project)
    outs = await asyncio.gather(*(client.register(serialized_flow("race"), project) for _ in range(8)))
    assert sorted(o.version for o in outs) == list(range(1, 9))
    unarchived = await client.get_flows(project_name=project, archived=False, newest_only=False)
    assert len(unarchived) == 1


async def test_two_registration_instances_racing_never_share_a_version(stack, client: AsyncClient) -> None:
    """A second registration service on the same database and queue group: the
    version constraint, not a read-then-write, keeps numbers unique."""
    import asyncio

    from flowbus_services.registry import build_service_app

    project = unique("proj")
    await client.create_project(project)
    async with build_service_app("registration", stack):
        outs = await asyncio.gather(*(client.register(serialized_flow("race2"), project) for _ in range(16)))
    assert sorted(o.version for o in outs) == list(range(1, 17))


async def test_bad_schedules_are_refused_and_nothing_is_stored(client: AsyncClient, nc: Client) -> None:
    from flowbus import subjects

    project = unique("proj")
    await client.create_project(project)
    good = serialized_flow("f", parameters=[ParameterSpec(name="x")]).model_dump(mode="json")
    bad_clocks = [
        {"type": "cron", "cron": "61 * * * *"},
        {"type": "cron", "cron": "* * * * *", "timezone": "Mars/Olympus"},
        {"type": "interval", "interval_seconds": 0},
        {"type": "interval"},
        {"type": "interval", "interval_seconds": 60, "start_date": "2026-01-01T00:00:00"},
        {"type": "dates", "dates": ["2026-01-01T00:00:00"]},
        {"type": "dates", "dates": []},
        {"type": "interval", "interval_seconds": 60, "cron": "* * * * *"},
        {"type": "cron", "cron": "0 6 * * *", "parameter_defaults": {"undeclared": 1}},
    ]
    messages: list[str] = []
    for clock in bad_clocks:
        body = {"project_name": project, "serialized_flow": {**good, "schedule": {"clocks": [clock]}}}
        reply = await send(nc, subjects.RegistrationCommands.REGISTER_FLOW, body)
        assert reply["error"]["code"] == "VALIDATION_ERROR", clock
        messages.append(reply["error"]["message"])
    assert "invalid cron '61 * * * *': Bad minute" in messages[0]
    assert "timezone-aware" in messages[4]
    assert await client.get_flows(project_name=project) == []


async def test_each_version_gets_task_rows_of_its_own(stack: Settings, client: AsyncClient) -> None:
    project = unique("proj")
    v1 = await register(client, project, "etl")
    v2 = await register(client, project, "etl")
    db = Database(stack.resolved_database_url())
    try:
        async with db.read_session() as session:
            rows = (await session.execute(select(Task.flow_id, Task.slug, Task.name, Task.id))).all()
    finally:
        await db.dispose()
    by_flow = {fid: sorted((slug, name) for f, slug, name, _ in rows if f == fid) for fid in (v1.id, v2.id)}
    expected = sorted((t.slug, t.name) for t in v1.tasks)
    assert expected
    assert by_flow == {v1.id: expected, v2.id: expected}
    ids = [r.id for r in rows if r.flow_id in (v1.id, v2.id)]
    assert len(set(ids)) == len(ids)
