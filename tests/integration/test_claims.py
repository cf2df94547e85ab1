"""Stuck claims: a flow run still Submitted after the timeout (its agent
claimed it, then died or gave up before the flow's process set Running) goes
back to Scheduled through the state service and is offered to agents again
on its run queue, under its new version; after the resurrection limit it is
failed; a claim whose run started meanwhile is left alone."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.js.errors import NotFoundError

from flowbus import subjects
from flowbus.client import AsyncClient
from flowbus.runtime.service import service_context
from flowbus.schemas.runs import LogRecord, RunQueued
from flowbus.settings import Settings
from flowbus.states import StateType
from flowbus_services.heartbeat.claims import (
    LOGGER_NAME,
    StuckClaimStats,
    failed_message,
    find_stuck_claims,
    requeue,
    requeued_message,
)
from flowbus_services.heartbeat.main import stuck_claims_stats
from tests.helpers import unique
from tests.helpers.heartbeat import Services, heartbeat_services, tuned
from tests.helpers.runs import RunStates, watching
from tests.helpers.scripts import register_greeting_flow
from tests.helpers.waiting import eventually

TIMEOUT = 0.5


def _with_one_resurrection(settings: Settings) -> Settings:
    return settings.model_copy(update={"lazarus": settings.lazarus.model_copy(update={"max_resurrections": 1})})


@pytest.fixture
async def tight(settings: Settings) -> AsyncIterator[Services]:
    """A claim is stuck after 0.5 s, checked every 0.1 s; one requeue before a
    run is failed. Lazarus keeps its defaults: it acts after 10 minutes."""
    tight = tuned(settings, submitted_timeout_seconds=TIMEOUT, zombie_check_interval_seconds=0.1)
    async with heartbeat_services(_with_one_resurrection(tight)) as services:
        yield services


@pytest.fixture
async def idle(settings: Settings) -> AsyncIterator[Services]:
    """One pass at start-up, then only when a test calls it; every claim is stuck once written."""
    idle = tuned(settings, submitted_timeout_seconds=0.001, zombie_check_interval_seconds=3600)
    async with heartbeat_services(idle) as services:
        yield services


async def _claimed(client: AsyncClient, flow_id: str, labels: list[str]) -> str:
    """A run claimed as an agent would, by an agent that then vanished (no agent has the labels)."""
    run = await client.create_flow_run_out(flow_id, labels=labels)
    await client.set_flow_run_state(run.id, run.version, StateType.SUBMITTED)
    return run.id


def _requeued(states: RunStates, run_id: str) -> bool:
    # The first Scheduled is the run's creation.
    return states.seen.get(run_id, []).count(StateType.SCHEDULED) >= 2


async def _logs(client: AsyncClient, run_id: str, count: int) -> list[LogRecord]:
    async def probe() -> list[LogRecord]:
        return [r for r in await client.get_flow_run_logs(run_id) if r.name == LOGGER_NAME]

    return await eventually(probe, f"{count} stuck-claim log records", until=lambda logs: len(logs) >= count)


async def _offered(nc: Client, labels: list[str], version: int) -> RunQueued:
    """The newest offer on the run queue of ``labels`` once it is at ``version``: what agents with them fetch."""
    js = nc.jetstream()

    async def newest() -> RunQueued:
        msg = await js.get_last_msg(subjects.RUNQ_STREAM, subjects.run_queue(labels))
        return RunQueued.model_validate_json(msg.data or b"")

    return await eventually(
        newest, f"an offer at version {version}", until=lambda o: o.version == version, ignoring=(NotFoundError,)
    )


async def test_a_stuck_claim_is_requeued_and_offered_to_agents_again(
    tight: Services, nc: Client, tmp_path: Path
) -> None:
    client = tight.client
    flow_id = await register_greeting_flow(client, tmp_path)
    labels = [unique("gone")]
    async with watching(client) as states:
        run_id = await _claimed(client, flow_id, labels)
        await states.until(lambda: _requeued(states, run_id))

    run = (await client.get_flow_run(run_id)).run
    assert (run.state.type, run.state.message, run.times_resurrected) == (
        StateType.SCHEDULED,
        requeued_message(TIMEOUT),
        1,
    )
    history = await client.get_flow_run_history(run_id)
    assert [h.type for h in history] == [StateType.SCHEDULED, StateType.SUBMITTED, StateType.SCHEDULED]
    (record,) = await _logs(client, run_id, 1)
    assert (record.level, record.message) == ("INFO", requeued_message(TIMEOUT))
    # Offered again under its new version, which an agent's claim takes.
    assert (await _offered(nc, labels, run.version)).flow_run_id == run_id
    claimed = await client.set_flow_run_state(run_id, run.version, StateType.SUBMITTED)
    assert claimed.state.type is StateType.SUBMITTED
    assert tight.heartbeat is not None
    assert stuck_claims_stats(tight.heartbeat).flow_runs_requeued >= 1


async def test_a_claim_stuck_again_past_the_limit_is_failed(tight: Services, tmp_path: Path) -> None:
    client = tight.client
    flow_id = await register_greeting_flow(client, tmp_path)
    async with watching(client) as states:
        run_id = await _claimed(client, flow_id, [unique("gone")])
        await states.until(lambda: _requeued(states, run_id))
        version = (await client.get_flow_run(run_id)).run.version
        # Claimed again, and that agent vanishes too.
        await client.set_flow_run_state(run_id, version, StateType.SUBMITTED)
        await states.finished([run_id])

    run = (await client.get_flow_run(run_id)).run
    assert (run.state.type, run.state.message) == (StateType.FAILED, failed_message(TIMEOUT, 1))
    records = await _logs(client, run_id, 2)
    assert [(r.level, r.message) for r in records] == [
        ("INFO", requeued_message(TIMEOUT)),
        ("ERROR", failed_message(TIMEOUT, 1)),
    ]


async def test_a_claim_whose_run_started_meanwhile_is_left_alone(idle: Services, tmp_path: Path) -> None:
    """Read as stuck, then the late runner sets Running: the requeue is refused."""
    client = idle.client
    assert idle.heartbeat is not None
    ctx = service_context(idle.heartbeat)
    run_id = await _claimed(client, await register_greeting_flow(client, tmp_path), [unique("slow")])
    stuck = [c for c in await find_stuck_claims(ctx) if c.flow_run_id == run_id]
    assert len(stuck) == 1
    await client.set_flow_run_state(run_id, stuck[0].version, StateType.RUNNING)

    stats = StuckClaimStats()
    assert await requeue(ctx, stats, stuck) == 0

    run = (await client.get_flow_run(run_id)).run
    assert (run.state.type, run.times_resurrected) == (StateType.RUNNING, 0)
    assert [c for c in await find_stuck_claims(ctx) if c.flow_run_id == run_id] == []
