"""Releasing due runs onto run queues, at their time.

Reads flow_run and the ``flowbus.hint.scheduler.wake`` hints; writes
``flowbus.runq.<label-set key>`` (message id ``subjects.run_queue_msg_id``).
Sleeps until the earliest start time ahead; run_creation sends the hint only
for runs due later. Each pass releases what came due, then one sweep page of
the backlog; JetStream's duplicate window makes any number of instances safe
(docs/architecture.md, "Delivery guarantees").
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from nats.aio.msg import Msg
from pydantic import ValidationError
from sqlalchemy import and_, func, or_, select
from sqlmodel import col

from flowbus import subjects
from flowbus.db.tables import FlowRun, utcnow
from flowbus.runtime import telemetry
from flowbus.runtime.service import ServiceContext
from flowbus.schemas.runs import FlowRunCreated, RunQueued
from flowbus.states import StateType

# A run committed a little after its start time passed the previous pass's
# horizon is still a first release.
HORIZON_SLACK = timedelta(seconds=5)


@dataclass
class ReleaseCursor:
    released_total: int = 0
    last_release: datetime | None = None
    # run id -> (version, monotonic time of its last release)
    recent: dict[str, tuple[int, float]] = field(default_factory=dict)
    # Start times up to here have had their first release.
    horizon: datetime | None = None
    # Where the backlog sweep continues: (scheduled_start_time, id) of the last row seen.
    cursor: tuple[datetime, str] | None = None
    # The earliest start time still ahead, to sleep until.
    next_due: datetime | None = None
    # Monotonic time of the last sweep page.
    last_sweep: float | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)


_COLUMNS = (
    FlowRun.id,
    FlowRun.flow_id,
    FlowRun.version,
    FlowRun.labels,
    FlowRun.scheduled_start_time,
    FlowRun.traceparent,
)


def _due_page(since: datetime | None, until: datetime, after: tuple[datetime, str] | None, limit: int) -> Any:
    start, run_id = col(FlowRun.scheduled_start_time), col(FlowRun.id)
    query = select(*_COLUMNS).where(col(FlowRun.state) == StateType.SCHEDULED.value, start <= until)  # type: ignore[call-overload]
    if since is not None:
        # First releases: a run created already due was queued with its creation.
        query = query.where(start > since, start > col(FlowRun.created))
    if after is not None:
        query = query.where(or_(start > after[0], and_(start == after[0], run_id > after[1])))
    return query.order_by(start, run_id).limit(limit)


async def release_due_runs(ctx: ServiceContext, state: ReleaseCursor) -> int:
    """One pass: first releases since the last pass, plus one page of the backlog sweep."""
    settings = ctx.settings
    batch = settings.scheduler.release_batch
    now = utcnow()
    since = (state.horizon or now - timedelta(seconds=settings.nats.duplicate_window_seconds)) - HORIZON_SLACK
    rows: list[Sequence[Any]] = []
    async with ctx.db.read_session() as session:
        after: tuple[datetime, str] | None = None
        while True:
            page = (await session.execute(_due_page(since, now, after, batch))).all()
            rows.extend(page)
            if len(page) < batch:
                break
            after = (page[-1][4], page[-1][0])
        mono = time.monotonic()
        if state.last_sweep is None or mono - state.last_sweep >= settings.scheduler.sweep_interval:
            state.last_sweep = mono
            sweep = (await session.execute(_due_page(None, now, state.cursor, batch))).all()
            state.cursor = (sweep[-1][4], sweep[-1][0]) if len(sweep) == batch else None
            rows.extend(sweep)
        state.next_due = (
            await session.execute(
                select(func.min(FlowRun.scheduled_start_time)).where(
                    col(FlowRun.state) == StateType.SCHEDULED.value, col(FlowRun.scheduled_start_time) > now
                )
            )
        ).scalar_one_or_none()
    state.horizon = now
    mono = time.monotonic()
    window = settings.nats.duplicate_window_seconds
    due: dict[str, RunQueued] = {}
    for run_id, flow_id, version, labels, start, traceparent in rows:
        previous = state.recent.get(run_id)
        if previous is not None and previous[0] == version and mono - previous[1] < window:
            continue
        due[run_id] = RunQueued(
            flow_run_id=run_id,
            flow_id=flow_id,
            version=version,
            labels=labels,
            scheduled_start_time=start,
            traceparent=telemetry.step_traceparent(
                "queue_flow_run", traceparent, service="scheduler", flow_run_id=run_id, flow_id=flow_id
            ),
        )
    if due:
        js = ctx.jetstream
        await asyncio.gather(
            *(
                js.publish(
                    subjects.run_queue(run.labels),
                    run.model_dump_json().encode(),
                    headers={"Nats-Msg-Id": subjects.run_queue_msg_id(run.flow_run_id, run.version)},
                )
                for run in due.values()
            )
        )
        for run_id, run in due.items():
            state.recent[run_id] = (run.version, mono)
        state.released_total += len(due)
        state.last_release = now
    # A release older than the window would be repeated anyway; forget it.
    for run_id, (_, when) in list(state.recent.items()):
        if mono - when >= window:
            del state.recent[run_id]
    return len(due)


def release_loop(state: ReleaseCursor) -> Callable[[ServiceContext], Awaitable[None]]:
    async def release_due(ctx: ServiceContext) -> None:
        async def on_wake(msg: Msg) -> None:
            with contextlib.suppress(ValidationError):
                start = FlowRunCreated.model_validate_json(msg.data).scheduled_start_time
                # Due later than now but sooner than we planned to wake: wake to re-plan.
                if start > utcnow() and (state.next_due is None or start < state.next_due):
                    state.next_due = start
                    state.wake.set()

        assert ctx.nc is not None
        wake = await ctx.nc.subscribe(subjects.SCHEDULER_WAKE, cb=on_wake)
        try:
            while True:
                await release_due_runs(ctx, state)
                delay = ctx.settings.scheduler.release_interval
                if state.next_due is not None:
                    # A millisecond late rather than early: the next pass must see the run as due.
                    delay = min(delay, max(0.0, (state.next_due - utcnow()).total_seconds()) + 0.001)
                state.wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await state.wake.wait()
        finally:
            with contextlib.suppress(Exception):
                await wake.unsubscribe()

    return release_due
