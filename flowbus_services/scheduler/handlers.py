"""NATS handlers of the scheduler service.

Reads: ``flowbus.cmd.scheduler.status`` (queue group ``scheduler``).
Writes: replies, from the counters of the release loop (``release.py``).
"""

from __future__ import annotations

from flowbus import subjects
from flowbus.runtime.service import ServiceContext
from flowbus.schemas.agents import SchedulerStatus
from flowbus.schemas.common import Empty, Reply
from flowbus_services.scheduler.release import ReleaseCursor


def register(ctx: ServiceContext, state: ReleaseCursor) -> None:
    @ctx.broker.subscriber(subjects.SchedulerCommands.STATUS, queue=subjects.SchedulerCommands.QUEUE, title="status")
    async def status(query: Empty) -> Reply[SchedulerStatus]:
        return Reply.success(SchedulerStatus(released_total=state.released_total, last_release=state.last_release))
