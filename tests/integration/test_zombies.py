"""The Zombie Killer: a Running flow run whose heartbeats stop is failed
through the state service, which retries or fails its Running task runs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from typing import Any

import pytest

from flowbus import subjects
from flowbus.client import AsyncClient
from flowbus.schemas.agents import RunHeartbeat
from flowbus.schemas.flows import RunConfigSpec, SerializedFlow, StorageSpec, TaskSpec
from flowbus.settings import HeartbeatSettings, Settings
from flowbus.states import StateType
from flowbus_services.heartbeat.main import zombie_killer_stats
from flowbus_services.heartbeat.zombies import FLOW_RUN_MESSAGE, TASK_RUN_MESSAGE, ZombieKillerStats
from flowbus_services.registry import SERVICE_MODULES, build_service_app
from flowbus_services.state.rules import TASK_FAILED_MESSAGE, TASK_RETRYING_MESSAGE
from tests.helpers import unique
from tests.helpers.runs import watch_until_finished
from tests.helpers.waiting import eventually

Tight = tuple[AsyncClient, ZombieKillerStats]


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
