"""Creating runs from clocks: the next runs of every active schedule, kept created ahead.

Reads flow, flow_group and flow_run (read-only), and the flow and flow-group
events ``flowbus.evt.flow.*.*`` / ``flowbus.evt.flow_group.*.*`` (core NATS,
as hints to re-plan a group at once). Writes only through the owning
services: ``flowbus.cmd.run_creation.create_flow_runs`` (``auto_scheduled``,
keyed by group, clock and UTC time: docs/semantics.md, "Schedules") and
``flowbus.cmd.state.delete_flow_run`` (waiting runs a schedule no longer has,
at the version read, so a run claimed meanwhile is kept).

A full plan of a group compares what its schedule wants (the next
``max_scheduled_runs_per_flow`` times, plus missed times within
``catchup_window``) with its waiting auto-scheduled runs, deletes the extra
ones and creates the missing ones. Between plans, a heap ordered by each
group's earliest planned run tops a group up when that run comes due: one
clock step and one create per run, so the cost follows the runs, not the
number of schedules. Any number of instances is correct (the unique key);
a lease keeps one doing the work.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial

from nats.aio.msg import Msg
from sqlalchemy import func, select, true
from sqlmodel import col

from flowbus import subjects
from flowbus.client import AsyncClient
from flowbus.clocks import CompiledClock, ScheduledTime, compile_schedule, merged_times, times_between
from flowbus.db.engine import Database
from flowbus.db.tables import Flow, FlowGroup, FlowRun, utcnow
from flowbus.runtime.payload import PayloadLimits, PayloadRefused
from flowbus.runtime.service import ServiceContext
from flowbus.schemas.common import ErrorCode, NotFound, VersionLockingError
from flowbus.schemas.flows import Deleted, ScheduleSpec
from flowbus.schemas.runs import CreatedFlowRuns, CreateFlowRun, CreateFlowRuns, DeleteFlowRun
from flowbus.settings import Settings
from flowbus.states import StateType

log = logging.getLogger(__name__)

# A schedule's key prefix, "scheduled:<clock id>:": the clock id is 12 characters from the 11th.
_CLOCK_ID_START, _CLOCK_ID_LENGTH = len("scheduled:") + 1, 12
# Missed clock times looked at per clock after a downtime (counted, then skipped or caught up).
MAX_MISSED = 10_000
RECENT_SKIPS = 20
PLANNER_LEASE = "scheduler.planner"
# Groups read per query (IN lists stay small on every backend).
GROUP_CHUNK = 500


@dataclass(frozen=True)
class SkippedTimes:
    flow_id: str
    clock_id: str
    count: int
    first: datetime
    last: datetime


@dataclass
class PlannerStats:
    plans: int = 0
    created_total: int = 0
    deleted_total: int = 0
    skipped_total: int = 0
    errors_total: int = 0
    last_error: str | None = None
    last_plan: datetime | None = None
    recent_skips: list[SkippedTimes] = field(default_factory=list)


@dataclass
class _GroupPlan:
    group_id: str
    flow_id: str
    schedule_json: str
    clocks: list[CompiledClock]
    ahead: list[ScheduledTime]
    # The schedule's times after the last one in ``ahead``.
    upcoming: Iterator[ScheduledTime]
    # A schedule whose runs run_creation refuses (a parameter it does not
    # know) is not tried again until it changes.
    broken: bool = False


@dataclass(frozen=True)
class _Active:
    flow_id: str
    group_id: str
    schedule_json: str
    group_updated: datetime


@dataclass(frozen=True)
class _Waiting:
    id: str
    version: int
    flow_id: str
    key: str
    start: datetime


@dataclass
class _Work:
    deletes: list[_Waiting] = field(default_factory=list)
    creates: list[tuple[_GroupPlan, ScheduledTime]] = field(default_factory=list)


class Planner:
    """Plans runs from clocks; ``now`` is injectable, so tests cover hours of schedule in milliseconds."""

    def __init__(
        self, db: Database, client: AsyncClient, settings: Settings, now: Callable[[], datetime] = utcnow
    ) -> None:
        self.db, self.client, self.settings, self.now = db, client, settings, now
        self.stats = PlannerStats()
        self.plans: dict[str, _GroupPlan] = {}
        # (earliest planned start, group id); stale entries are skipped when popped.
        self._due: list[tuple[datetime, str]] = []
        self.dirty: set[str] = set()
        self.wake = asyncio.Event()

    @property
    def ahead_count(self) -> int:
        return self.settings.scheduler.max_scheduled_runs_per_flow

    def mark_dirty(self, group_id: str) -> None:
        self.dirty.add(group_id)
        self.wake.set()

    def next_due(self) -> datetime | None:
        while self._due:
            start, group_id = self._due[0]
            plan = self.plans.get(group_id)
            if plan is not None and plan.ahead and plan.ahead[0].start == start:
                return start
            heapq.heappop(self._due)
        return None

    # ---- full plans -------------------------------------------------------

    async def plan(self, group_ids: Iterable[str] | None = None) -> None:
        """Plan the given groups (every group with an active schedule when None) from the database."""
        now = self.now()
        if group_ids is None:
            await self._plan_chunk(None, now)
        else:
            ids = sorted(set(group_ids))
            for start in range(0, len(ids), GROUP_CHUNK):
                await self._plan_chunk(ids[start : start + GROUP_CHUNK], now)
        self.stats.plans += 1
        self.stats.last_plan = now

    async def _plan_chunk(self, group_ids: list[str] | None, now: datetime) -> None:
        active, waiting = await self._read(group_ids, now)
        frontier = await self._frontiers([a.group_id for a in active.values() if a.group_id not in self.plans])
        work = _Work()
        # A full plan also visits groups no longer active that still have waiting runs or a plan.
        planned = set(active) | set(waiting) | set(self.plans) if group_ids is None else set(group_ids)
        for group_id in planned:
            current = active.get(group_id)
            rows = waiting.get(group_id, [])
            if current is None:
                self.plans.pop(group_id, None)
                work.deletes.extend(rows)
                continue
            self._plan_group(current, rows, frontier.get(group_id, {}), now, work)
        await self._execute(work)

    def _plan_group(
        self, active: _Active, rows: list[_Waiting], frontier: dict[str, datetime], now: datetime, work: _Work
    ) -> None:
        plan = self.plans.get(active.group_id)
        if plan is not None and (plan.flow_id, plan.schedule_json) == (active.flow_id, active.schedule_json):
            if plan.broken:
                return
            self._pop_due(plan, now)
            # Unchanged and complete: nothing to do (the common case of a resync).
            if {t.key for t in plan.ahead} == {r.key for r in rows if r.flow_id == plan.flow_id} and len(
                plan.ahead
            ) == len(rows):
                return
            clocks = plan.clocks
        else:
            clocks = compile_schedule(ScheduleSpec.model_validate_json(active.schedule_json))
        wanted = self._missed(active, clocks, frontier, now)
        upcoming = merged_times(clocks, now)
        ahead = list(itertools.islice(upcoming, self.ahead_count))
        wanted += ahead
        keys = {t.key for t in wanted}
        kept = {r.key for r in rows if r.flow_id == active.flow_id and r.key in keys}
        work.deletes.extend(r for r in rows if r.key not in kept)
        plan = _GroupPlan(
            group_id=active.group_id,
            flow_id=active.flow_id,
            schedule_json=active.schedule_json,
            clocks=clocks,
            ahead=ahead,
            upcoming=upcoming,
        )
        self.plans[active.group_id] = plan
        work.creates.extend((plan, t) for t in wanted if t.key not in kept)
        self._push(plan)

    def _missed(
        self, active: _Active, clocks: Sequence[CompiledClock], frontier: dict[str, datetime], now: datetime
    ) -> list[ScheduledTime]:
        """Clock times that passed unplanned since each clock's last run (a downtime): those within
        the catch-up window are returned, to be created; the others are counted as skipped."""
        window_start = now - timedelta(seconds=self.settings.scheduler.catchup_window)
        caught: list[ScheduledTime] = []
        for clock in clocks:
            last = frontier.get(clock.id)
            if last is None or last >= now:
                continue
            # Never before the group last changed: a schedule turned back on does not run its past.
            since = max(last, active.group_updated)
            missed = times_between([clock], since, now, MAX_MISSED)
            skipped = [t for t in missed if t.start <= window_start]
            caught += [t for t in missed if t.start > window_start]
            if skipped:
                self._skipped(active.flow_id, clock.id, skipped)
        return caught

    def _skipped(self, flow_id: str, clock_id: str, times: list[ScheduledTime]) -> None:
        entry = SkippedTimes(flow_id, clock_id, len(times), times[0].start, times[-1].start)
        self.stats.skipped_total += entry.count
        self.stats.recent_skips = [*self.stats.recent_skips[-(RECENT_SKIPS - 1) :], entry]
        log.warning(
            "schedule of flow %s: %d clock times between %s and %s passed while no scheduler ran; skipped",
            flow_id,
            entry.count,
            entry.first.isoformat(),
            entry.last.isoformat(),
        )

    async def _read(
        self, group_ids: list[str] | None, now: datetime
    ) -> tuple[dict[str, _Active], dict[str, list[_Waiting]]]:
        flows = (
            select(
                col(Flow.id),
                col(Flow.flow_group_id),
                col(Flow.schedule),
                col(FlowGroup.schedule),
                col(FlowGroup.updated),
            )
            .join(FlowGroup, col(FlowGroup.id) == col(Flow.flow_group_id))
            .where(col(Flow.archived).is_(False), col(Flow.is_schedule_active).is_(True))
            .order_by(col(Flow.flow_group_id), col(Flow.version).desc())
        )
        runs = select(
            col(FlowRun.id),
            col(FlowRun.version),
            col(FlowRun.flow_id),
            col(FlowRun.flow_group_id),
            col(FlowRun.idempotency_key),
            col(FlowRun.scheduled_start_time),
        ).where(
            col(FlowRun.state) == StateType.SCHEDULED.value,
            col(FlowRun.scheduled_start_time) > now,
            col(FlowRun.auto_scheduled) == true(),
        )
        if group_ids is not None:
            flows = flows.where(col(Flow.flow_group_id).in_(group_ids))
            runs = runs.where(col(FlowRun.flow_group_id).in_(group_ids))
        active: dict[str, _Active] = {}
        waiting: dict[str, list[_Waiting]] = {}
        async with self.db.read_session() as session:
            for flow_id, group_id, flow_schedule, group_schedule, updated in (await session.execute(flows)).all():
                schedule = group_schedule or flow_schedule
                # The newest live version of a group gets its runs.
                if schedule and group_id not in active:
                    active[group_id] = _Active(flow_id, group_id, json.dumps(schedule, sort_keys=True), updated)
            for row in (await session.execute(runs)).all():
                waiting.setdefault(row[3], []).append(_Waiting(row[0], row[1], row[2], row[4] or "", row[5]))
        return active, waiting

    async def _frontiers(self, group_ids: list[str]) -> dict[str, dict[str, datetime]]:
        """The latest start time each clock of each group has a run for (any state)."""
        if not group_ids:
            return {}
        clock_id = func.substr(col(FlowRun.idempotency_key), _CLOCK_ID_START, _CLOCK_ID_LENGTH)
        out: dict[str, dict[str, datetime]] = {}
        async with self.db.read_session() as session:
            for start in range(0, len(group_ids), GROUP_CHUNK):
                query = (
                    select(col(FlowRun.flow_group_id), clock_id, func.max(col(FlowRun.scheduled_start_time)))
                    .where(
                        col(FlowRun.auto_scheduled) == true(),
                        col(FlowRun.flow_group_id).in_(group_ids[start : start + GROUP_CHUNK]),
                    )
                    .group_by(col(FlowRun.flow_group_id), clock_id)
                )
                for group_id, clock, latest in (await session.execute(query)).all():
                    out.setdefault(group_id, {})[clock] = latest
        return out

    # ---- between plans ----------------------------------------------------

    async def advance(self) -> int:
        """Top up every group whose earliest planned run came due; how many runs it asked for."""
        now = self.now()
        work = _Work()
        while (start := self.next_due()) is not None and start <= now:
            _, group_id = heapq.heappop(self._due)
            plan = self.plans[group_id]
            self._pop_due(plan, now)
            if plan.broken:
                continue
            while len(plan.ahead) < self.ahead_count:
                upcoming = next(plan.upcoming, None)
                if upcoming is None:
                    break
                plan.ahead.append(upcoming)
                work.creates.append((plan, upcoming))
            self._push(plan)
        await self._execute(work)
        return len(work.creates)

    def _pop_due(self, plan: _GroupPlan, now: datetime) -> None:
        while plan.ahead and plan.ahead[0].start <= now:
            plan.ahead.pop(0)

    def _push(self, plan: _GroupPlan) -> None:
        if plan.ahead:
            heapq.heappush(self._due, (plan.ahead[0].start, plan.group_id))

    # ---- commands ---------------------------------------------------------

    async def _execute(self, work: _Work) -> None:
        # Deletes first: a key a new version takes over is free before it is asked for.
        await self._in_flight([partial(self._delete, run) for run in work.deletes])
        batch = self.settings.scheduler.planner_batch
        creates = work.creates
        await self._in_flight([partial(self._create, creates[i : i + batch]) for i in range(0, len(creates), batch)])

    async def _in_flight(self, commands: Sequence[Callable[[], Awaitable[None]]]) -> None:
        """Send the commands, ``planner_concurrency`` at a time. A fixed set of
        workers, not one task per command behind a semaphore: a cold start
        sends a command for every few hundred runs ahead of every schedule,
        and asyncio's semaphore costs time in proportion to its waiters on
        every acquire."""
        pending = iter(commands)

        async def worker() -> None:
            for command in pending:
                await command()

        workers = min(len(commands), self.settings.scheduler.planner_concurrency)
        await asyncio.gather(*(worker() for _ in range(workers)))

    async def _delete(self, run: _Waiting) -> None:
        cmd = DeleteFlowRun(flow_run_id=run.id, version=run.version)
        try:
            await self.client.request(subjects.StateCommands.DELETE_FLOW_RUN, cmd, Deleted)
            self.stats.deleted_total += 1
        except (NotFound, VersionLockingError):
            pass  # already gone, or claimed meanwhile: it runs as planned
        except Exception as exc:  # the next resync tries again
            self._error(f"deleting run {run.id}: {exc}")

    async def _create(self, batch: Sequence[tuple[_GroupPlan, ScheduledTime]]) -> None:
        """One create_flow_runs command for a batch of planned runs: a command per
        run cost the planner most of its time (docs/performance.md, "Scheduler")."""
        cmd = CreateFlowRuns(
            runs=[
                CreateFlowRun(
                    flow_id=plan.flow_id,
                    parameters=upcoming.parameter_defaults,
                    labels=upcoming.labels,
                    scheduled_start_time=upcoming.start,
                    idempotency_key=upcoming.key,
                    auto_scheduled=True,
                )
                for plan, upcoming in batch
            ]
        )
        try:
            reply = await self.client.request(
                subjects.RunCreationCommands.CREATE_FLOW_RUNS, cmd, CreatedFlowRuns, idempotent=True
            )
        except Exception as exc:
            # Lost or refused as a whole: each group is re-planned from the database.
            self._error(f"creating {len(batch)} runs: {exc}")
            for plan, _ in batch:
                self.mark_dirty(plan.group_id)
            return
        for (plan, upcoming), outcome in zip(batch, reply.outcomes, strict=True):
            if outcome.error is None:
                self.stats.created_total += 1
                continue
            self._error(
                f"creating the {upcoming.start.isoformat()} run of flow {plan.flow_id}: {outcome.error.message}"
            )
            if outcome.error.code is ErrorCode.VALIDATION_ERROR:
                # The clock's parameters are refused: not tried again until the schedule changes.
                plan.broken = True
            else:
                # The flow changed under the plan (archived, deleted): re-plan the group.
                self.mark_dirty(plan.group_id)

    def _error(self, message: str) -> None:
        self.stats.errors_total += 1
        self.stats.last_error = message
        log.warning("scheduler planner: %s", message)


def planner_loop(holder: list[Planner]) -> Callable[[ServiceContext], Awaitable[None]]:
    """The planning loop; the Planner it builds is put in ``holder`` for the status command."""

    async def plan_schedules(ctx: ServiceContext) -> None:
        settings = ctx.settings
        assert ctx.nc is not None
        planner = Planner(ctx.db, AsyncClient(settings, nc=ctx.nc), settings)
        holder[:] = [planner]

        limits = PayloadLimits.of(settings)

        async def on_fact(msg: Msg) -> None:
            group_id = _group_of(msg, limits)
            if group_id:
                planner.mark_dirty(group_id)

        hints = [await ctx.nc.subscribe(s, cb=on_fact) for s in subjects.SCHEDULE_REPLAN_HINTS]
        try:
            await planner.plan()
            resync_at = asyncio.get_running_loop().time() + settings.scheduler.resync_interval
            while True:
                clock = asyncio.get_running_loop().time()
                if clock >= resync_at:
                    planner.dirty.clear()
                    await planner.plan()
                    resync_at = clock + settings.scheduler.resync_interval
                elif planner.dirty:
                    dirty, planner.dirty = planner.dirty, set()
                    await planner.plan(dirty)
                await planner.advance()
                delay = resync_at - asyncio.get_running_loop().time()
                due = planner.next_due()
                if due is not None:
                    delay = min(delay, (due - planner.now()).total_seconds() + 0.001)
                planner.wake.clear()
                if planner.dirty:
                    continue
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, delay)):
                        await planner.wake.wait()
        finally:
            for sub in hints:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()

    return plan_schedules


def _group_of(msg: Msg, limits: PayloadLimits) -> str | None:
    """The flow group a flow or flow-group event is about; None for one that is not JSON."""
    parts = msg.subject.split(".")
    if len(parts) >= 4 and parts[2] == "flow_group":
        return parts[3]
    try:
        data = limits.loads(msg.data)
    except (ValueError, PayloadRefused):
        return None
    group_id = data.get("flow_group_id") if isinstance(data, dict) else None
    return group_id if isinstance(group_id, str) else None
