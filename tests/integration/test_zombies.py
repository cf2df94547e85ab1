"""The Zombie Killer: a Running flow run whose heartbeats stop is failed
through the state service, which retries or fails its Running task runs; a
Cancelling one ends Cancelled. Heartbeats count when they arrive, whatever
their timestamp says, and after the heartbeat service starts or reconnects
no run is judged before a full threshold has passed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from flowbus import subjects
from flowbus.client import AsyncClient, ServiceUnavailable
from flowbus.runtime.service import ServiceContext, service_context
from flowbus.schemas.agents import RunHeartbeat
from flowbus.schemas.flows import RunConfigSpec, SerializedFlow, StorageSpec, TaskSpec
from flowbus.settings import HeartbeatSettings, Settings
from flowbus.states import StateType
from flowbus_services.heartbeat.main import zombie_killer_stats
from flowbus_services.heartbeat.zombies import CANCELLED_MESSAGE, FLOW_RUN_MESSAGE, TASK_RUN_MESSAGE, ZombieKillerStats
from flowbus_services.registry import SERVICE_MODULES, build_service_app
from flowbus_services.state.rules import TASK_FAILED_MESSAGE, TASK_RETRYING_MESSAGE
from flowbus_services.up import NatsServer
from tests.helpers import unique
from tests.helpers.heartbeat import backdate, heartbeat_services, tuned
from tests.helpers.runs import watch_until_finished
from tests.helpers.waiting import eventually

Tight = tuple[AsyncClient, ZombieKillerStats]
# The tight settings' zombie threshold: zombie_missed_beats x interval_seconds.
THRESHOLD = 4 * 0.25
TIGHT = {"interval_seconds": 0.25, "zombie_check_interval_seconds": 0.1, "zombie_missed_beats": 4}


@pytest.fixture
async def tight(settings: Settings) -> AsyncIterator[Tight]:
    """The services with heartbeats every 0.25 s (a zombie after 1 s of
    silence) and the killer passing every 0.1 s."""
    tight = settings.model_copy(
        update={
            "heartbeat": HeartbeatSettings(
                interval_seconds=0.25, zombie_check_interval_seconds=0.1, zombie_missed_beats=4
            )
        }
    )
    async with AsyncExitStack() as apps:
        zombies: ZombieKillerStats | None = None
        for name in SERVICE_MODULES:
            app = build_service_app(name, tight)
            await apps.enter_async_context(app)
            if name == "heartbeat":
                zombies = zombie_killer_stats(app)
        assert zombies is not None
        async with AsyncClient(tight) as client:
            yield client, zombies


async def _flow(client: AsyncClient, *, heartbeat: bool = True) -> str:
    project = unique("zombies")
    await client.create_project(project, skip_if_exists=True)
    flow = SerializedFlow(
        name=unique("zombie"),
        tasks=[TaskSpec(slug="once-1", name="once"), TaskSpec(slug="twice-1", name="twice", max_retries=1)],
        storage=StorageSpec(type="script", path="/nonexistent/flow.py"),
        run_config=RunConfigSpec(labels=None),
    )
    flow_id = (await client.register(flow, project)).id
    if not heartbeat:
        await client.disable_flow_heartbeat(flow_id)
    return flow_id


async def _running_run(client: AsyncClient, flow_id: str, *, tasks: bool = True) -> str:
    """A run walked to Running as a runner would, its task runs Running too."""
    run = await client.create_flow_run_out(flow_id, labels=[unique("nobody")])
    submitted = await client.set_flow_run_state(run.id, run.version, StateType.SUBMITTED)
    await client.set_flow_run_state(run.id, submitted.version, StateType.RUNNING)
    if tasks:
        for task_run in (await client.get_flow_run(run.id)).task_runs:
            await client.set_task_run_state(task_run.id, task_run.version, StateType.RUNNING)
    return run.id


async def test_a_silent_running_run_is_failed_and_its_task_runs_retried_or_failed(tight: Tight) -> None:
    client, zombies = tight
    run_id = await _running_run(client, await _flow(client))
    # One heartbeat, then silence: the killer goes by the heartbeat, not the start time.
    beat = RunHeartbeat(flow_run_id=run_id, timestamp=datetime.now(UTC))
    await client.nc.publish(subjects.flow_run_heartbeat(run_id), beat.model_dump_json().encode())

    watched = await watch_until_finished(client, run_id)
    states, logs = watched.states, watched.logs

    assert states[-1].state.type is StateType.FAILED
    assert states[-1].state.message == FLOW_RUN_MESSAGE
    detail = await client.get_flow_run(run_id)
    by_name = {t.task_name: t for t in detail.task_runs}
    assert by_name["once"].state.type is StateType.FAILED
    assert by_name["once"].state.message == TASK_FAILED_MESSAGE
    # Ran once with one retry allowed: it is retried.
    assert by_name["twice"].state.type is StateType.RETRYING
    assert by_name["twice"].state.message == TASK_RETRYING_MESSAGE
    errors = [(r.task_run_id, r.message) for r in logs if r.level == "ERROR"]
    assert (None, FLOW_RUN_MESSAGE) in errors
    assert (by_name["once"].id, TASK_RUN_MESSAGE) in errors
    assert (by_name["twice"].id, TASK_RUN_MESSAGE) in errors
    assert zombies.flow_runs_failed >= 1


async def test_a_task_run_out_of_retries_is_failed(tight: Tight) -> None:
    client, _ = tight
    run_id = await _running_run(client, await _flow(client))
    detail = await client.get_flow_run(run_id)
    twice = next(t for t in detail.task_runs if t.task_name == "twice")
    # Its second run: the one retry is used up.
    retrying = await client.set_task_run_state(twice.id, twice.version, StateType.RETRYING)
    await client.set_task_run_state(twice.id, retrying.version, StateType.RUNNING)

    states = (await watch_until_finished(client, run_id)).states

    assert states[-1].state.type is StateType.FAILED
    twice_now = next(t for t in (await client.get_flow_run(run_id)).task_runs if t.id == twice.id)
    assert twice_now.state.type is StateType.FAILED
    assert twice_now.state.message == TASK_FAILED_MESSAGE


async def test_a_run_with_heartbeats_disabled_is_left_running(tight: Tight) -> None:
    client, zombies = tight
    quiet = await _running_run(client, await _flow(client, heartbeat=False), tasks=False)
    enabled = await _flow(client)
    # Two zombies, one after the other, each failed by a later pass than the
    # quiet run's start: the killer saw the quiet run stale and left it alone.
    for _ in range(2):
        zombie = await _running_run(client, enabled, tasks=False)
        states = (await watch_until_finished(client, zombie)).states
        assert states[-1].state.message == FLOW_RUN_MESSAGE
    passes = zombies.passes
    assert passes >= 2
    quiet_run: Any = (await client.get_flow_run(quiet)).run
    assert quiet_run.state.type is StateType.RUNNING


async def test_a_run_started_again_is_judged_from_its_new_start(tight: Tight) -> None:
    """Its heartbeat row is the first attempt's, older than the limit: the
    killer waits for this attempt's silence to last the limit too."""
    client, _ = tight
    run_id = await _running_run(client, await _flow(client), tasks=False)
    beat = RunHeartbeat(flow_run_id=run_id, timestamp=datetime.now(UTC))
    await client.nc.publish(subjects.flow_run_heartbeat(run_id), beat.model_dump_json().encode())
    first = (await watch_until_finished(client, run_id)).states[-1]
    assert first.state.message == FLOW_RUN_MESSAGE
    # Run again: Scheduled, claimed, Running; then silence.
    rerun = await client.set_flow_run_state(run_id, first.version, StateType.SCHEDULED)
    submitted = await client.set_flow_run_state(run_id, rerun.version, StateType.SUBMITTED)
    running = await client.set_flow_run_state(run_id, submitted.version, StateType.RUNNING)

    history = await eventually(
        lambda: client.get_flow_run_history(run_id),
        "the second Failed",
        until=lambda h: [e.type for e in h].count(StateType.FAILED) == 2,
    )
    second = [h for h in history if h.type is StateType.FAILED][-1]
    silence = 4 * 0.25  # zombie_missed_beats x interval_seconds
    assert (second.timestamp - running.state.timestamp).total_seconds() >= silence


