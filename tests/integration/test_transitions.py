"""State changes through the state service (services/state/transitions.py):
optimistic locking and writes at no version, the transition rules as the
service applies them, cascades, racing writers and batches, and events in
order after commit."""

from __future__ import annotations

import asyncio

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from flowbus import subjects
from flowbus.client import AsyncClient
from flowbus.db.engine import Database
from flowbus.runtime.outbox import OutboxRelay
from flowbus.schemas.common import Conflict, ErrorCode, NotFound, VersionLockingError
from flowbus.schemas.flows import RunConfigSpec, SerializedFlow, StorageSpec, TaskSpec
from flowbus.schemas.runs import SetFlowRunState, SetTaskRunState, StateChanged, StateSet, StateSpec, TaskRunOut
from flowbus.settings import Settings
from flowbus.states import StateType
from flowbus_services.state.transitions import apply_transitions
from tests.helpers import register, unique
from tests.helpers.commands import send
from tests.helpers.runs import watch_until_finished

WRITERS = 16
ATTEMPTS = 8


async def test_optimistic_locking_and_transition_rules(client: AsyncClient) -> None:
    flow = await register(client, unique("p"), "f")
    run_id = await client.create_flow_run(flow.id)
    with pytest.raises(VersionLockingError):
        await client.set_flow_run_state(run_id, 7, StateType.SUBMITTED)
    submitted = await client.set_flow_run_state(run_id, 1, StateType.SUBMITTED, agent_id="agent-1")
    assert submitted.version == 2
    running = await client.set_flow_run_state(run_id, 2, StateType.RUNNING)
    done = await client.set_flow_run_state(run_id, running.version, StateType.SUCCESS, "ok")
    with pytest.raises(Conflict, match="already finished"):
        await client.set_flow_run_state(run_id, done.version, StateType.RUNNING)
    detail = await client.get_flow_run(run_id)
    assert detail.run.agent_id == "agent-1"
    assert detail.run.start_time is not None
    assert detail.run.end_time is not None


async def test_a_failed_task_run_retries_but_a_failed_flow_run_does_not(client: AsyncClient) -> None:
    """Prefect 1.x's runner retries a task by setting Failed, then Retrying."""
    run_id, version, tasks = await _running_with_tasks(
        client, TaskSpec(slug="flaky-1", name="flaky", max_retries=1), TaskSpec(slug="steady-1", name="steady")
    )
    await _walk(
        client,
        tasks["flaky"],
        StateType.RUNNING,
        StateType.FAILED,
        StateType.RETRYING,
        StateType.RUNNING,
        StateType.SUCCESS,
    )
    flaky = next(t for t in (await client.get_flow_run(run_id)).task_runs if t.task_name == "flaky")
    assert (flaky.state.type, flaky.version) == (StateType.SUCCESS, tasks["flaky"].version + 5)
    history = await client.get_flow_run_history(run_id, include_task_runs=True)
    assert [e.type for e in history if e.task_run_id == flaky.id] == [
        StateType.RUNNING,
        StateType.FAILED,
        StateType.RETRYING,
        StateType.RUNNING,
        StateType.SUCCESS,
    ]
    # Only from a failed state: a finished one stays finished.
    with pytest.raises(Conflict, match="already finished"):
        await client.set_task_run_state(flaky.id, flaky.version, StateType.RETRYING)
    steady = tasks["steady"]
    await _walk(client, steady, StateType.RUNNING, StateType.TIMED_OUT, StateType.RETRYING)

    failed = (await client.set_flow_run_state(run_id, version, StateType.FAILED, "boom")).version
    with pytest.raises(Conflict, match=r"is already finished \(Failed\); it cannot enter Retrying"):
        await client.set_flow_run_state(run_id, failed, StateType.RETRYING)
    assert (await client.get_flow_run(run_id)).run.state.type is StateType.FAILED


