"""State use cases: optimistic-locked transitions, run queries, log storage.

Owns the state columns of flow_run and task_run, state_history and log.
Stages ``flowbus.evt.flow_run.<id>.state`` and ``...<id>.task_state`` events
(message id ``...:<version>``, so per-run order and dedup hold), and a new
``flowbus.runq.<key>`` message when a run re-enters a due Scheduled state.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from flowbus import subjects
from flowbus.db.engine import Database
from flowbus.db.tables import FlowRun, Log, StateHistory, TaskRun, utcnow
from flowbus.db.views import (
    flow_run_out,
    load_flow_run,
    state_out_of_run,
    task_run_out,
)
from flowbus.runtime.outbox import stage
from flowbus.schemas.common import NotFound, VersionLockingError
from flowbus.schemas.flows import RunConfigSpec, StorageSpec, TaskSpec
from flowbus.schemas.runs import (
    FlowRunDeleted,
    FlowRunDetail,
    GetFlowRunLogs,
    LogList,
    LogRecord,
    RunQueued,
    SetFlowRunState,
    SetTaskRunState,
    StateChanged,
    StateOut,
    StateSet,
    StateSpec,
)
from flowbus.states import StateType, is_finished
from services.state.rules import Proposal, check

OWNER = "state"
log = logging.getLogger(__name__)


def _version_error(kind: str, run_id: str, current: int, given: int) -> VersionLockingError:
    return VersionLockingError(
        f"{kind} {run_id} is at version {current}, but the state was set against version {given}."
    )


R = TypeVar("R", FlowRun, TaskRun)


def _kind(table: type[FlowRun] | type[TaskRun]) -> str:
    return "Flow run" if table is FlowRun else "Task run"


async def _row_at_version(session: AsyncSession, table: type[R], row_id: str, version: int) -> R:
    """The run a state write targets, refused early when the writer's version is stale."""
    row = await session.get(table, row_id)
    if row is None:
        raise NotFound(f"{_kind(table)} {row_id} not found")
    if row.version != version:
        raise _version_error(_kind(table), row.id, row.version, version)
    return row


