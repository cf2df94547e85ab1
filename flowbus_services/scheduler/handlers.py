"""NATS handlers of the scheduler service.

Reads: ``flowbus.cmd.scheduler.status`` (queue group ``scheduler``); flow_run
(the state service's table) to count late runs.
Writes: replies, from the counters of the release loop (``release.py``).
"""

from __future__ import annotations

from flowbus import subjects
from flowbus.db.views import count_late_runs
from flowbus.runtime.service import ServiceContext
from flowbus.schemas.agents import SchedulerStatus
from flowbus.schemas.common import Empty, Reply
from flowbus_services.scheduler.release import ReleaseCursor


def register(ctx: ServiceContext, state: ReleaseCursor) -> None:
    db = ctx.db
    late_after = ctx.settings.scheduler.late_after

    @ctx.broker.subscriber(subjects.SchedulerCommands.STATUS, queue=subjects.SchedulerCommands.QUEUE, title="status")
    async def status(query: Empty) -> Reply[SchedulerStatus]:
        async with db.read_session() as session:
            late_runs = await count_late_runs(session, late_after)
        return Reply.success(
            SchedulerStatus(released_total=state.released_total, last_release=state.last_release, late_runs=late_runs)
        )
