"""Releasing due runs onto run queues.

Reads flow_run (owned by run_creation/state); writes only to NATS:
``flowbus.runq.<label-set key>`` with message id ``runq:<run>:<version>``.

A run created already due is queued by run_creation itself; this loop
covers runs whose start time arrives later, and re-releases runs still
waiting unclaimed once per duplicate window, so a run that no agent could
take when it was due reaches an agent that comes later. JetStream drops
repeats inside the window, so any number of scheduler instances is safe.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select

from flowbus import subjects
from flowbus.db.tables import FlowRun, utcnow
from flowbus.runtime.service import ServiceContext
from flowbus.schemas.runs import RunQueued
from flowbus.states import StateType


@dataclass
class ReleaseState:
    released_total: int = 0
    last_release: datetime | None = None
    # run id -> (version, monotonic time of its last release)
    recent: dict[str, tuple[int, float]] = field(default_factory=dict)


async def release_due_runs(ctx: ServiceContext, state: ReleaseState) -> int:
    """One pass: queue every due Scheduled run not released in the current window."""
    settings = ctx.settings
    window = settings.nats.duplicate_window_seconds
    now = utcnow()
    async with ctx.db.session() as session:
        rows = (
            await session.execute(
                select(FlowRun.id, FlowRun.flow_id, FlowRun.version, FlowRun.labels, FlowRun.scheduled_start_time)  # type: ignore[call-overload]
                .where(FlowRun.state == StateType.SCHEDULED.value, FlowRun.scheduled_start_time <= now)
                .order_by(FlowRun.scheduled_start_time)
                .limit(settings.scheduler.release_batch)
            )
        ).all()
    mono = time.monotonic()
    due = []
    for run_id, flow_id, version, labels, start in rows:
        previous = state.recent.get(run_id)
        if previous is not None and previous[0] == version and mono - previous[1] < window:
            continue
        due.append(
            RunQueued(flow_run_id=run_id, flow_id=flow_id, version=version, labels=labels, scheduled_start_time=start)
        )
    if due:
        js = ctx.jetstream
        await asyncio.gather(
            *(
                js.publish(
                    subjects.run_queue(run.labels),
                    run.model_dump_json().encode(),
                    headers={"Nats-Msg-Id": f"runq:{run.flow_run_id}:{run.version}"},
                )
                for run in due
            )
        )
        for run in due:
            state.recent[run.flow_run_id] = (run.version, mono)
        state.released_total += len(due)
        state.last_release = now
    # Forget runs that left the due set (claimed, finished or deleted).
    still_due = {row[0] for row in rows}
    for run_id in list(state.recent):
        if run_id not in still_due:
            del state.recent[run_id]
    return len(due)


def release_loop(state: ReleaseState) -> Callable[[ServiceContext], Awaitable[None]]:
    async def release_due(ctx: ServiceContext) -> None:
        while True:
            await release_due_runs(ctx, state)
            await asyncio.sleep(ctx.settings.scheduler.release_interval)

    return release_due
