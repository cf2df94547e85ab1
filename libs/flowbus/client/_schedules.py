"""Schedules: a flow's upcoming runs and the scheduler's status.

Writes: ``flowbus.cmd.scheduler.get_schedule`` and ``flowbus.cmd.scheduler.status`` requests.
"""

from __future__ import annotations

from flowbus import subjects
from flowbus.client._transport import Transport
from flowbus.schemas.agents import SchedulerStatus
from flowbus.schemas.common import Empty
from flowbus.schemas.schedules import GetSchedule, ScheduleOut


class Schedules(Transport):
    """What the scheduler will do, and what it has done."""

    async def get_schedule(self, flow_id: str, count: int = 10) -> ScheduleOut:
        """The flow's schedule (the group's if set, else its own), whether it is
        active, and its next ``count`` start times with their clock, parameters and labels."""
        query = GetSchedule(flow_id=flow_id, count=count)
        return await self.request(subjects.SchedulerCommands.GET_SCHEDULE, query, ScheduleOut, idempotent=True)

    async def get_scheduler_status(self) -> SchedulerStatus:
        """One scheduler instance's counters (runs released; created, deleted and
        skipped from clocks) and how many runs are late now."""
        return await self.request(subjects.SchedulerCommands.STATUS, Empty(), SchedulerStatus, idempotent=True)