async def test_a_state_set_at_no_version_applies_at_the_current_one(client: AsyncClient) -> None:
    """Prefect 1.x's client sends no version for most states."""
    flow = await register(client, unique("p"), "f", tasks=["a"])
    run = await client.create_flow_run_out(flow.id)
    task_run = (await client.get_flow_run(run.id)).task_runs[0]

    assert (await client.set_flow_run_state(run.id, None, StateType.SUBMITTED, agent_id="agent-1")).version == 2
    assert (await client.set_flow_run_state(run.id, None, StateType.RUNNING)).version == 3
    assert (await client.set_task_run_state(task_run.id, None, StateType.RUNNING)).version == 2
    # Writers at once: each applies, one after the other.
    outs = await asyncio.gather(
        *(client.set_task_run_state(task_run.id, None, StateType.RUNNING, f"writer {n}") for n in range(WRITERS))
    )
    assert sorted(o.version for o in outs) == list(range(3, 3 + WRITERS))
    detail = await client.get_flow_run(run.id)
    assert (detail.run.version, detail.run.agent_id, detail.task_runs[0].version) == (3, "agent-1", 2 + WRITERS)

    # The rules hold as for a versioned write.
    with pytest.raises(Conflict, match="already claimed"):
        await client.set_flow_run_state(run.id, None, StateType.SUBMITTED)
    done = await client.set_flow_run_state(run.id, None, StateType.SUCCESS)
    with pytest.raises(Conflict, match="already finished"):
        await client.set_flow_run_state(run.id, None, StateType.RUNNING)
    with pytest.raises(NotFound):
        await client.set_flow_run_state("no-such-run", None, StateType.RUNNING)
    with pytest.raises(NotFound):
        await client.set_task_run_state("no-such-task-run", None, StateType.RUNNING)
    assert (await client.get_flow_run(run.id)).run.version == done.version


async def test_exactly_one_claim_wins(client: AsyncClient) -> None:
    flow = await register(client, unique("p"), "f")
    run_id = await client.create_flow_run(flow.id)
    results = await asyncio.gather(
        *(client.set_flow_run_state(run_id, 1, StateType.SUBMITTED, agent_id=f"a{i}") for i in range(10)),
        return_exceptions=True,
    )
    winners = [r for r in results if not isinstance(r, BaseException)]
    assert len(winners) == 1
    assert all(isinstance(r, VersionLockingError | Conflict) for r in results if isinstance(r, BaseException))


async def test_task_run_cannot_run_before_its_flow_run(client: AsyncClient) -> None:
    flow = await register(client, unique("p"), "f")
    run_id = await client.create_flow_run(flow.id)
    task_run = (await client.get_flow_run(run_id)).task_runs[0]
    with pytest.raises(Conflict, match="cannot run"):
        await client.set_task_run_state(task_run.id, 1, StateType.RUNNING)


async def test_cancelling_a_flow_run_cancels_its_task_runs(client: AsyncClient) -> None:
    flow = await register(client, unique("p"), "f", tasks=["a", "b"])
    run_id = await client.create_flow_run(flow.id)
    await client.set_flow_run_state(run_id, 1, StateType.CANCELLED, "stop")
    detail = await client.get_flow_run(run_id)
    assert {t.state.type for t in detail.task_runs} == {StateType.CANCELLED}


async def _running_with_tasks(client: AsyncClient, *tasks: TaskSpec) -> tuple[str, int, dict[str, TaskRunOut]]:
    """A flow run walked to Running, its task runs by name."""
    project = unique("p")
    await client.create_project(project, skip_if_exists=True)
    flow = SerializedFlow(
        name=unique("f"),
        tasks=list(tasks),
        storage=StorageSpec(type="script", path="/nonexistent/flow.py"),
        run_config=RunConfigSpec(labels=None),
    )
    run = await client.create_flow_run_out((await client.register(flow, project)).id)
    version = (await client.set_flow_run_state(run.id, run.version, StateType.SUBMITTED)).version
    version = (await client.set_flow_run_state(run.id, version, StateType.RUNNING)).version
    return run.id, version, {t.task_name: t for t in (await client.get_flow_run(run.id)).task_runs}


async def _walk(client: AsyncClient, task_run: TaskRunOut, *states: StateType) -> None:
    version = task_run.version
    for state in states:
        version = (await client.set_task_run_state(task_run.id, version, state)).version


