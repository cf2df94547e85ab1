"""State changes through the state service (services/state/transitions.py):
optimistic locking, the transition rules as the service applies them,
cascades, racing writers and batches, and events in order after commit."""

from __future__ import annotations

import asyncio

import pytest
from nats.aio.client import Client

from flowbus import subjects
from flowbus.client import AsyncClient
from flowbus.schemas.common import Conflict, ErrorCode, NotFound, VersionLockingError
from flowbus.schemas.runs import SetFlowRunState, StateSpec
from flowbus.states import StateType
from tests.helpers import register, unique
from tests.helpers.commands import send
from tests.helpers.runs import watch_until_finished

WRITERS = 16
ATTEMPTS = 8


async def test_optimistic_locking_and_transition_rules(client: AsyncClient) -> None:
    flow = await register(client, unique("p"), "f")
    run = await client.create_flow_run(flow.id)
    with pytest.raises(VersionLockingError):
        await client.set_flow_run_state(run.id, 7, StateType.SUBMITTED)
    submitted = await client.set_flow_run_state(run.id, 1, StateType.SUBMITTED, agent_id="agent-1")
    assert submitted.version == 2
    running = await client.set_flow_run_state(run.id, 2, StateType.RUNNING)
    done = await client.set_flow_run_state(run.id, running.version, StateType.SUCCESS, "ok")
    with pytest.raises(Conflict, match="already finished"):
        await client.set_flow_run_state(run.id, done.version, StateType.RUNNING)
    detail = await client.get_flow_run(run.id)
    assert detail.run.agent_id == "agent-1"
    assert detail.run.start_time is not None
    assert detail.run.end_time is not None


async def test_exactly_one_claim_wins(client: AsyncClient) -> None:
    flow = await register(client, unique("p"), "f")
    run = await client.create_flow_run(flow.id)
    results = await asyncio.gather(
        *(client.set_flow_run_state(run.id, 1, StateType.SUBMITTED, agent_id=f"a{i}") for i in range(10)),
        return_exceptions=True,
    )
    winners = [r for r in results if not isinstance(r, BaseException)]
    assert len(winners) == 1
    assert all(isinstance(r, VersionLockingError | Conflict) for r in results if isinstance(r, BaseException))


async def test_task_run_cannot_run_before_its_flow_run(client: AsyncClient) -> None:
    flow = await register(client, unique("p"), "f")
    run = await client.create_flow_run(flow.id)
    task_run = (await client.get_flow_run(run.id)).task_runs[0]
    with pytest.raises(Conflict, match="cannot run"):
        await client.set_task_run_state(task_run.id, 1, StateType.RUNNING)


async def test_cancelling_a_flow_run_cancels_its_task_runs(client: AsyncClient) -> None:
    flow = await register(client, unique("p"), "f", tasks=["a", "b"])
    run = await client.create_flow_run(flow.id)
    await client.set_flow_run_state(run.id, 1, StateType.CANCELLED, "stop")
    detail = await client.get_flow_run(run.id)
    assert {t.state.type for t in detail.task_runs} == {StateType.CANCELLED}


async def test_state_events_arrive_in_order_after_commit(client: AsyncClient) -> None:
    flow = await register(client, unique("p"), "f")
    run = await client.create_flow_run(flow.id)
    v = (await client.set_flow_run_state(run.id, 1, StateType.SUBMITTED)).version
    v = (await client.set_flow_run_state(run.id, v, StateType.RUNNING)).version
    await client.set_flow_run_state(run.id, v, StateType.FAILED, "boom")
    seen = [(s.version, s.state.type) for s in (await watch_until_finished(client, run.id)).states]
    assert seen == [
        (1, StateType.SCHEDULED),
        (2, StateType.SUBMITTED),
        (3, StateType.RUNNING),
        (4, StateType.FAILED),
    ]


async def test_racing_writers_get_one_winner_per_version_and_a_gap_free_history(client: AsyncClient) -> None:
    flow = await register(client, unique("p"), "race")
    run = await client.create_flow_run(flow.id)
    await client.set_flow_run_state(run.id, 1, StateType.SUBMITTED)
    await client.set_flow_run_state(run.id, 2, StateType.RUNNING)
    wins: list[int] = []
    losses = 0

    async def writer(n: int) -> None:
        nonlocal losses
        for attempt in range(ATTEMPTS):
            seen = (await client.get_flow_run_info(run.id)).run.version
            try:
                out = await client.set_flow_run_state(run.id, seen, StateType.RUNNING, f"writer {n} try {attempt}")
                wins.append(out.version)
            except VersionLockingError:
                losses += 1

    await asyncio.gather(*(writer(n) for n in range(WRITERS)))

    assert losses > 0, "the writers never raced; the test proves nothing"
    assert len(wins) + losses == WRITERS * ATTEMPTS
    assert sorted(wins) == list(range(4, 4 + len(wins))), "each version has exactly one winner"
    history = await client.get_flow_run_history(run.id)
    assert [e.version for e in history] == list(range(1, 4 + len(wins)))


async def test_a_batch_keeps_each_commands_outcome_apart(client: AsyncClient, nc: Client) -> None:
    """Concurrent commands share transactions; a refused one changes nothing for the others."""
    flow = await register(client, unique("p"), "batch")
    runs = [await client.create_flow_run(flow.id) for _ in range(20)]
    submitted = StateSpec(type=StateType.SUBMITTED)
    commands = []
    for i, run in enumerate(runs):
        version = 1 if i % 2 == 0 else 7  # every odd one is stale
        commands.append(SetFlowRunState(flow_run_id=run.id, version=version, state=submitted))
    commands.append(SetFlowRunState(flow_run_id="no-such-run", version=1, state=submitted))
    replies = await asyncio.gather(
        *(send(nc, subjects.State.SET_FLOW_RUN_STATE, c.model_dump_json().encode()) for c in commands)
    )

    for i, reply in enumerate(replies[:-1]):
        if i % 2 == 0:
            assert reply["ok"] is True
        else:
            error = reply["error"]
            assert isinstance(error, dict)
            assert error["code"] == ErrorCode.VERSION_LOCKING_ERROR
            assert "is at version 1" in str(error["message"])
    last = replies[-1]["error"]
    assert isinstance(last, dict)
    assert last["code"] == ErrorCode.NOT_FOUND
    for i, run in enumerate(runs):
        info = await client.get_flow_run_info(run.id)
        assert info.run.state.type is (StateType.SUBMITTED if i % 2 == 0 else StateType.SCHEDULED)
    with pytest.raises(NotFound):
        await client.get_flow_run_info("no-such-run")
