"""Messages of the scheduler's schedule commands: a flow's upcoming runs and the planner's counters."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import Field

from flowbus.schemas.common import Message
from flowbus.schemas.flows import ClockSpec, Key


class GetSchedule(Message):
    flow_id: Key
    # How many upcoming start times to list.
    count: int = Field(default=10, ge=1, le=1000)


class UpcomingRun(Message):
    start: datetime
    clock_index: int
    clock_id: str
    # The run's parameters: the clock's over the group's defaults over the flow's.
    parameters: dict[str, Any]
    # The clock's labels, when it sets any (else the run takes the flow's).
    labels: list[str] | None


class ScheduleOut(Message):
    flow_id: str
    flow_group_id: str
    # Whether the scheduler creates runs for this flow: its schedule is on and it is not archived.
    active: bool
    # Where the schedule comes from: the flow group's (it wins), the flow's own, or none.
    source: str | None
    clocks: list[ClockSpec]
    upcoming: list[UpcomingRun]


class SkippedRuns(Message):
    flow_id: str
    clock_id: str
    count: int
    first: datetime
    last: datetime


class PlannerStatus(Message):
    """The counters of this scheduler instance's planner since it started."""

    # Groups whose schedule it keeps planned.
    schedules: int
    plans: int
    runs_created: int
    runs_deleted: int
    # Clock times that passed while no scheduler ran, outside the catch-up window.
    runs_skipped: int
    recent_skips: list[SkippedRuns]
    errors: int
    last_error: str | None
    last_plan: datetime | None
