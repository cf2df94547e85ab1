"""State use cases: optimistic-locked transitions, run queries, log storage.

Owns the state columns of flow_run and task_run, state_history and log.
Stages ``flowbus.evt.flow_run.<id>.state`` and ``...<id>.task_state`` events
(message id ``...:<version>``, so per-run order and dedup hold), and a new
``flowbus.runq.<key>`` message when a run re-enters a due Scheduled state.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import col
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
)
from flowbus.states import StateType, is_finished
from services.state.rules import Proposal, check

OWNER = "state"
log = logging.getLogger(__name__)


def _version_error(kind: str, run_id: str, current: int, given: int) -> VersionLockingError:
    return VersionLockingError(
        f"{kind} {run_id} is at version {current}, but the state was set against version {given}."
    )


def _time_columns(row: FlowRun | TaskRun, target: StateType, now: datetime) -> dict[str, Any]:
    values: dict[str, Any] = {}
    if target is StateType.RUNNING and row.start_time is None:
        values["start_time"] = now
    if is_finished(target):
        values["end_time"] = now
    return values


async def set_flow_run_state(db: Database, cmd: SetFlowRunState) -> StateSet:
    now = utcnow()
    async with db.transaction() as session:
        run = await session.get(FlowRun, cmd.flow_run_id)
        if run is None:
            raise NotFound(f"Flow run {cmd.flow_run_id} not found")
        if run.version != cmd.version:
            raise _version_error("Flow run", run.id, run.version, cmd.version)
        current = StateType(run.state)
        target = cmd.state.type
        check(Proposal(kind="flow run", run_id=run.id, current=current, target=target))

        new_version = run.version + 1
        values: dict[str, Any] = {
            "state": target.value,
            "state_message": cmd.state.message,
            "state_timestamp": now,
            "state_result": cmd.state.result,
            "version": new_version,
            "updated": now,
            **_time_columns(run, target, now),
        }
        if target is StateType.SUBMITTED:
            values["agent_id"] = cmd.agent_id
        if target is StateType.SCHEDULED:
            values["end_time"] = None
        # The conditional write is the lock: a racing writer matches no row.
        result = await session.execute(
            update(FlowRun)
            .where(FlowRun.id == run.id, FlowRun.version == cmd.version)  # type: ignore[arg-type]
            .values(**values)
        )
        if result.rowcount != 1:  # type: ignore[attr-defined]
            raise _version_error("Flow run", run.id, run.version, cmd.version)
        await session.refresh(run)
        state = state_out_of_run(run)
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
                    version=new_version,
                    labels=run.labels,
                    scheduled_start_time=run.scheduled_start_time,
                ),
                f"runq:{run.id}:{new_version}",
            )
    return StateSet(id=run.id, version=new_version, state=state)


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
        task_run = await session.get(TaskRun, cmd.task_run_id)
        if task_run is None:
            raise NotFound(f"Task run {cmd.task_run_id} not found")
        if task_run.version != cmd.version:
            raise _version_error("Task run", task_run.id, task_run.version, cmd.version)
        flow_run = await session.get(FlowRun, task_run.flow_run_id)
        current = StateType(task_run.state)
        target = cmd.state.type
        check(
            Proposal(
                kind="task run",
                run_id=task_run.id,
                current=current,
                target=target,
                flow_run_state=StateType(flow_run.state) if flow_run else None,
            )
        )
        new_version = task_run.version + 1
        result = await session.execute(
            update(TaskRun)
            .where(TaskRun.id == task_run.id, TaskRun.version == cmd.version)  # type: ignore[arg-type]
            .values(
                state=target.value,
                state_message=cmd.state.message,
                state_timestamp=now,
                state_result=cmd.state.result,
                version=new_version,
                updated=now,
                **_time_columns(task_run, target, now),
            )
        )
        if result.rowcount != 1:  # type: ignore[attr-defined]
            raise _version_error("Task run", task_run.id, task_run.version, cmd.version)
        await session.refresh(task_run)
        state = state_out_of_run(task_run)
        _record(session, task_run.flow_run_id, task_run.id, state, cmd.state.result, current)
    return StateSet(id=task_run.id, version=new_version, state=state)


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
        return LogList(
            records=[
                LogRecord(
                    flow_run_id=r.flow_run_id,
                    task_run_id=r.task_run_id,
                    timestamp=r.timestamp,
                    name=r.name,
                    level=r.level,
                    message=r.message,
                    info=r.info,
                )
                for (r,) in rows
            ]
        )


def _log_row(record: LogRecord) -> Log:
    return Log(
        flow_run_id=record.flow_run_id,
        task_run_id=record.task_run_id,
        timestamp=record.timestamp,
        name=record.name,
        level=record.level,
        message=record.message,
        info=record.info,
    )


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