async def test_a_failed_flow_run_retries_or_fails_its_running_task_runs(client: AsyncClient, nc: Client) -> None:
    run_id, version, tasks = await _running_with_tasks(
        client,
        TaskSpec(slug="once-1", name="once"),
        TaskSpec(slug="twice-1", name="twice", max_retries=1),
        TaskSpec(slug="done-1", name="done", max_retries=1),
        TaskSpec(slug="waiting-1", name="waiting"),
    )
    await _walk(client, tasks["once"], StateType.RUNNING)
    await _walk(client, tasks["twice"], StateType.RUNNING)
    await _walk(client, tasks["done"], StateType.RUNNING, StateType.SUCCESS)
    events: asyncio.Queue[StateChanged] = asyncio.Queue()

    async def on_task_state(msg: Msg) -> None:
        events.put_nowait(StateChanged.model_validate_json(msg.data))

    sub = await nc.subscribe(subjects.flow_run_event(run_id, "task_state"), cb=on_task_state)
    try:
        await client.set_flow_run_state(run_id, version, StateType.FAILED, "boom")
        async with asyncio.timeout(30):
            seen = {(e := await events.get()).task_run_id: e for _ in range(2)}
    finally:
        await sub.unsubscribe()

    detail = await client.get_flow_run(run_id)
    now = {t.task_name: t for t in detail.task_runs}
    # Ran once with no retry allowed: failed. Ran once with one retry allowed: retried.
    assert (now["once"].state.type, now["once"].state.message) == (StateType.FAILED, "Flow run failed.")
    assert now["twice"].state.type is StateType.RETRYING
    assert now["twice"].state.message == "Flow run failed; the task run has retries left."
    # Finished or never started: untouched.
    assert now["done"].state.type is StateType.SUCCESS
    assert now["waiting"].state.type is StateType.PENDING
    # Events and history, as for any change.
    assert {k: (e.previous, e.state.type, e.version) for k, e in seen.items()} == {
        now["once"].id: (StateType.RUNNING, StateType.FAILED, now["once"].version),
        now["twice"].id: (StateType.RUNNING, StateType.RETRYING, now["twice"].version),
    }
    history = await client.get_flow_run_history(run_id, include_task_runs=True)
    last = {e.task_run_id: (e.type, e.version) for e in history}
    assert last[now["once"].id] == (StateType.FAILED, now["once"].version)
    assert last[now["twice"].id] == (StateType.RETRYING, now["twice"].version)
    assert last[now["done"].id] == (StateType.SUCCESS, now["done"].version)


async def test_failed_counts_a_task_runs_earlier_runs_against_its_retries(client: AsyncClient) -> None:
    run_id, version, tasks = await _running_with_tasks(
        client,
        TaskSpec(slug="second-1", name="second", max_retries=1),
        TaskSpec(slug="retrying-1", name="retrying", max_retries=1),
        TaskSpec(slug="spent-1", name="spent", max_retries=1),
    )
    # Its second run: the one retry is used.
    await _walk(client, tasks["second"], StateType.RUNNING, StateType.RETRYING, StateType.RUNNING)
    # Waiting for the retry it still has, or for one it does not have.
    await _walk(client, tasks["retrying"], StateType.RUNNING, StateType.RETRYING)
    await _walk(client, tasks["spent"], StateType.RUNNING, StateType.RETRYING, StateType.RUNNING, StateType.RETRYING)

    await client.set_flow_run_state(run_id, version, StateType.FAILED, "boom")

    now = {t.task_name: t for t in (await client.get_flow_run(run_id)).task_runs}
    assert now["second"].state.type is StateType.FAILED
    assert now["retrying"].state.type is StateType.RETRYING
    assert now["retrying"].version == tasks["retrying"].version + 2  # not written again
    assert now["spent"].state.type is StateType.FAILED


