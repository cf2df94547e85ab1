"""The Zombie Killer: ending flow runs whose heartbeat stopped.

Reads flow_run, flow_group, task_run and run_heartbeat; finds Running runs
whose last heartbeat is too old and requests Failed for each, and Cancelling
runs silent as long (their agent is gone) and requests Cancelled, at the
version it read, like any client, so any number of instances is safe. It
judges nothing until this instance has been connected for the threshold
(``grace.py``; docs/architecture.md, "Zombie Killer").

Writes: ``flowbus.cmd.state.set_flow_run_state``; an ERROR (Failed) or
WARNING (Cancelled) ``LogBatch`` on ``flowbus.logs.<flow_run_id>`` for the
run and its Running task runs first.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, or_, select
from sqlmodel import col

from flowbus import subjects
from flowbus.client import AsyncClient
from flowbus.db.tables import FlowGroup, FlowRun, RunHeartbeat, TaskRun, utcnow
from flowbus.runtime import telemetry
from flowbus.runtime.service import ServiceContext
from flowbus.schemas.runs import LogBatch, LogRecord
from flowbus.states import StateType
from flowbus_services.heartbeat.grace import silence_cutoff
from flowbus_services.heartbeat.proposing import propose

FLOW_RUN_MESSAGE = "No heartbeat detected from the flow run; marking the run as failed."
CANCELLED_MESSAGE = "No heartbeat detected from the flow run while it was cancelling; marking the run as cancelled."
TASK_RUN_MESSAGE = "No heartbeat detected from the remote task."
LOGGER_NAME = "flowbus.zombie_killer"
log = logging.getLogger(__name__)


@dataclass
class ZombieKillerStats:
    passes: int = 0
    flow_runs_failed: int = 0
    flow_runs_cancelled: int = 0
    # Passes that judged nothing: the grace after (re)connecting had not run out.
    passes_in_grace: int = 0


@dataclass(frozen=True)
class _Zombie:
    flow_run_id: str
    version: int
    state: StateType
    running_task_run_ids: tuple[str, ...]
    traceparent: str | None = None


def _zombies_query(cutoff: datetime) -> Any:
    fr, hb = FlowRun, RunHeartbeat
    # Each comparison is against one typed column, so the UTC timestamp
    # binds the same way on SQLite and PostgreSQL.
    running = and_(
        col(fr.state) == StateType.RUNNING.value,
        col(FlowGroup.heartbeat_enabled).is_(True),
        or_(
            col(hb.last_heartbeat) < cutoff,
            and_(col(hb.last_heartbeat).is_(None), col(fr.start_time) < cutoff),
            and_(col(hb.last_heartbeat).is_(None), col(fr.start_time).is_(None)),
        ),
    )
    # A live agent ends a Cancelling run within seconds; one still Cancelling
    # after the threshold with no beat lost its agent (and, with heartbeats
    # on, its runner). Heartbeats off: its age alone tells.
    cancelling = and_(
        col(fr.state) == StateType.CANCELLING.value,
        or_(col(hb.last_heartbeat).is_(None), col(hb.last_heartbeat) < cutoff),
    )
    return (
        select(col(fr.id), col(fr.version), col(fr.state), col(fr.traceparent))
        .join(FlowGroup, col(FlowGroup.id) == col(fr.flow_group_id))
        .outerjoin(hb, col(hb.flow_run_id) == col(fr.id))
        .where(
            # In its state for less than the limit is no zombie, whatever its
            # heartbeat row says: the row may be an earlier attempt's (a
            # re-run, a run Lazarus rescheduled) and this one's first beat on its way.
            col(fr.state_timestamp) < cutoff,
            or_(running, cancelling),
        )
        .order_by(col(fr.id))
    )


def _running_tasks_query(flow_run_ids: list[str]) -> Any:
    return select(col(TaskRun.flow_run_id), col(TaskRun.id)).where(
        col(TaskRun.flow_run_id).in_(flow_run_ids), col(TaskRun.state) == StateType.RUNNING.value
    )


async def find_zombies(ctx: ServiceContext, cutoff: datetime) -> list[_Zombie]:
    async with ctx.db.read_session() as session:
        rows = (await session.execute(_zombies_query(cutoff))).all()
        if not rows:
            return []
        tasks: dict[str, list[str]] = {row[0]: [] for row in rows}
        for flow_run_id, task_run_id in (await session.execute(_running_tasks_query(list(tasks)))).all():
            tasks[flow_run_id].append(task_run_id)
    return [
        _Zombie(run_id, version, StateType(state), tuple(tasks[run_id]), traceparent)
        for run_id, version, state, traceparent in rows
    ]


async def kill_zombies(ctx: ServiceContext, stats: ZombieKillerStats) -> int:
    """One pass; returns how many flow runs it ended (Failed or Cancelled)."""
    assert ctx.nc is not None
    beats = ctx.settings.heartbeat
    cutoff = silence_cutoff(ctx, beats.zombie_missed_beats * beats.interval_seconds)
    if cutoff is None:
        stats.passes_in_grace += 1
        return 0
    client = AsyncClient(ctx.settings, nc=ctx.nc)
    ended = 0
    for zombie in await find_zombies(ctx, cutoff):
        with telemetry.run_span(
            "zombie killer " + ("cancel" if zombie.state is StateType.CANCELLING else "fail"),
            zombie.traceparent,
            service="heartbeat",
            flow_run_id=zombie.flow_run_id,
        ):
            killed = await _end(ctx, client, zombie)
        if killed:
            ended += 1
            if zombie.state is StateType.CANCELLING:
                stats.flow_runs_cancelled += 1
            else:
                stats.flow_runs_failed += 1
    return ended


async def _end(ctx: ServiceContext, client: AsyncClient, zombie: _Zombie) -> bool:
    """Log, then propose the zombie's end: Cancelled for a cancelling run, else Failed."""
    if zombie.state is StateType.CANCELLING:
        target, message, level = StateType.CANCELLED, CANCELLED_MESSAGE, "WARNING"
    else:
        target, message, level = StateType.FAILED, FLOW_RUN_MESSAGE, "ERROR"
    records = [
        _record(zombie.flow_run_id, task_run_id, TASK_RUN_MESSAGE, level) for task_run_id in zombie.running_task_run_ids
    ]
    # Logs go out before the final state, as a runner ships them: a watcher
    # stops reading logs once it has seen the run finish. If the transition
    # then loses a race, the log still tells the truth: the run was silent.
    records.append(_record(zombie.flow_run_id, None, message, level))
    await ctx.jetstream.publish(subjects.logs(zombie.flow_run_id), LogBatch(records=records).model_dump_json().encode())
    return await propose(
        client.set_flow_run_state(zombie.flow_run_id, zombie.version, target, message), "zombie killer"
    )


def _record(flow_run_id: str, task_run_id: str | None, message: str, level: str) -> LogRecord:
    return LogRecord(
        flow_run_id=flow_run_id,
        task_run_id=task_run_id,
        timestamp=utcnow(),
        name=LOGGER_NAME,
        level=level,
        message=message,
    )


def zombie_loop(stats: ZombieKillerStats) -> Callable[[ServiceContext], Awaitable[None]]:
    async def kill_zombies_loop(ctx: ServiceContext) -> None:
        while True:
            await kill_zombies(ctx, stats)
            stats.passes += 1
            await asyncio.sleep(ctx.settings.heartbeat.zombie_check_interval_seconds)

    return kill_zombies_loop