async def _beat(client: AsyncClient, run_id: str, stamped: datetime) -> None:
    beat = RunHeartbeat(flow_run_id=run_id, timestamp=stamped)
    await client.nc.publish(subjects.flow_run_heartbeat(run_id), beat.model_dump_json().encode())


async def test_a_beat_stamped_in_the_future_does_not_keep_a_run_alive(tight: Tight) -> None:
    client, _ = tight
    run_id = await _running_run(client, await _flow(client), tasks=False)
    await _beat(client, run_id, datetime.now(UTC) + timedelta(days=1))

    final = (await watch_until_finished(client, run_id)).states[-1]

    assert (final.state.type, final.state.message) == (StateType.FAILED, FLOW_RUN_MESSAGE)


async def test_beats_stamped_in_the_past_keep_a_run_alive(tight: Tight) -> None:
    """A sender's clock a minute behind: its beats still count as they arrive.
    A silent run started after it is failed meanwhile."""
    client, _ = tight
    flow_id = await _flow(client)
    beating = await _running_run(client, flow_id, tasks=False)

    async def beat() -> None:
        while True:
            await _beat(client, beating, datetime.now(UTC) - timedelta(seconds=60))
            await asyncio.sleep(0.1)  # a runner's interval, shortened

    beats = asyncio.create_task(beat())
    try:
        silent = await _running_run(client, flow_id, tasks=False)
        assert (await watch_until_finished(client, silent)).states[-1].state.message == FLOW_RUN_MESSAGE
    finally:
        beats.cancel()
        with suppress(asyncio.CancelledError):
            await beats

    assert (await client.get_flow_run(beating)).run.state.type is StateType.RUNNING


