"""Lazarus: rescheduling flow runs whose runner vanished.

Reads flow_run, flow_group, task_run and run_heartbeat; finds Submitted or
Running runs that have been silent for ``lazarus.stale_after_seconds`` and
have no active task run (judging nothing within a stale time of this
instance's connecting: ``grace.py``), and asks the state service to resurrect each
(Scheduled, ``times_resurrected`` + 1) at the version it read, or, once
``lazarus.max_resurrections`` is reached, to fail it. It writes no run, so
any number of instances is safe: only one proposal per version can win
(docs/architecture.md, "Lazarus").

Writes: ``flowbus.cmd.state.set_flow_run_state``; first an INFO (rescheduled)
or ERROR (failed) ``LogBatch`` on ``flowbus.logs.<flow_run_id>``, with a
message id per run and version so that two instances log once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import exists, or_, select
from sqlmodel import col

from flowbus import subjects
from flowbus.client import AsyncClient
from flowbus.db.tables import FlowGroup, FlowRun, RunHeartbeat, TaskRun
from flowbus.runtime.service import ServiceContext
from flowbus.states import ACTIVE_TASK_RUN_STATES, StateType
from flowbus_services.heartbeat.grace import silence_cutoff
from flowbus_services.heartbeat.proposing import Resurrection, SilentRun, resurrect_or_fail

RESCHEDULED_MESSAGE = "Rescheduled by a Lazarus process."
LOGGER_NAME = "flowbus.lazarus"
log = logging.getLogger(__name__)


def failed_message(max_resurrections: int) -> str:
    return (
        f"A Lazarus process attempted to reschedule this run {max_resurrections} times without success."
        " Marking as failed."
    )


def rescheduled_log_message(attempt: int) -> str:
    return f"{RESCHEDULED_MESSAGE} This is attempt {attempt}."


@dataclass
class LazarusStats:
    passes: int = 0
    flow_runs_rescheduled: int = 0
    flow_runs_failed: int = 0


Candidate = SilentRun


def _candidates_query(cutoff: datetime) -> Any:
    fr, hb, tr = FlowRun, RunHeartbeat, TaskRun
    active_task_run = exists().where(
        col(tr.flow_run_id) == col(fr.id), col(tr.state).in_([s.value for s in ACTIVE_TASK_RUN_STATES])
    )
    return (
        select(col(fr.id), col(fr.version), col(fr.times_resurrected), col(fr.traceparent))
        .join(FlowGroup, col(FlowGroup.id) == col(fr.flow_group_id))
        .outerjoin(hb, col(hb.flow_run_id) == col(fr.id))
        .where(
            col(fr.state).in_([StateType.SUBMITTED.value, StateType.RUNNING.value]),
            col(FlowGroup.lazarus_enabled).is_(True),
            # A Running run of a group without heartbeats gives no sign of
            # life while its tasks work: nothing shows it is dead. A Submitted
            # run sends none in any group, so its claim's age is the sign.
            or_(col(fr.state) == StateType.SUBMITTED.value, col(FlowGroup.heartbeat_enabled).is_(True)),
            # Silent since the cutoff: no state change and no heartbeat. The
            # state's time counts even with a heartbeat row, which may be an
            # earlier attempt's. One typed column per comparison, so the UTC
            # timestamp binds the same way on SQLite and PostgreSQL.
            col(fr.state_timestamp) < cutoff,
            or_(col(hb.last_heartbeat).is_(None), col(hb.last_heartbeat) < cutoff),
            ~active_task_run,
        )
        .order_by(col(fr.id))
    )


async def find_candidates(ctx: ServiceContext) -> list[Candidate]:
    # Beats lost while this instance was down or disconnected show nothing (grace.py).
    cutoff = silence_cutoff(ctx, ctx.settings.lazarus.stale_after_seconds)
    if cutoff is None:
        return []
    async with ctx.db.read_session() as session:
        rows = (await session.execute(_candidates_query(cutoff))).all()
    return [Candidate(run_id, version, times, traceparent) for run_id, version, times, traceparent in rows]


async def revive(ctx: ServiceContext, stats: LazarusStats, candidates: list[Candidate]) -> int:
    """Reschedule (or, past the limit, fail) each candidate at the version it
    was read; returns how many changes went through."""
    assert ctx.nc is not None
    client = AsyncClient(ctx.settings, nc=ctx.nc)
    changed = 0
    for run in candidates:
        how = Resurrection(
            loop="lazarus",
            logger_name=LOGGER_NAME,
            log_msg_id=subjects.lazarus_log_msg_id(run.flow_run_id, run.version),
            rescheduled_log=rescheduled_log_message(run.times_resurrected + 1),
            rescheduled_state=RESCHEDULED_MESSAGE,
            failed=failed_message(ctx.settings.lazarus.max_resurrections),
        )
        outcome = await resurrect_or_fail(ctx, client, run, how)
        if outcome == "rescheduled":
            stats.flow_runs_rescheduled += 1
        elif outcome == "failed":
            stats.flow_runs_failed += 1
        changed += outcome is not None
    return changed


async def lazarus_pass(ctx: ServiceContext, stats: LazarusStats) -> int:
    """One pass: find the candidates, act on each; returns how many changed."""
    return await revive(ctx, stats, await find_candidates(ctx))


def lazarus_loop(stats: LazarusStats) -> Callable[[ServiceContext], Awaitable[None]]:
    async def revive_loop(ctx: ServiceContext) -> None:
        while True:
            await lazarus_pass(ctx, stats)
            stats.passes += 1
            await asyncio.sleep(ctx.settings.lazarus.interval_seconds)

    return revive_loop