async def _write_state(
    session: AsyncSession,
    row: FlowRun | TaskRun,
    given_version: int,
    state: StateSpec,
    now: datetime,
    extra: dict[str, Any],
) -> StateOut:
    """The optimistic-locked write shared by flow and task runs.

    The conditional UPDATE is the lock: a racing writer that read the same
    version matches no row and gets VERSION_LOCKING_ERROR.
    """
    table = type(row)
    values: dict[str, Any] = {
        "state": state.type.value,
        "state_message": state.message,
        "state_timestamp": now,
        "state_result": state.result,
        "version": given_version + 1,
        "updated": now,
    }
    if state.type is StateType.RUNNING and row.start_time is None:
        values["start_time"] = now
    if is_finished(state.type):
        values["end_time"] = now
    values.update(extra)
    result = await session.execute(
        update(table).where(col(table.id) == row.id, col(table.version) == given_version).values(**values)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise _version_error(_kind(table), row.id, row.version, given_version)
    await session.refresh(row)
    return state_out_of_run(row)


async def set_flow_run_state(db: Database, cmd: SetFlowRunState) -> StateSet:
    now = utcnow()
    async with db.transaction() as session:
        run = await _row_at_version(session, FlowRun, cmd.flow_run_id, cmd.version)
        current = StateType(run.state)
        target = cmd.state.type
        check(Proposal(kind="flow run", run_id=run.id, current=current, target=target))

        extra: dict[str, Any] = {}
        if target is StateType.SUBMITTED:
            extra["agent_id"] = cmd.agent_id
        if target is StateType.SCHEDULED:
            extra["end_time"] = None
        state = await _write_state(session, run, cmd.version, cmd.state, now, extra)
        _record(session, run.id, None, state, cmd.state.result, current)

        if target is StateType.CANCELLED:
            await _cancel_task_runs(session, run.id, now)
        if target is StateType.SCHEDULED and run.scheduled_start_time <= now:
            stage(
                session,
                OWNER,
                subjects.run_queue(run.labels),
                RunQueued(
                    flow_run_id=run.id,
                    flow_id=run.flow_id,
                    version=state.version,
                    labels=run.labels,
                    scheduled_start_time=run.scheduled_start_time,
                ),
                f"runq:{run.id}:{state.version}",
            )
    return StateSet(id=run.id, version=state.version, state=state)


def _record(
    session: AsyncSession,
    flow_run_id: str,
    task_run_id: str | None,
    state: StateOut,
    result: Any,
    previous: StateType,
) -> None:
    session.add(
        StateHistory(
            flow_run_id=flow_run_id,
            task_run_id=task_run_id,
            type=state.type.value,
            message=state.message,
            result=result,
            version=state.version,
            timestamp=state.timestamp,
        )
    )
    fact = "state" if task_run_id is None else "task_state"
    stage(
        session,
        OWNER,
        subjects.flow_run_event(flow_run_id, fact),
        StateChanged(
            flow_run_id=flow_run_id, task_run_id=task_run_id, version=state.version, state=state, previous=previous
        ),
        f"{task_run_id or flow_run_id}:state:{state.version}",
    )


async def _cancel_task_runs(session: AsyncSession, flow_run_id: str, now: datetime) -> None:
    rows = (
        await session.execute(select(TaskRun).where(TaskRun.flow_run_id == flow_run_id))  # type: ignore[arg-type]
    ).all()
    for (task_run,) in rows:
        previous = StateType(task_run.state)
        if is_finished(previous):
            continue
        task_run.state = StateType.CANCELLED.value
        task_run.state_message = "Flow run was cancelled."
        task_run.state_timestamp = now
        task_run.version += 1
        task_run.end_time = now
        task_run.updated = now
        session.add(task_run)
        _record(session, flow_run_id, task_run.id, state_out_of_run(task_run), None, previous)


async def set_task_run_state(db: Database, cmd: SetTaskRunState) -> StateSet:
    now = utcnow()
    async with db.transaction() as session:
        task_run = await _row_at_version(session, TaskRun, cmd.task_run_id, cmd.version)
        flow_run = await session.get(FlowRun, task_run.flow_run_id)
        current = StateType(task_run.state)
        check(
            Proposal(
                kind="task run",
                run_id=task_run.id,
                current=current,
                target=cmd.state.type,
                flow_run_state=StateType(flow_run.state) if flow_run else None,
            )
        )
        state = await _write_state(session, task_run, cmd.version, cmd.state, now, {})
        _record(session, task_run.flow_run_id, task_run.id, state, cmd.state.result, current)
    return StateSet(id=task_run.id, version=state.version, state=state)


async def get_flow_run(db: Database, flow_run_id: str) -> FlowRunDetail:
    async with db.session() as session:
        run, flow, group, project = await load_flow_run(session, flow_run_id)
        task_runs = (
            await session.execute(
                select(TaskRun).where(TaskRun.flow_run_id == run.id).order_by(TaskRun.created, TaskRun.task_slug)  # type: ignore[arg-type]
            )
        ).all()
        return FlowRunDetail(
            run=flow_run_out(run, flow, project),
            task_runs=[task_run_out(t) for (t,) in task_runs],
            storage=StorageSpec.model_validate(flow.storage),
            tasks=[TaskSpec.model_validate(t) for t in flow.tasks],
            run_config=RunConfigSpec.model_validate(run.run_config or flow.run_config or {}),
            heartbeat_enabled=group.heartbeat_enabled,
            version_locking_enabled=group.version_locking_enabled,
        )


async def get_flow_run_logs(db: Database, query: GetFlowRunLogs) -> LogList:
    async with db.session() as session:
        if await session.get(FlowRun, query.flow_run_id) is None:
            raise NotFound(f"Flow run {query.flow_run_id} not found")
        rows = (
            await session.execute(
                select(Log)
                .where(Log.flow_run_id == query.flow_run_id)  # type: ignore[arg-type]
                .order_by(Log.timestamp, Log.id)  # type: ignore[arg-type]
                .limit(query.limit)
            )
        ).all()
        return LogList(records=[LogRecord.model_validate(r, from_attributes=True) for (r,) in rows])


def _log_row(record: LogRecord) -> Log:
    return Log(**record.model_dump())


async def store_logs(db: Database, records: list[LogRecord]) -> int:
    """Persist a batch in one transaction; records of unknown runs are dropped."""
    if not records:
        return 0
    try:
        async with db.transaction() as session:
            session.add_all([_log_row(r) for r in records])
        return len(records)
    except IntegrityError:
        pass
    async with db.transaction() as session:
        run_ids = {r.flow_run_id for r in records}
        known = set(
            (await session.execute(select(col(FlowRun.id)).where(col(FlowRun.id).in_(run_ids)))).scalars().all()  # type: ignore[attr-defined]
        )
        kept = [r for r in records if r.flow_run_id in known]
        dropped = len(records) - len(kept)
        if dropped:
            log.warning("dropped %d log records of unknown flow runs", dropped)
        session.add_all([_log_row(r) for r in kept])
    return len(kept)


ARCHIVED_MESSAGE = "Flow {flow_id} was archived."


async def clean_up_flow_runs(db: Database, flow_id: str, fact: str) -> int:
    """A flow was archived or its schedule turned off: its not-started
    auto-scheduled runs are deleted; when archived, its ad-hoc Scheduled runs
    are also Cancelled("Flow <id> was archived."). Idempotent: a redelivered
    event finds nothing left to do. Returns how many runs were touched."""
    now = utcnow()
    touched = 0
    async with db.transaction() as session:
        waiting = (
            await session.exec(
                select(FlowRun).where(col(FlowRun.flow_id) == flow_id, col(FlowRun.state) == StateType.SCHEDULED.value)
            )
        ).all()
        for run in waiting:
            if run.auto_scheduled:
                await session.delete(run)
                stage(
                    session,
                    OWNER,
                    subjects.flow_run_event(run.id, "deleted"),
                    FlowRunDeleted(flow_run_id=run.id, reason=f"flow {flow_id}: {fact}"),
                    f"flow_run:{run.id}:deleted",
                )
            elif fact == subjects.FlowFact.ARCHIVED:
                cancelled = StateSpec(type=StateType.CANCELLED, message=ARCHIVED_MESSAGE.format(flow_id=flow_id))
                state = await _write_state(session, run, run.version, cancelled, now, {})
                _record(session, run.id, None, state, None, StateType.SCHEDULED)
                await _cancel_task_runs(session, run.id, now)
            else:
                continue
            touched += 1
    return touched