async def test_a_cancelling_run_whose_agent_is_gone_ends_cancelled(tight: Tight) -> None:
    """Nothing ends it after the cancel (no agent): with heartbeats on or off,
    it is Cancelled once it has been Cancelling and silent for the threshold."""
    client, zombies = tight
    runs = [
        await _running_run(client, await _flow(client)),
        await _running_run(client, await _flow(client, heartbeat=False)),
    ]
    for run_id in runs:
        assert (await client.cancel_flow_run(run_id)).state.type is StateType.CANCELLING

    for run_id in runs:
        watched = await watch_until_finished(client, run_id)
        final = watched.states[-1]
        assert (final.state.type, final.state.message) == (StateType.CANCELLED, CANCELLED_MESSAGE)
        assert ("WARNING", CANCELLED_MESSAGE) in [(r.level, r.message) for r in watched.logs if r.task_run_id is None]
        task_runs = (await client.get_flow_run(run_id)).task_runs
        assert {t.state.type for t in task_runs} == {StateType.CANCELLED}
    assert zombies.flow_runs_cancelled >= 2


async def _passed_in_grace(zombies: ZombieKillerStats, seen: int) -> None:
    async def in_grace() -> int:
        return zombies.passes_in_grace

    await eventually(in_grace, "a Zombie Killer pass in its grace", until=lambda n: n > seen)


async def test_after_a_start_a_silent_run_is_judged_a_full_threshold_later(settings: Settings) -> None:
    """The run was Running, its last beat an hour old, when the heartbeat
    service (re)started: the first passes leave it, the threshold after the
    start fails it."""
    async with heartbeat_services(tuned(settings, **TIGHT), heartbeat=False) as services:
        client = services.client
        run_id = await _running_run(client, await _flow(client), tasks=False)
        await backdate(services.db, run_id, 3600)
        async with build_service_app("heartbeat", services.settings) as app:
            started = service_context(app).connected_since
            assert started is not None
            await _passed_in_grace(zombie_killer_stats(app), 0)
            assert (await client.get_flow_run(run_id)).run.state.type is StateType.RUNNING

            final = (await watch_until_finished(client, run_id)).states[-1]

    assert (final.state.type, final.state.message) == (StateType.FAILED, FLOW_RUN_MESSAGE)
    assert (final.state.timestamp - started).total_seconds() >= THRESHOLD


@pytest.fixture
async def own_nats(tmp_path: Path, bus_credentials: Path) -> AsyncIterator[NatsServer]:
    """A nats-server of this test's own, to stop and start again on its port."""
    server = NatsServer(tmp_path / "jetstream", bus_credentials, log_file=tmp_path / "nats-server.log")
    server.start()
    try:
        await server.wait_ready()
        yield server
    finally:
        server.stop()


async def test_after_a_reconnect_a_silent_run_is_judged_a_full_threshold_later(
    settings: Settings, own_nats: NatsServer
) -> None:
    """NATS goes away while the run's last beat ages past the threshold; once
    the heartbeat service is connected again it waits the threshold first."""
    # A longer threshold (2 s) than the others': the loops' leases ride out the outage within it.
    on_own = tuned(settings, **{**TIGHT, "interval_seconds": 0.5}).model_copy(update={"nats_url": own_nats.url})
    async with heartbeat_services(on_own) as services:
        assert services.heartbeat is not None
        client, ctx = services.client, service_context(services.heartbeat)
        zombies = zombie_killer_stats(services.heartbeat)
        run_id = await _running_run(client, await _flow(client), tasks=False)

        own_nats.stop()
        await eventually(_since(ctx), "the heartbeat service to notice the disconnect", until=lambda s: s is None)
        await backdate(services.db, run_id, 3600)
        own_nats.start()
        await own_nats.wait_ready()
        reconnected = await eventually(_since(ctx), "the heartbeat service to reconnect")
        await _passed_in_grace(zombies, zombies.passes_in_grace)
        # The state service may not have subscribed again yet.
        run = await eventually(lambda: client.get_flow_run(run_id), "the run read", ignoring=(ServiceUnavailable,))
        assert run.run.state.type is StateType.RUNNING

        final = (await watch_until_finished(client, run_id)).states[-1]

    assert (final.state.type, final.state.message) == (StateType.FAILED, FLOW_RUN_MESSAGE)
    assert reconnected is not None
    assert (final.state.timestamp - reconnected).total_seconds() >= 2 * THRESHOLD


def _since(ctx: ServiceContext) -> Callable[[], Awaitable[datetime | None]]:
    async def since() -> datetime | None:
        return ctx.connected_since

    return since
