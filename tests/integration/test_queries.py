"""The state service's read side (services/state/queries.py) through the
client: listing runs, state history, log filters; and the forms a state
and a cancel can be given in."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from nats.aio.client import Client

from flowbus import subjects
from flowbus.client import AsyncClient
from flowbus.schemas.common import NotFound, ValidationFailed
from flowbus.schemas.runs import FlowRunOut, LogBatch, LogRecord
from flowbus.states import Running, StateType, Success
from tests.helpers import register, unique
from tests.helpers.commands import send


def later(hours: float) -> datetime:
    return datetime.now(UTC) + timedelta(hours=hours)


async def test_list_flow_runs_filters_orders_and_pages(client: AsyncClient) -> None:
    project, other = unique("p"), unique("q")
    f1 = await register(client, project, "f1")
    f2 = await register(client, project, "f2")
    g = await register(client, other, "g")
    r1_id = await client.create_flow_run(f1.id, scheduled_start_time=later(1))
    r2_id = await client.create_flow_run(f1.id, scheduled_start_time=later(3))
    r3_id = await client.create_flow_run(f2.id, scheduled_start_time=later(2))
    r4_id = await client.create_flow_run(g.id, scheduled_start_time=later(4))
    await client.set_flow_run_state(r1_id, 1, StateType.CANCELLED, "not needed")

    def ids(runs: list[FlowRunOut]) -> list[str]:
        return [r.id for r in runs]

    assert ids(await client.get_flow_runs()) == [r4_id, r2_id, r3_id, r1_id]
    assert ids(await client.get_flow_runs(project_name=project)) == [r2_id, r3_id, r1_id]
    assert ids(await client.get_flow_runs(flow_id=f1.id)) == [r2_id, r1_id]
    assert ids(await client.get_flow_runs(flow_group_id=f2.flow_group_id)) == [r3_id]
    assert ids(await client.get_flow_runs(project_name=project, states=[StateType.SCHEDULED])) == [r2_id, r3_id]
    assert ids(await client.get_flow_runs(states=["Cancelled", StateType.FAILED])) == [r1_id]
    assert ids(await client.get_flow_runs(flow_id=f1.id, project_name=other)) == []
    pages = [ids(await client.get_flow_runs(limit=1, offset=n)) for n in range(5)]
    assert pages == [[r4_id], [r2_id], [r3_id], [r1_id], []]
    listed = (await client.get_flow_runs(flow_id=f2.id))[0]
    assert (listed.flow_name, listed.project_name, listed.version) == ("f2", project, 1)
    assert listed.state.type is StateType.SCHEDULED
    with pytest.raises(NotFound, match="not found"):
        await client.get_flow_runs(project_name=unique("missing"))
    with pytest.raises(ValidationFailed, match="limit"):
        await client.get_flow_runs(limit=0)


async def test_history_is_gap_free_and_task_runs_only_when_asked(client: AsyncClient) -> None:
    flow = await register(client, unique("p"), "f", tasks=["a", "b"])
    run_id = await client.create_flow_run(flow.id)
    v = (await client.set_flow_run_state(run_id, 1, StateType.SUBMITTED, agent_id="agent-1")).version
    v = (await client.set_flow_run_state(run_id, v, StateType.RUNNING)).version
    task_a = next(t for t in (await client.get_flow_run_info(run_id)).task_runs if t.task_slug == "a-1")
    tv = (await client.set_task_run_state(task_a.id, 1, StateType.RUNNING)).version
    await client.set_task_run_state(task_a.id, tv, StateType.SUCCESS, "a done")
    await client.set_flow_run_state(run_id, v, StateType.FAILED, "b never ran")

    history = await client.get_flow_run_history(run_id)
    assert [(e.version, e.type) for e in history] == [
        (1, StateType.SCHEDULED),
        (2, StateType.SUBMITTED),
        (3, StateType.RUNNING),
        (4, StateType.FAILED),
    ]
    assert all(e.task_run_id is None and e.flow_run_id == run_id for e in history)
    assert history[0].message == "Flow run scheduled."
    assert history[-1].message == "b never ran"
    assert [e.timestamp for e in history] == sorted(e.timestamp for e in history)

    full = await client.get_flow_run_history(run_id, include_task_runs=True)
    described = [(e.task_run_id is not None, e.version, e.type) for e in full]
    assert described == [
        (False, 1, StateType.SCHEDULED),
        (False, 2, StateType.SUBMITTED),
        (False, 3, StateType.RUNNING),
        (True, 2, StateType.RUNNING),
        (True, 3, StateType.SUCCESS),
        (False, 4, StateType.FAILED),
    ]
    assert {e.task_run_id for e in full if e.task_run_id} == {task_a.id}


async def _publish_logs(client: AsyncClient, records: list[LogRecord]) -> None:
    await client.nc.jetstream().publish(
        subjects.logs(records[0].flow_run_id), LogBatch(records=records).model_dump_json().encode()
    )


async def test_a_logs_query_sees_every_batch_already_shipped(client: AsyncClient) -> None:
    """Read-your-writes: once JetStream has a run's batch, a logs query returns it
    (``flowbus watch`` of a run that just finished shows its last lines)."""
    flow = await register(client, unique("p"), "f")
    runs = [await client.create_flow_run_out(flow.id) for _ in range(10)]
    t0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
    for run in runs:
        records = [
            LogRecord(flow_run_id=run.id, timestamp=t0 + timedelta(seconds=i), name="t", level="INFO", message=str(i))
            for i in range(50)
        ]
        await _publish_logs(client, records)
        assert [r.message for r in await client.get_flow_run_logs(run.id)] == [str(i) for i in range(50)]
    # Ids that are not one subject token wait for nothing and find nothing.
    for odd in ("a.b", "*", ">"):
        with pytest.raises(NotFound):
            await client.get_flow_run_logs(odd)


async def test_log_filters_by_minimum_level_and_time(client: AsyncClient) -> None:
    flow = await register(client, unique("p"), "f")
    run_id = await client.create_flow_run(flow.id)
    t0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
    levels = ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
    records = [
        LogRecord(
            flow_run_id=run_id,
            timestamp=t0 + timedelta(minutes=i),
            name="flowbus.test",
            level=level,
            message=f"{level.lower()} at minute {i}",
        )
        for i, level in enumerate(levels)
    ]
    await _publish_logs(client, list(reversed(records)))

    everything = await client.get_flow_run_logs(run_id)
    assert [r.level for r in everything] == levels  # time order, whatever the arrival order
    assert [r.level for r in await client.get_flow_run_logs(run_id, level="WARNING")] == [
        "WARNING",
        "ERROR",
        "CRITICAL",
    ]
    assert [r.level for r in await client.get_flow_run_logs(run_id, level="info")] == levels[1:]
    assert [r.level for r in await client.get_flow_run_logs(run_id, level="CRITICAL")] == ["CRITICAL"]
    # since and until are inclusive.
    window = await client.get_flow_run_logs(run_id, since=t0 + timedelta(minutes=1), until=t0 + timedelta(minutes=3))
    assert [r.level for r in window] == ["INFO", "WARNING", "ERROR"]
    # Any zone: 13:02 at +01:00 is 12:02 UTC.
    since_local = datetime(2030, 1, 1, 13, 2, tzinfo=timezone(timedelta(hours=1)))
    assert [r.level for r in await client.get_flow_run_logs(run_id, since=since_local)] == [
        "WARNING",
        "ERROR",
        "CRITICAL",
    ]
    combined = await client.get_flow_run_logs(run_id, level="ERROR", until=t0 + timedelta(minutes=3), limit=5)
    assert [r.message for r in combined] == ["error at minute 3"]
    assert [r.level for r in await client.get_flow_run_logs(run_id, limit=2)] == ["DEBUG", "INFO"]
    assert await client.get_flow_run_logs(run_id, since=t0 + timedelta(hours=1)) == []
    with pytest.raises(ValidationFailed, match="level"):
        await client.get_flow_run_logs(run_id, level="LOUD")
    with pytest.raises(ValidationFailed, match="since"):
        await client.get_flow_run_logs(run_id, since=datetime(2030, 1, 1, 12, 0))  # naive


async def test_unknown_ids_are_not_found(client: AsyncClient) -> None:
    missing = unique("run")
    with pytest.raises(NotFound, match=f"Flow run {missing} not found"):
        await client.get_flow_run_history(missing)
    with pytest.raises(NotFound, match=f"Flow run {missing} not found"):
        await client.get_flow_run_logs(missing, level="ERROR")
    with pytest.raises(NotFound, match=f"Flow run {missing} not found"):
        await client.get_flow_run_info(missing)
    with pytest.raises(NotFound):
        await client.set_flow_run_state(missing, 1, Success())


async def test_naive_times_are_refused(client: AsyncClient, nc: Client) -> None:
    flow = await register(client, unique("p"), "f")
    naive = datetime.now() + timedelta(hours=1)  # naive: the point of the test
    # The client refuses before sending, with the code the service would use...
    with pytest.raises(ValidationFailed, match="scheduled_start_time"):
        await client.create_flow_run(flow.id, scheduled_start_time=naive)
    # ...and the service refuses a naive time sent by anyone else.
    reply = await send(
        nc,
        subjects.RunCreationCommands.CREATE_FLOW_RUN,
        {"flow_id": flow.id, "scheduled_start_time": naive.isoformat()},
    )
    assert reply["error"]["code"] == "VALIDATION_ERROR"
    assert "scheduled_start_time" in reply["error"]["message"]
    run_id = await client.create_flow_run(flow.id)
    reply = await send(
        nc, subjects.StateCommands.GET_FLOW_RUN_LOGS, {"flow_run_id": run_id, "until": "2030-01-01T12:00:00"}
    )
    assert reply["error"]["code"] == "VALIDATION_ERROR"
    # Nothing was created by the refused commands.
    assert [r.id for r in await client.get_flow_runs(flow_id=flow.id)] == [run_id]


async def test_a_state_as_object_dict_or_type(client: AsyncClient) -> None:
    flow = await register(client, unique("p"), "f", tasks=["a"])
    run_id = await client.create_flow_run(flow.id)
    submitted = await client.set_flow_run_state(run_id, 1, StateType.SUBMITTED, "by type")
    running = await client.set_flow_run_state(run_id, submitted.version, {"type": "Running", "message": "by dict"})
    done = await client.set_flow_run_state(run_id, running.version, Success(message="It worked!", result={"rows": 3}))
    assert done.state.type is StateType.SUCCESS
    assert done.state.message == "It worked!"
    history = await client.get_flow_run_history(run_id)
    assert [(e.type, e.message) for e in history[1:]] == [
        (StateType.SUBMITTED, "by type"),
        (StateType.RUNNING, "by dict"),
        (StateType.SUCCESS, "It worked!"),
    ]
    assert history[-1].result == {"rows": 3}

    again_id = await client.create_flow_run(flow.id)
    v = (await client.set_flow_run_state(again_id, 1, StateType.SUBMITTED)).version
    v = (await client.set_flow_run_state(again_id, v, Running)).version  # a class is its empty state
    task = (await client.get_flow_run_info(again_id)).task_runs[0]
    tv = (await client.set_task_run_state(task.id, 1, Running(message="task by object"))).version
    cached = await client.set_task_run_state(task.id, tv, {"type": "Cached"}, message="the message argument wins")
    assert (cached.state.type, cached.state.message) == (StateType.CACHED, "the message argument wins")
    with pytest.raises(ValidationFailed, match="type"):
        await client.set_flow_run_state(again_id, v, {"type": "Exploded"})
    with pytest.raises(ValidationFailed):
        await client.set_flow_run_state(again_id, v, {"type": "Success", "colour": "green"})


async def test_cancel_through_the_client(client: AsyncClient) -> None:
    flow = await register(client, unique("p"), "f")
    waiting_id = await client.create_flow_run(flow.id, scheduled_start_time=later(1))
    cancelled = await client.cancel_flow_run(waiting_id, "not today")
    assert (cancelled.changed, cancelled.state.type, cancelled.version) == (True, StateType.CANCELLED, 2)
    assert cancelled.state.message == "not today"
    again = await client.cancel_flow_run(waiting_id)
    assert (again.changed, again.state.type, again.version) == (False, StateType.CANCELLED, 2)

    running_id = await client.create_flow_run(flow.id)
    v = (await client.set_flow_run_state(running_id, 1, StateType.SUBMITTED)).version
    await client.set_flow_run_state(running_id, v, StateType.RUNNING)
    assert (await client.cancel_flow_run(running_id)).state.type is StateType.CANCELLING
    assert [r.id for r in await client.get_flow_runs(flow_id=flow.id, states=["Cancelling"])] == [running_id]
    with pytest.raises(NotFound):
        await client.cancel_flow_run(unique("missing"))
