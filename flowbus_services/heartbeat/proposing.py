"""Proposing a transition read from the database, as the heartbeat service's loops do.

Writes: ``flowbus.cmd.state.set_flow_run_state`` (through the request it is
given, or, in ``resurrect_or_fail``, its own); ``flowbus.logs.<flow_run_id>``
(one ``LogBatch`` before each resurrection or failure).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Literal

from flowbus import subjects
from flowbus.client import AsyncClient
from flowbus.db.tables import utcnow
from flowbus.runtime import telemetry
from flowbus.runtime.service import ServiceContext
from flowbus.schemas.common import Conflict, NotFound, VersionLockingError
from flowbus.schemas.runs import LogBatch, LogRecord
from flowbus.states import StateType

log = logging.getLogger(__name__)


async def propose(request: Awaitable[object], loop: str) -> bool:
    """Send one transition at the version the loop read; False when the run
    moved on since (another writer won: the run finished or started after
    all, a second instance, a task run became active): nothing to do then."""
    try:
        await request
        return True
    except (VersionLockingError, Conflict, NotFound) as exc:
        log.info("%s skipped a run: %s", loop, exc)
        return False


@dataclass(frozen=True)
class SilentRun:
    """A flow run a loop found silent, as it read it."""

    flow_run_id: str
    version: int
    times_resurrected: int
    # The run's trace (flow_run.traceparent): the loop's decision is a span in it.
    traceparent: str | None = None


@dataclass(frozen=True)
class Resurrection:
    """What one loop says about one silent run when it gives the run back to
    the agents or gives up on it."""

    loop: str
    logger_name: str
    log_msg_id: str  # one log batch per run and version read, however many instances
    rescheduled_log: str
    rescheduled_state: str
    failed: str


async def resurrect_or_fail(
    ctx: ServiceContext, client: AsyncClient, run: SilentRun, how: Resurrection
) -> Literal["rescheduled", "failed"] | None:
    """Resurrect the run at the version it was read (Scheduled, counted, queued
    again) or, once ``lazarus.max_resurrections`` is reached, fail it; None
    when the run moved on meanwhile and was left alone."""
    resurrect = run.times_resurrected < ctx.settings.lazarus.max_resurrections
    with telemetry.run_span(
        f"{how.loop} {'reschedule' if resurrect else 'fail'}",
        run.traceparent,
        service="heartbeat",
        flow_run_id=run.flow_run_id,
    ):
        return await _resurrect_or_fail(ctx, client, run, how, resurrect)


async def _resurrect_or_fail(
    ctx: ServiceContext, client: AsyncClient, run: SilentRun, how: Resurrection, resurrect: bool
) -> Literal["rescheduled", "failed"] | None:
    if resurrect:
        await _log(ctx, run, how, "INFO", how.rescheduled_log)
        request = client.set_flow_run_state(
            run.flow_run_id, run.version, StateType.SCHEDULED, how.rescheduled_state, resurrect=True
        )
        return "rescheduled" if await propose(request, how.loop) else None
    await _log(ctx, run, how, "ERROR", how.failed)
    request = client.set_flow_run_state(run.flow_run_id, run.version, StateType.FAILED, how.failed)
    return "failed" if await propose(request, how.loop) else None


async def _log(
    ctx: ServiceContext, run: SilentRun, how: Resurrection, level: Literal["INFO", "ERROR"], message: str
) -> None:
    # Before the state, as the Zombie Killer does: a watcher may stop reading at the state change.
    record = LogRecord(
        flow_run_id=run.flow_run_id, timestamp=utcnow(), name=how.logger_name, level=level, message=message
    )
    await ctx.jetstream.publish(
        subjects.logs(run.flow_run_id),
        LogBatch(records=[record]).model_dump_json().encode(),
        headers={"Nats-Msg-Id": how.log_msg_id},
    )
