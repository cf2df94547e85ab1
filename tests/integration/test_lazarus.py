"""Lazarus: a silent Submitted or Running flow run with no active task run is
rescheduled through the state service, and failed after the limit; a run
that is still working, or whose group turned Lazarus off, is left alone."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import suppress
from datetime import UTC, datetime

import pytest

from flowbus import subjects
from flowbus.client import AsyncClient
from flowbus.runtime.service import service_context
from flowbus.schemas.agents import RunHeartbeat
from flowbus.schemas.common import Conflict, ValidationFailed
from flowbus.schemas.flows import RunConfigSpec, SerializedFlow, StorageSpec, TaskSpec
from flowbus.schemas.runs import LogBatch, LogRecord
from flowbus.settings import LazarusSettings, Settings
from flowbus.states import StateType
from flowbus_services.heartbeat.lazarus import (
    LOGGER_NAME,
    RESCHEDULED_MESSAGE,
    LazarusStats,
    failed_message,
    find_candidates,
    lazarus_pass,
    rescheduled_log_message,
    revive,
)
from flowbus_services.registry import build_service_app
from tests.helpers import unique
from tests.helpers.lazarus import Services, lazarus_services, pass_ended
from tests.helpers.runs import RunStates, watch_until_finished, watching
from tests.helpers.waiting import eventually

MAX = 2


@pytest.fixture
async def tight(settings: Settings) -> AsyncIterator[Services]:
    """The services with Lazarus passing every 0.1 s, a run stale after 1 s
    of silence, and two resurrections before it fails."""
    lazarus = LazarusSettings(interval_seconds=0.1, stale_after_seconds=1.0, max_resurrections=MAX)
    async with lazarus_services(settings, lazarus) as services:
        yield services


@pytest.fixture
async def idle(settings: Settings) -> AsyncIterator[Services]:
    """Lazarus passes once at start-up, then only when a test calls it; every
    run is stale as soon as it is written."""
    lazarus = LazarusSettings(interval_seconds=3600, stale_after_seconds=0.001, max_resurrections=MAX)
    async with lazarus_services(settings, lazarus) as services:
        yield services


async def _flow(client: AsyncClient, *, heartbeat: bool = True, lazarus: bool = True) -> str:
    project = unique("lazarus")
    await client.create_project(project, skip_if_exists=True)
    flow = SerializedFlow(
        name=unique("lazarus"),
        tasks=[TaskSpec(slug="once-1", name="once"), TaskSpec(slug="twice-1", name="twice", max_retries=1)],
        storage=StorageSpec(type="script", path="/nonexistent/flow.py"),
        run_config=RunConfigSpec(labels=None),
    )
    flow_id = (await client.register(flow, project)).id
    if not heartbeat or not lazarus:
        await client.set_flow_settings(flow_id, heartbeat_enabled=heartbeat, lazarus_enabled=lazarus)
    return flow_id


async def _submitted(client: AsyncClient, flow_id: str) -> str:
    """A run claimed as an agent would, by an agent that then vanished (no agent has its label)."""
    run = await client.create_flow_run_out(flow_id, labels=[unique("nobody")])
    await client.set_flow_run_state(run.id, run.version, StateType.SUBMITTED)
    return run.id


async def _running(client: AsyncClient, flow_id: str, task_states: tuple[StateType, ...] = ()) -> str:
    """A run walked to Running as a runner would; its "once" task run walked through ``task_states``."""
    run = await client.create_flow_run_out(flow_id, labels=[unique("nobody")])
    submitted = await client.set_flow_run_state(run.id, run.version, StateType.SUBMITTED)
    await client.set_flow_run_state(run.id, submitted.version, StateType.RUNNING)
    once = next(t for t in (await client.get_flow_run(run.id)).task_runs if t.task_name == "once")
    version = once.version
    for state in task_states:
        version = (await client.set_task_run_state(once.id, version, state)).version
    return run.id


async def _lazarus_logs(client: AsyncClient, run_id: str, count: int) -> list[LogRecord]:
    async def probe() -> list[LogRecord]:
        return [r for r in await client.get_flow_run_logs(run_id) if r.name == LOGGER_NAME]

    return await eventually(probe, f"{count} Lazarus log records of {run_id}", until=lambda logs: len(logs) >= count)


def _rescheduled(states: RunStates, run_id: str, times: int) -> bool:
    # The first Scheduled is the run's creation.
    return states.seen.get(run_id, []).count(StateType.SCHEDULED) > times


async def test_a_stale_submitted_run_is_rescheduled_and_can_be_claimed_again(tight: Services) -> None:
    client = tight.client
    async with watching(client) as states:
        run_id = await _submitted(client, await _flow(client))
        await states.until(lambda: _rescheduled(states, run_id, 1))

    run = (await client.get_flow_run(run_id)).run
    assert run.state.type is StateType.SCHEDULED
    assert run.state.message == RESCHEDULED_MESSAGE
    assert run.times_resurrected == 1
    history = await client.get_flow_run_history(run_id)
    assert [(h.type, h.message) for h in history][-2:] == [
        (StateType.SUBMITTED, None),
        (StateType.SCHEDULED, RESCHEDULED_MESSAGE),
    ]
    (record,) = await _lazarus_logs(client, run_id, 1)
    assert (record.level, record.message) == ("INFO", rescheduled_log_message(1))
    # Released: an agent's claim at the new version goes through.
    claimed = await client.set_flow_run_state(run_id, run.version, StateType.SUBMITTED)
    assert claimed.state.type is StateType.SUBMITTED
    assert tight.stats.flow_runs_rescheduled >= 1


async def test_a_run_rescheduled_max_times_is_failed(tight: Services) -> None:
    client = tight.client
    async with watching(client) as states:
        run_id = await _submitted(client, await _flow(client))
        for attempt in range(1, MAX + 1):
            await states.until(lambda: _rescheduled(states, run_id, attempt))  # noqa: B023 (awaited at once)
            run = (await client.get_flow_run(run_id)).run
            assert run.times_resurrected == attempt
            # Claimed again, and its agent vanishes again.
            await client.set_flow_run_state(run_id, run.version, StateType.SUBMITTED)
        watched = await watch_until_finished(client, run_id)

    assert watched.states[-1].state.type is StateType.FAILED
    assert watched.states[-1].state.message == failed_message(MAX)
    assert "2 times" in failed_message(MAX)
    assert (await client.get_flow_run(run_id)).run.times_resurrected == MAX
    records = await _lazarus_logs(client, run_id, MAX + 1)
    assert [(r.level, r.message) for r in records] == [
        ("INFO", rescheduled_log_message(1)),
        ("INFO", rescheduled_log_message(2)),
        ("ERROR", failed_message(MAX)),
    ]
    assert tight.stats.flow_runs_failed >= 1


async def test_runs_lazarus_may_not_touch_are_left_alone(tight: Services) -> None:
    """Lazarus off for the group; a Running run of a group without heartbeats
    (nothing says it is dead). A Submitted run of that group, written last, is
    rescheduled: the pass that did it saw the others stale too."""
    client = tight.client
    off = await _submitted(client, await _flow(client, lazarus=False))
    quiet_flow = await _flow(client, heartbeat=False)
    quiet_running = await _running(client, quiet_flow)
    async with watching(client) as states:
        control = await _submitted(client, quiet_flow)
        await states.until(lambda: _rescheduled(states, control, 1))
        await pass_ended(tight.stats)

    for run_id, state in ((off, StateType.SUBMITTED), (quiet_running, StateType.RUNNING)):
        run = (await client.get_flow_run(run_id)).run
        assert (run.state.type, run.times_resurrected) == (state, 0)
        assert run_id not in states.seen


async def test_a_run_still_working_is_left_alone(tight: Services) -> None:
    """Heartbeats arriving; a task run Running; a task run waiting to retry.
    A silent run written last is rescheduled meanwhile."""
    client = tight.client
    flow_id = await _flow(client)
    beating = await _running(client, flow_id)
    task_running = await _running(client, flow_id, (StateType.RUNNING,))
    retrying = await _running(client, flow_id, (StateType.RUNNING, StateType.RETRYING))

    async def beat() -> None:
        while True:
            message = RunHeartbeat(flow_run_id=beating, timestamp=datetime.now(UTC))
            await client.nc.publish(subjects.flow_run_heartbeat(beating), message.model_dump_json().encode())
            await asyncio.sleep(0.1)  # a runner's interval, shortened

    beats = asyncio.create_task(beat())
    try:
        async with watching(client) as states:
            control = await _running(client, flow_id)
            await states.until(lambda: _rescheduled(states, control, 1))
            await pass_ended(tight.stats)
    finally:
        beats.cancel()
        with suppress(asyncio.CancelledError):
            await beats

    for run_id in (beating, task_running, retrying):
        run = (await client.get_flow_run(run_id)).run
        assert (run.state.type, run.times_resurrected) == (StateType.RUNNING, 0)


async def test_a_rescheduled_running_run_starts_its_task_runs_over(tight: Services) -> None:
    client = tight.client
    async with watching(client) as states:
        run_id = await _running(client, await _flow(client), (StateType.RUNNING, StateType.SUCCESS))
        await states.until(lambda: _rescheduled(states, run_id, 1))

    detail = await client.get_flow_run(run_id)
    by_name = {t.task_name: t for t in detail.task_runs}
    # The finished task run would refuse the next attempt's Running: it is Scheduled again.
    assert (by_name["once"].state.type, by_name["once"].state.message) == (StateType.SCHEDULED, RESCHEDULED_MESSAGE)
    assert by_name["twice"].state.type is StateType.PENDING
    # The next attempt runs it.
    submitted = await client.set_flow_run_state(run_id, detail.run.version, StateType.SUBMITTED)
    await client.set_flow_run_state(run_id, submitted.version, StateType.RUNNING)
    once = by_name["once"]
    assert (await client.set_task_run_state(once.id, once.version, StateType.RUNNING)).state.type is StateType.RUNNING


async def test_the_state_service_refuses_a_resurrection_it_must_not_make(idle: Services) -> None:
    client = idle.client
    flow_id = await _flow(client)
    working = await _running(client, flow_id, (StateType.RUNNING,))
    version = (await client.get_flow_run(working)).run.version
    with pytest.raises(Conflict, match="active task run"):
        await client.set_flow_run_state(working, version, StateType.SCHEDULED, resurrect=True)
    scheduled = await client.create_flow_run_out(flow_id, labels=[unique("nobody")])
    with pytest.raises(Conflict, match="only a Submitted or Running run"):
        await client.set_flow_run_state(scheduled.id, scheduled.version, StateType.SCHEDULED, resurrect=True)
    with pytest.raises(ValidationFailed, match="a resurrection sets Scheduled"):
        await client.set_flow_run_state(working, version, StateType.FAILED, resurrect=True)
    assert (await client.get_flow_run(working)).run.times_resurrected == 0


async def test_two_instances_reschedule_a_run_once(idle: Services) -> None:
    client = idle.client
    second = build_service_app("heartbeat", idle.settings)
    async with second:
        one, two = service_context(idle.heartbeat), service_context(second)
        run_id = await _submitted(client, await _flow(client))
        # Both read the run at the same version; the second proposal loses on it.
        seen_one, seen_two = await find_candidates(one), await find_candidates(two)
        assert run_id in {c.flow_run_id for c in seen_one} & {c.flow_run_id for c in seen_two}
        stats_one, stats_two = LazarusStats(), LazarusStats()
        await revive(one, stats_one, [c for c in seen_one if c.flow_run_id == run_id])
        await revive(two, stats_two, [c for c in seen_two if c.flow_run_id == run_id])
        assert (stats_one.flow_runs_rescheduled, stats_two.flow_runs_rescheduled) == (1, 0)

        # Two whole passes at once (the first run is Scheduled now): one rescheduling between them.
        other = await _submitted(client, await _flow(client))
        passes = (LazarusStats(), LazarusStats())
        await asyncio.gather(lazarus_pass(one, passes[0]), lazarus_pass(two, passes[1]))
        assert sum(s.flow_runs_rescheduled for s in passes) == 1

    for rescheduled in (run_id, other):
        run = (await client.get_flow_run(rescheduled)).run
        assert (run.state.type, run.times_resurrected) == (StateType.SCHEDULED, 1)
        history = await client.get_flow_run_history(rescheduled)
        assert [h.message for h in history].count(RESCHEDULED_MESSAGE) == 1
    # The second instance's log had the first one's message id: JetStream kept one.
    # A later record, stored after it, shows the log writer has seen both.
    marker = LogRecord(flow_run_id=run_id, timestamp=datetime.now(UTC), name="test", level="INFO", message="marker")
    await client.nc.jetstream().publish(subjects.logs(run_id), LogBatch(records=[marker]).model_dump_json().encode())
    await eventually(lambda: client.get_flow_run_logs(run_id), "the marker", until=lambda r: r and r[-1].name == "test")
    assert len(await _lazarus_logs(client, run_id, 1)) == 1
