"""Late runs: still Scheduled ``scheduler.late_after`` past their start time.
Flagged in run queries, filtered on, counted in the scheduler's status; their
state stays Scheduled. No agent runs here, so due runs are never taken."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta

import pytest

from flowbus.client import AsyncClient
from flowbus.settings import SchedulerSettings, Settings
from flowbus.states import StateType
from flowbus_services.registry import SERVICE_MODULES, build_service_app
from tests.helpers import register, unique


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[AsyncClient]:
    """The five services, late ten minutes after a run's start time (given as users type it)."""
    scheduler = SchedulerSettings.model_validate({**settings.scheduler.model_dump(), "late_after": "10m"})
    late_settings = settings.model_copy(update={"scheduler": scheduler})
    async with AsyncExitStack() as apps:
        for name in SERVICE_MODULES:
            await apps.enter_async_context(build_service_app(name, late_settings))
        async with AsyncClient(late_settings) as c:
            yield c


def at(minutes: float) -> datetime:
    return datetime.now(UTC) + timedelta(minutes=minutes)


async def test_a_run_waiting_past_late_after_is_late_and_stays_scheduled(client: AsyncClient) -> None:
    flow = await register(client, unique("p"), "f")
    late_id = await client.create_flow_run(flow.id, scheduled_start_time=at(-60))
    waiting = await client.create_flow_run_out(flow.id, scheduled_start_time=at(-1))  # due, within late_after
    future = await client.create_flow_run_out(flow.id, scheduled_start_time=at(60))
    cancelled = await client.create_flow_run_out(flow.id, scheduled_start_time=at(-120))
    await client.cancel_flow_run(cancelled.id)

    detail = (await client.get_flow_run(late_id)).run
    assert detail.late
    assert detail.state.type is StateType.SCHEDULED
    assert not any([(await client.get_flow_run(r.id)).run.late for r in (waiting, future, cancelled)])

    listed = {r.id: r.late for r in await client.get_flow_runs(flow_id=flow.id)}
    assert listed == {late_id: True, waiting.id: False, future.id: False, cancelled.id: False}
    assert [r.id for r in await client.get_flow_runs(flow_id=flow.id, late=True)] == [late_id]
    not_late = await client.get_flow_runs(flow_id=flow.id, late=False)
    assert [r.id for r in not_late] == [future.id, waiting.id, cancelled.id]
    assert await client.get_flow_runs(flow_id=flow.id, late=True, states=[StateType.CANCELLED]) == []

    assert (await client.get_scheduler_status()).late_runs == 1


async def test_the_scheduler_counts_every_late_run_and_none_once_taken_care_of(client: AsyncClient) -> None:
    assert (await client.get_scheduler_status()).late_runs == 0
    flow = await register(client, unique("p"), "f")
    runs = [await client.create_flow_run_out(flow.id, scheduled_start_time=at(-30 - n)) for n in range(3)]
    assert (await client.get_scheduler_status()).late_runs == 3
    await client.cancel_flow_run(runs[0].id)
    await client.set_flow_run_state(runs[1].id, 1, StateType.SUBMITTED)
    assert (await client.get_scheduler_status()).late_runs == 1
    assert [r.id for r in await client.get_flow_runs(late=True)] == [runs[2].id]
