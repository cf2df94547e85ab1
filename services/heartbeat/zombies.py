"""The Zombie Killer: failing Running flow runs whose heartbeat stopped.

Every ``heartbeat.zombie_check_interval_seconds`` it reads flow_run,
flow_group, task_run and state_history (owned by registration, run_creation
and state) and run_heartbeat (owned here), and finds the flow runs in
Running whose flow group has heartbeats enabled and whose last heartbeat (or
start time, when none arrived yet) is older than
``heartbeat.zombie_missed_beats`` x ``heartbeat.interval_seconds``.

For each zombie, its Running task runs go to Retrying when they have
retries left (``max_retries`` against the Running entries of their state
history), else to Failed; then the flow run goes to Failed. It never writes
runs: it requests ``flowbus.cmd.state.set_task_run_state`` and
``flowbus.cmd.state.set_flow_run_state`` at the version it read, like any
client, so a run that moved on meanwhile (a late heartbeat's run finishing,
another killer instance) answers VERSION_LOCKING_ERROR and is skipped. That
conditional write is why any number of instances is safe without a lease.

Writes: an ERROR ``LogBatch`` on ``flowbus.logs.<flow_run_id>`` for the
zombie flow run and each task run it changed, before the flow run's Failed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, or_, select
from sqlmodel import col

from flowbus import subjects
from flowbus.client import AsyncClient
from flowbus.db.tables import FlowGroup, FlowRun, RunHeartbeat, StateHistory, TaskRun, utcnow
from flowbus.runtime.service import ServiceContext
from flowbus.schemas.common import Conflict, NotFound, VersionLockingError
from flowbus.schemas.runs import LogBatch, LogRecord
from flowbus.states import StateType

FLOW_RUN_MESSAGE = "No heartbeat detected from the flow run; marking the run as failed."
TASK_RUN_MESSAGE = "No heartbeat detected from the remote task; marking the run as failed."
TASK_RETRY_MESSAGE = "No heartbeat detected from the remote task; retrying the run."
LOGGER_NAME = "flowbus.zombie_killer"
log = logging.getLogger(__name__)


@dataclass
class ZombieState:
    passes: int = 0
    flow_runs_failed: int = 0
    task_runs_changed: int = 0


@dataclass(frozen=True)
class _Zombie:
    flow_run_id: str
    version: int


@dataclass(frozen=True)
class _RunningTask:
    id: str
    version: int
    max_retries: int
    run_count: int


def _zombies_query(cutoff: datetime) -> Any:
    fr, hb = FlowRun, RunHeartbeat
    return (
        select(col(fr.id), col(fr.version))
        .join(FlowGroup, col(FlowGroup.id) == col(fr.flow_group_id))
        .outerjoin(hb, col(hb.flow_run_id) == col(fr.id))
        .where(
            col(fr.state) == StateType.RUNNING.value,
            col(FlowGroup.heartbeat_enabled).is_(True),
            # Each comparison is against one typed column, so the UTC
            # timestamp binds the same way on SQLite and PostgreSQL.
            or_(
                col(hb.last_heartbeat) < cutoff,
                and_(col(hb.last_heartbeat).is_(None), col(fr.start_time) < cutoff),
                and_(col(hb.last_heartbeat).is_(None), col(fr.start_time).is_(None), col(fr.state_timestamp) < cutoff),
            ),
        )
        .order_by(col(fr.id))
    )


def _running_tasks_query(flow_run_ids: list[str]) -> Any:
    # How many times a task run has run is how many Running entries its
    # history holds: task_run has no run_count column of its own.
    runs = (
        select(func.count())
        .where(
            col(StateHistory.task_run_id) == col(TaskRun.id),
            col(StateHistory.type) == StateType.RUNNING.value,
        )
        .correlate(TaskRun)
        .scalar_subquery()
    )
    return select(
        col(TaskRun.flow_run_id), col(TaskRun.id), col(TaskRun.version), col(TaskRun.max_retries), runs
    ).where(col(TaskRun.flow_run_id).in_(flow_run_ids), col(TaskRun.state) == StateType.RUNNING.value)


async def find_zombies(ctx: ServiceContext) -> list[tuple[_Zombie, list[_RunningTask]]]:
    beats = ctx.settings.heartbeat
    cutoff = utcnow() - timedelta(seconds=beats.zombie_missed_beats * beats.interval_seconds)
    async with ctx.db.read_session() as session:
        rows = (await session.execute(_zombies_query(cutoff))).all()
        if not rows:
            return []
        tasks: dict[str, list[_RunningTask]] = {run_id: [] for run_id, _ in rows}
        for flow_run_id, *task in (await session.execute(_running_tasks_query(list(tasks)))).all():
            tasks[flow_run_id].append(_RunningTask(*task))
    return [(_Zombie(run_id, version), tasks[run_id]) for run_id, version in rows]


async def kill_zombies(ctx: ServiceContext, state: ZombieState) -> int:
    """One pass; returns how many flow runs it failed."""
    assert ctx.nc is not None
    client = AsyncClient(ctx.settings, nc=ctx.nc)
    failed = 0
    for zombie, tasks in await find_zombies(ctx):
        records: list[LogRecord] = []
        for task in tasks:
            # run_count includes the run that just died: retries used = run_count - 1.
            retry = task.run_count <= task.max_retries
            target, message = (
                (StateType.RETRYING, TASK_RETRY_MESSAGE) if retry else (StateType.FAILED, TASK_RUN_MESSAGE)
            )
            if await _propose(client.set_task_run_state(task.id, task.version, target, message)):
                state.task_runs_changed += 1
                records.append(_record(zombie.flow_run_id, task.id, message))
        # Logs go out before the final state, as a runner ships them: a watcher
        # stops reading logs once it has seen the run finish. If the transition
        # then loses a race, the log still tells the truth: the run was silent.
        records.append(_record(zombie.flow_run_id, None, FLOW_RUN_MESSAGE))
        await ctx.jetstream.publish(
            subjects.logs(zombie.flow_run_id), LogBatch(records=records).model_dump_json().encode()
        )
        proposal = client.set_flow_run_state(zombie.flow_run_id, zombie.version, StateType.FAILED, FLOW_RUN_MESSAGE)
        if await _propose(proposal):
            failed += 1
    state.flow_runs_failed += failed
    return failed


async def _propose(request: Awaitable[object]) -> bool:
    """Send one transition; False when the run moved on since it was read."""
    try:
        await request
        return True
    except (VersionLockingError, Conflict, NotFound) as exc:
        # Another writer won (a finishing run, a second killer): nothing to do.
        log.info("zombie killer skipped a run: %s", exc)
        return False


def _record(flow_run_id: str, task_run_id: str | None, message: str) -> LogRecord:
    return LogRecord(
        flow_run_id=flow_run_id,
        task_run_id=task_run_id,
        timestamp=utcnow(),
        name=LOGGER_NAME,
        level="ERROR",
        message=message,
    )


def zombie_loop(state: ZombieState) -> Callable[[ServiceContext], Awaitable[None]]:
    async def kill_zombies_loop(ctx: ServiceContext) -> None:
        while True:
            await kill_zombies(ctx, state)
            state.passes += 1
            await asyncio.sleep(ctx.settings.heartbeat.zombie_check_interval_seconds)

    return kill_zombies_loop
