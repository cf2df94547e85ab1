"""Requeueing stuck claims: Submitted flow runs whose flow never started.

Reads flow_run and run_heartbeat; finds runs Submitted for longer than
``heartbeat.submitted_timeout_seconds`` with no heartbeat since the claim
(the agent died or gave up before the runner set Running; the offer was
acknowledged at the claim, so nothing else would ever start them) and asks
the state service to resurrect each at the version it read, which queues it
for agents again, or, once ``lazarus.max_resurrections`` is reached, to
fail it (docs/architecture.md, "Stuck claims").

Writes: ``flowbus.cmd.state.set_flow_run_state``; first an INFO (requeued) or
ERROR (failed) ``LogBatch`` on ``flowbus.logs.<flow_run_id>``, with a message
id per run and version so that two instances log once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import or_, select
from sqlmodel import col

from flowbus import subjects
from flowbus.client import AsyncClient
from flowbus.db.tables import FlowRun, RunHeartbeat
from flowbus.runtime.service import ServiceContext
from flowbus.states import StateType
from flowbus_services.heartbeat.grace import silence_cutoff
from flowbus_services.heartbeat.proposing import Resurrection, SilentRun, resurrect_or_fail

LOGGER_NAME = "flowbus.stuck_claims"


def requeued_message(timeout: float) -> str:
    return f"Requeued: Submitted for more than {timeout:g} s and its flow run process never started."


def failed_message(timeout: float, max_resurrections: int) -> str:
    return (
        f"Submitted for more than {timeout:g} s and its flow run process never started, after"
        f" {max_resurrections} reschedules. Marking as failed."
    )


@dataclass
class StuckClaimStats:
    passes: int = 0
    flow_runs_requeued: int = 0
    flow_runs_failed: int = 0


StuckClaim = SilentRun


def _stuck_query(cutoff: datetime) -> Any:
    fr, hb = FlowRun, RunHeartbeat
    return (
        select(col(fr.id), col(fr.version), col(fr.times_resurrected))
        .outerjoin(hb, col(hb.flow_run_id) == col(fr.id))
        .where(
            col(fr.state) == StateType.SUBMITTED.value,
            col(fr.state_timestamp) < cutoff,
            # A runner beats only once Running, so a beat since the claim means
            # a process is alive after all; an older row is an earlier attempt's.
            # (start_time cannot tell: an earlier attempt's Running set it.)
            or_(col(hb.last_heartbeat).is_(None), col(hb.last_heartbeat) < col(fr.state_timestamp)),
        )
        .order_by(col(fr.id))
    )


async def find_stuck_claims(ctx: ServiceContext) -> list[StuckClaim]:
    # An outage holds up claims too (the runner cannot reach Running): grace.py.
    cutoff = silence_cutoff(ctx, ctx.settings.heartbeat.submitted_timeout_seconds)
    if cutoff is None:
        return []
    async with ctx.db.read_session() as session:
        rows = (await session.execute(_stuck_query(cutoff))).all()
    return [StuckClaim(run_id, version, times) for run_id, version, times in rows]


async def requeue(ctx: ServiceContext, stats: StuckClaimStats, claims: list[StuckClaim]) -> int:
    """Requeue (or, past the limit, fail) each claim at the version it was
    read; returns how many changes went through. A run that started or moved
    on meanwhile refuses the change and is left alone."""
    assert ctx.nc is not None
    client = AsyncClient(ctx.settings, nc=ctx.nc)
    timeout, limit = ctx.settings.heartbeat.submitted_timeout_seconds, ctx.settings.lazarus.max_resurrections
    changed = 0
    for claim in claims:
        how = Resurrection(
            loop="stuck claims",
            logger_name=LOGGER_NAME,
            log_msg_id=subjects.requeue_log_msg_id(claim.flow_run_id, claim.version),
            rescheduled_log=requeued_message(timeout),
            rescheduled_state=requeued_message(timeout),
            failed=failed_message(timeout, limit),
        )
        outcome = await resurrect_or_fail(ctx, client, claim, how)
        if outcome == "rescheduled":
            stats.flow_runs_requeued += 1
        elif outcome == "failed":
            stats.flow_runs_failed += 1
        changed += outcome is not None
    return changed


def stuck_claims_loop(stats: StuckClaimStats) -> Callable[[ServiceContext], Awaitable[None]]:
    async def requeue_stuck_claims_loop(ctx: ServiceContext) -> None:
        while True:
            await requeue(ctx, stats, await find_stuck_claims(ctx))
            stats.passes += 1
            await asyncio.sleep(ctx.settings.heartbeat.zombie_check_interval_seconds)

    return requeue_stuck_claims_loop
