"""The scheduler's planner: runs from clocks, kept created ahead, each clock time once.

The services run for real (NATS, SQLite and PostgreSQL); the planner under
test runs in the test with an injected clock, so hours of schedule pass in
milliseconds. The stack's own planner is off (``scheduler.plan_runs``) so
that only the planner under test creates runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta

import pytest

from flowbus.client import AsyncClient
from flowbus.db.engine import Database
from flowbus.schemas.common import NotFound, VersionLockingError
from flowbus.schemas.flows import ClockSpec, FlowOut, ParameterSpec, ScheduleSpec
from flowbus.schemas.runs import FlowRunOut
from flowbus.settings import Settings
from flowbus.states import StateType
from flowbus_services.registry import SERVICE_MODULES, build_service_app
from flowbus_services.scheduler.handlers import planner_status
from flowbus_services.scheduler.planner import Planner
from tests.helpers.builders import register, unique

pytestmark = pytest.mark.asyncio

T0 = datetime(2030, 1, 7, 9, 0, tzinfo=UTC)
MINUTE = timedelta(minutes=1)


class FakeClock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def every(seconds: float, **kw: object) -> ScheduleSpec:
    return ScheduleSpec(clocks=[ClockSpec(type="interval", interval_seconds=seconds, **kw)])


@pytest.fixture
def quiet_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"scheduler": settings.scheduler.model_copy(update={"plan_runs": False})})


@pytest.fixture
async def planner_client(quiet_settings: Settings) -> AsyncIterator[AsyncClient]:
    async with AsyncExitStack() as apps:
        for name in SERVICE_MODULES:
            await apps.enter_async_context(build_service_app(name, quiet_settings))
        async with AsyncClient(quiet_settings) as client:
            yield client


@pytest.fixture
async def database(quiet_settings: Settings) -> AsyncIterator[Database]:
    db = Database(quiet_settings.resolved_database_url())
    yield db
    await db.dispose()


def make_planner(
    db: Database, client: AsyncClient, settings: Settings, clock: FakeClock, **scheduler: object
) -> Planner:
    tuned = settings.model_copy(update={"scheduler": settings.scheduler.model_copy(update=scheduler)})
    return Planner(db, client, tuned, now=clock)


async def auto_runs(client: AsyncClient, flow: FlowOut) -> list[FlowRunOut]:
    runs = await client.get_flow_runs(flow_group_id=flow.flow_group_id, limit=1000)
    return sorted((r for r in runs if r.auto_scheduled), key=lambda r: r.scheduled_start_time)


async def future_starts(client: AsyncClient, flow: FlowOut, now: datetime) -> list[datetime]:
    return [r.scheduled_start_time for r in await auto_runs(client, flow) if r.scheduled_start_time > now]


async def test_keeps_ten_runs_ahead_through_hours_of_schedule(
    planner_client: AsyncClient, database: Database, quiet_settings: Settings
) -> None:
    client = planner_client
    flow = await register(client, unique("p"), unique("every-minute"), schedule=every(60))
    clock = FakeClock(T0)
    planner = make_planner(database, client, quiet_settings, clock)
    await planner.plan()
    assert await future_starts(client, flow, T0) == [T0 + k * MINUTE for k in range(1, 11)]
    runs = await auto_runs(client, flow)
    assert all(r.state.type is StateType.SCHEDULED and r.flow_id == flow.id for r in runs)
    assert len({r.idempotency_key for r in runs}) == 10

    for _ in range(180):  # three hours, a minute at a time
        clock.now += MINUTE
        await planner.advance()
    starts = [r.scheduled_start_time for r in await auto_runs(client, flow)]
    assert starts == [T0 + k * MINUTE for k in range(1, 191)]
    assert await future_starts(client, flow, clock.now) == [clock.now + k * MINUTE for k in range(1, 11)]


async def test_two_planners_at_once_create_each_run_once(
    planner_client: AsyncClient, database: Database, quiet_settings: Settings
) -> None:
    client = planner_client
    flow = await register(client, unique("p"), unique("twice"), schedule=every(60))
    clock = FakeClock(T0)
    first = make_planner(database, client, quiet_settings, clock)
    second = make_planner(database, client, quiet_settings, clock)
    await asyncio.gather(first.plan(), second.plan())
    for _ in range(30):
        clock.now += MINUTE
        await asyncio.gather(first.advance(), second.advance())
    runs = await auto_runs(client, flow)
    assert [r.scheduled_start_time for r in runs] == [T0 + k * MINUTE for k in range(1, 41)]
    assert first.stats.created_total + second.stats.created_total >= 40


async def test_a_restarted_planner_creates_nothing_new(
    planner_client: AsyncClient, database: Database, quiet_settings: Settings
) -> None:
    client = planner_client
    flow = await register(client, unique("p"), unique("restart"), schedule=every(300))
    clock = FakeClock(T0)
    await make_planner(database, client, quiet_settings, clock).plan()
    before = {r.id for r in await auto_runs(client, flow)}
    restarted = make_planner(database, client, quiet_settings, clock)
    await restarted.plan()
    assert {r.id for r in await auto_runs(client, flow)} == before
    assert restarted.stats.created_total == restarted.stats.deleted_total == restarted.stats.skipped_total == 0


async def test_parameters_and_labels_come_from_the_clock_over_the_group_over_the_flow(
    planner_client: AsyncClient, database: Database, quiet_settings: Settings
) -> None:
    client = planner_client
    parameters = [
        ParameterSpec(name="a", default=1),
        ParameterSpec(name="b", default=1),
        ParameterSpec(name="c", default=1),
    ]
    schedule = every(60, parameter_defaults={"c": 3}, labels=["clock-label"])
    flow = await register(
        client, unique("p"), unique("params"), schedule=schedule, parameters=parameters, labels=["flow-label"]
    )
    await client.set_flow_group_default_parameters(flow.flow_group_id, {"b": 2, "c": 2})
    await make_planner(database, client, quiet_settings, FakeClock(T0)).plan()
    runs = await auto_runs(client, flow)
    assert len(runs) == 10
    assert all(r.parameters == {"a": 1, "b": 2, "c": 3} and r.labels == ["clock-label"] for r in runs)


async def test_reregistration_moves_the_waiting_runs_to_the_new_version_without_duplicates(
    planner_client: AsyncClient, database: Database, quiet_settings: Settings
) -> None:
    client = planner_client
    project, name = unique("p"), unique("versions")
    old = await register(client, project, name, schedule=every(60))
    clock = FakeClock(T0)
    planner = make_planner(database, client, quiet_settings, clock)
    await planner.plan()
    keys = {r.idempotency_key for r in await auto_runs(client, old)}

    new = await register(client, project, name, schedule=every(60))
    assert new.flow_group_id == old.flow_group_id
    assert new.version == old.version + 1
    await planner.plan([new.flow_group_id])
    runs = await auto_runs(client, new)
    assert [r.scheduled_start_time for r in runs] == [T0 + k * MINUTE for k in range(1, 11)]
    assert {r.flow_id for r in runs} == {new.id}
    assert {r.idempotency_key for r in runs} == keys


async def test_a_schedule_change_replaces_future_runs_and_leaves_ad_hoc_runs(
    planner_client: AsyncClient, database: Database, quiet_settings: Settings
) -> None:
    client = planner_client
    project, name = unique("p"), unique("edit")
    old = await register(client, project, name, schedule=every(60))
    clock = FakeClock(T0)
    planner = make_planner(database, client, quiet_settings, clock)
    await planner.plan()
    ad_hoc_id = await client.create_flow_run(old.id, scheduled_start_time=T0 + 5 * MINUTE)

    new = await register(client, project, name, schedule=every(120))
    await planner.plan([new.flow_group_id])
    assert await future_starts(client, new, T0) == [T0 + k * 2 * MINUTE for k in range(1, 11)]
    # The ad-hoc run of the archived version is cancelled by the archive, never deleted.
    kept = (await client.get_flow_run(ad_hoc_id)).run
    assert kept.auto_scheduled is False


async def test_schedule_off_deletes_future_runs_and_on_recreates_them(
    planner_client: AsyncClient, database: Database, quiet_settings: Settings
) -> None:
    client = planner_client
    flow = await register(client, unique("p"), unique("onoff"), schedule=every(60))
    clock = FakeClock(T0)
    planner = make_planner(database, client, quiet_settings, clock)
    await planner.plan()
    ad_hoc_id = await client.create_flow_run(flow.id, scheduled_start_time=T0 + 3 * MINUTE)

    await client.set_flow_schedule_state(flow.id, False)
    await planner.plan([flow.flow_group_id])
    assert await future_starts(client, flow, T0) == []
    assert (await client.get_flow_run(ad_hoc_id)).run.state.type is StateType.SCHEDULED

    await client.set_flow_schedule_state(flow.id, True)
    await planner.plan([flow.flow_group_id])
    assert await future_starts(client, flow, T0) == [T0 + k * MINUTE for k in range(1, 11)]


async def test_after_a_downtime_missed_times_are_skipped_and_reported(
    planner_client: AsyncClient, database: Database, quiet_settings: Settings
) -> None:
    client = planner_client
    flow = await register(client, unique("p"), unique("down"), schedule=every(60))
    await make_planner(database, client, quiet_settings, FakeClock(T0)).plan()

    later = T0 + timedelta(hours=1)
    restarted = make_planner(database, client, quiet_settings, FakeClock(later))
    await restarted.plan()
    starts = [r.scheduled_start_time for r in await auto_runs(client, flow)]
    assert starts == [T0 + k * MINUTE for k in range(1, 11)] + [later + k * MINUTE for k in range(1, 11)]
    assert restarted.stats.skipped_total == 50
    (skip,) = restarted.stats.recent_skips
    assert (skip.flow_id, skip.count, skip.first, skip.last) == (flow.id, 50, T0 + 11 * MINUTE, later)
    # What `flowbus get scheduler` shows of it.
    status = planner_status(restarted)
    assert (status.runs_skipped, status.schedules, status.runs_created) == (50, 1, 10)
    assert [(s.flow_id, s.count, s.first, s.last) for s in status.recent_skips] == [
        (flow.id, 50, T0 + 11 * MINUTE, later)
    ]


async def test_the_catch_up_window_creates_the_missed_runs_within_it_once(
    planner_client: AsyncClient, database: Database, quiet_settings: Settings
) -> None:
    client = planner_client
    flow = await register(client, unique("p"), unique("catchup"), schedule=every(60))
    await make_planner(database, client, quiet_settings, FakeClock(T0)).plan()

    later = T0 + timedelta(hours=1)
    window = timedelta(minutes=15).total_seconds()
    for _ in range(2):  # a second restart finds nothing more to do
        restarted = make_planner(database, client, quiet_settings, FakeClock(later), catchup_window=window)
        await restarted.plan()
    starts = [r.scheduled_start_time for r in await auto_runs(client, flow)]
    expected = [T0 + k * MINUTE for k in range(1, 11)]
    expected += [later - timedelta(minutes=15) + k * MINUTE for k in range(1, 16)]
    expected += [later + k * MINUTE for k in range(1, 11)]
    assert starts == expected
    assert restarted.stats.created_total == 0


async def test_delete_flow_run_checks_the_version_and_refuses_unknown_runs(planner_client: AsyncClient) -> None:
    client = planner_client
    flow = await register(client, unique("p"), unique("delete"))
    run = await client.create_flow_run_out(flow.id, scheduled_start_time=T0)
    with pytest.raises(VersionLockingError):
        await client.delete_flow_run(run.id, version=run.version + 1)
    assert (await client.get_flow_run(run.id)).run.id == run.id
    assert (await client.delete_flow_run(run.id, version=run.version)).id == run.id
    with pytest.raises(NotFound):
        await client.get_flow_run(run.id)
    with pytest.raises(NotFound):
        await client.delete_flow_run(run.id)


async def test_get_schedule_lists_the_next_times_with_their_parameters_and_source(
    planner_client: AsyncClient,
) -> None:
    client = planner_client
    parameters = [ParameterSpec(name="a", default=1), ParameterSpec(name="b", default=1)]
    schedule = every(3600, parameter_defaults={"b": 3}, labels=["hourly"])
    flow = await register(client, unique("p"), unique("shown"), schedule=schedule, parameters=parameters)
    await client.set_flow_group_default_parameters(flow.flow_group_id, {"a": 2})

    shown = await client.get_schedule(flow.id, count=3)
    assert (shown.active, shown.source, shown.clocks) == (True, "flow", schedule.clocks)
    assert [u.parameters for u in shown.upcoming] == [{"a": 2, "b": 3}] * 3
    assert all(u.labels == ["hourly"] for u in shown.upcoming)
    gaps = {b.start - a.start for a, b in zip(shown.upcoming, shown.upcoming[1:], strict=False)}
    assert gaps == {timedelta(hours=1)}

    await client.set_flow_group_schedule(flow.flow_group_id, every(60))
    await client.set_flow_schedule_state(flow.id, False)
    shown = await client.get_schedule(flow.id)
    assert (shown.active, shown.source, len(shown.upcoming)) == (False, "group", 10)
    assert shown.upcoming[0].parameters == {"a": 2, "b": 1}
    with pytest.raises(NotFound):
        await client.get_schedule("no-such-flow")
