"""Schedules: the clocks a flow is registered with (docs/semantics.md, "Schedules").

Stored with the flow; the scheduler service creates runs from them.
``Schedule.next`` computes their times locally (``flowbus.clocks``), as the
scheduler does.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from flowbus.clocks import compile_schedule, next_times
from flowbus.schemas.flows import ClockSpec, ScheduleSpec


class Clock:
    def __init__(self, parameter_defaults: dict[str, Any] | None = None, labels: list[str] | None = None) -> None:
        self.parameter_defaults = dict(parameter_defaults or {})
        self.labels = labels

    def spec(self) -> ClockSpec:
        raise NotImplementedError


class CronClock(Clock):
    def __init__(self, cron: str, timezone: str = "UTC", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.cron, self.timezone = cron, timezone

    def spec(self) -> ClockSpec:
        return ClockSpec(
            type="cron",
            cron=self.cron,
            timezone=self.timezone,
            parameter_defaults=self.parameter_defaults,
            labels=self.labels,
        )


class IntervalClock(Clock):
    """Every ``interval`` from ``start_date`` (default 2019-01-01T00:00Z). A whole number of days
    keeps the start's wall-clock time in ``timezone``, which defaults to the zone of a
    ``start_date`` carrying a ``ZoneInfo``; shorter intervals are elapsed time."""

    def __init__(
        self, interval: timedelta, start_date: datetime | None = None, timezone: str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        if timezone is None and start_date is not None and isinstance(start_date.tzinfo, ZoneInfo):
            timezone = start_date.tzinfo.key  # the zone is lost once the date is sent as JSON
        self.interval, self.start_date, self.timezone = interval, start_date, timezone

    def spec(self) -> ClockSpec:
        return ClockSpec(
            type="interval",
            interval_seconds=self.interval.total_seconds(),
            start_date=self.start_date,
            timezone=self.timezone,
            parameter_defaults=self.parameter_defaults,
            labels=self.labels,
        )


class DatesClock(Clock):
    def __init__(self, dates: list[datetime], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.dates = list(dates)

    def spec(self) -> ClockSpec:
        return ClockSpec(type="dates", dates=self.dates, parameter_defaults=self.parameter_defaults, labels=self.labels)


class Schedule:
    def __init__(self, clocks: list[Clock]) -> None:
        self.clocks = list(clocks)

    def spec(self) -> ScheduleSpec:
        return ScheduleSpec(clocks=[c.spec() for c in self.clocks])

    def next(self, n: int, after: datetime | None = None) -> list[datetime]:
        """The next ``n`` start times over all clocks (UTC), strictly after ``after`` (default now)."""
        clocks = compile_schedule(self.spec())
        return [t.start for t in next_times(clocks, after if after is not None else datetime.now(UTC), n)]
