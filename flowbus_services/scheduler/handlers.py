"""NATS handlers of the scheduler service.

Reads: ``flowbus.cmd.scheduler.status`` and ``flowbus.cmd.scheduler.get_schedule``
(queue group ``scheduler``); flow and flow_group, and flow_run to count late runs (read-only).
Writes: replies, from the counters of the release loop (``release.py``) and
the planner (``planner.py``), and from the clocks of a flow's schedule.
"""

from __future__ import annotations

from flowbus import subjects
from flowbus.clocks import compile_schedule, next_times
from flowbus.db.engine import Database
from flowbus.db.tables import utcnow
from flowbus.db.views import count_late_runs, effective_schedule, load_flow
from flowbus.parameters import merge_parameters
from flowbus.runtime.lease import held_leases
from flowbus.runtime.service import ServiceContext
from flowbus.schemas.agents import SchedulerStatus
from flowbus.schemas.common import Empty, Reply
from flowbus.schemas.flows import ParameterSpec
from flowbus.schemas.schedules import GetSchedule, PlannerStatus, ScheduleOut, SkippedRuns, UpcomingRun
from flowbus_services.scheduler.planner import PLANNER_LEASE, Planner
from flowbus_services.scheduler.release import ReleaseCursor


def register(ctx: ServiceContext, state: ReleaseCursor, planner: list[Planner]) -> None:
    queue = subjects.SchedulerCommands.QUEUE

    @ctx.broker.subscriber(subjects.SchedulerCommands.STATUS, queue=queue, title="status")
    async def status(query: Empty) -> Reply[SchedulerStatus]:
        async with ctx.db.read_session() as session:
            late_runs = await count_late_runs(session, ctx.settings.scheduler.late_after)
        held = held_leases()
        return Reply.success(
            SchedulerStatus(
                released_total=state.released_total,
                last_release=state.last_release,
                late_runs=late_runs,
                planner=planner_status(planner[0]) if planner and held.get(PLANNER_LEASE) else None,
                leases_held=sorted(name for name, holds in held.items() if holds),
            )
        )

    @ctx.broker.subscriber(subjects.SchedulerCommands.GET_SCHEDULE, queue=queue, title="get_schedule")
    async def get_schedule(query: GetSchedule) -> Reply[ScheduleOut]:
        return Reply.success(await schedule_of(ctx.db, query))


def planner_status(planner: Planner) -> PlannerStatus:
    stats = planner.stats
    return PlannerStatus(
        schedules=len(planner.plans),
        plans=stats.plans,
        runs_created=stats.created_total,
        runs_deleted=stats.deleted_total,
        runs_skipped=stats.skipped_total,
        recent_skips=[
            SkippedRuns(flow_id=s.flow_id, clock_id=s.clock_id, count=s.count, first=s.first, last=s.last)
            for s in stats.recent_skips
        ],
        errors=stats.errors_total,
        last_error=stats.last_error,
        last_plan=stats.last_plan,
    )


async def schedule_of(db: Database, query: GetSchedule) -> ScheduleOut:
    """A flow's schedule and its next start times, as the planner would create them."""
    async with db.read_session() as session:
        flow, group, _project = await load_flow(session, query.flow_id)
    schedule = effective_schedule(flow, group)
    upcoming: list[UpcomingRun] = []
    if schedule is not None:
        declared = [ParameterSpec.model_validate(p) for p in flow.parameters]
        for t in next_times(compile_schedule(schedule), utcnow(), query.count):
            upcoming.append(
                UpcomingRun(
                    start=t.start,
                    clock_index=t.clock_index,
                    clock_id=t.clock_id,
                    parameters=merge_parameters(declared, group.default_parameters, t.parameter_defaults),
                    labels=t.labels,
                )
            )
    return ScheduleOut(
        flow_id=flow.id,
        flow_group_id=group.id,
        active=bool(flow.is_schedule_active and not flow.archived and schedule is not None),
        source="group" if group.schedule else "flow" if flow.schedule else None,
        clocks=schedule.clocks if schedule else [],
        upcoming=upcoming,
    )