async def test_failed_counts_a_run_started_earlier_in_the_same_batch(stack: Settings, client: AsyncClient) -> None:
    run_id, version, tasks = await _running_with_tasks(client, TaskSpec(slug="once-1", name="once"))
    once = tasks["once"]
    db = Database(stack.resolved_database_url())
    # Its events stay in the outbox: the running state service's sweep publishes them.
    OutboxRelay(subjects.Service.STATE, db)
    try:
        # One batch: the task run's first run, then the flow run's Failed. Its
        # Running entry is not in the table yet when the cascade counts its runs.
        outcomes = await apply_transitions(
            db,
            [
                SetTaskRunState(task_run_id=once.id, version=once.version, state=StateSpec(type=StateType.RUNNING)),
                SetFlowRunState(flow_run_id=run_id, version=version, state=StateSpec(type=StateType.FAILED)),
            ],
        )
    finally:
        await db.dispose()
    assert [o.state.type for o in outcomes if isinstance(o, StateSet)] == [StateType.RUNNING, StateType.FAILED]
    now = (await client.get_flow_run(run_id)).task_runs[0]
    assert (now.state.type, now.version) == (StateType.FAILED, once.version + 2)


async def test_state_events_arrive_in_order_after_commit(client: AsyncClient) -> None:
    flow = await register(client, unique("p"), "f")
    run_id = await client.create_flow_run(flow.id)
    v = (await client.set_flow_run_state(run_id, 1, StateType.SUBMITTED)).version
    v = (await client.set_flow_run_state(run_id, v, StateType.RUNNING)).version
    await client.set_flow_run_state(run_id, v, StateType.FAILED, "boom")
    seen = [(s.version, s.state.type) for s in (await watch_until_finished(client, run_id)).states]
    assert seen == [
        (1, StateType.SCHEDULED),
        (2, StateType.SUBMITTED),
        (3, StateType.RUNNING),
        (4, StateType.FAILED),
    ]


async def test_racing_writers_get_one_winner_per_version_and_a_gap_free_history(client: AsyncClient) -> None:
    flow = await register(client, unique("p"), "race")
    run_id = await client.create_flow_run(flow.id)
    await client.set_flow_run_state(run_id, 1, StateType.SUBMITTED)
    await client.set_flow_run_state(run_id, 2, StateType.RUNNING)
    wins: list[int] = []
    losses = 0

    async def writer(n: int) -> None:
        nonlocal losses
        for attempt in range(ATTEMPTS):
            seen = (await client.get_flow_run_info(run_id)).version
            try:
                out = await client.set_flow_run_state(run_id, seen, StateType.RUNNING, f"writer {n} try {attempt}")
                wins.append(out.version)
            except VersionLockingError:
                losses += 1

    await asyncio.gather(*(writer(n) for n in range(WRITERS)))

    assert losses > 0, "the writers never raced; the test proves nothing"
    assert len(wins) + losses == WRITERS * ATTEMPTS
    assert sorted(wins) == list(range(4, 4 + len(wins))), "each version has exactly one winner"
    history = await client.get_flow_run_history(run_id)
    assert [e.version for e in history] == list(range(1, 4 + len(wins)))


async def test_a_batch_keeps_each_commands_outcome_apart(client: AsyncClient, nc: Client) -> None:
    """Concurrent commands share transactions; a refused one changes nothing for the others."""
    flow = await register(client, unique("p"), "batch")
    runs = [await client.create_flow_run_out(flow.id) for _ in range(20)]
    submitted = StateSpec(type=StateType.SUBMITTED)
    commands = []
    for i, run in enumerate(runs):
        version = 1 if i % 2 == 0 else 7  # every odd one is stale
        commands.append(SetFlowRunState(flow_run_id=run.id, version=version, state=submitted))
    commands.append(SetFlowRunState(flow_run_id="no-such-run", version=1, state=submitted))
    replies = await asyncio.gather(
        *(send(nc, subjects.StateCommands.SET_FLOW_RUN_STATE, c.model_dump_json().encode()) for c in commands)
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
        assert info.state.type is (StateType.SUBMITTED if i % 2 == 0 else StateType.SCHEDULED)
    with pytest.raises(NotFound):
        await client.get_flow_run_info("no-such-run")
