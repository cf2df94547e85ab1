"""Schedules: the clocks a flow is registered with (docs/semantics.md, "Schedules").

Stored with the flow; nothing turns them into runs yet.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

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
    def __init__(self, interval: timedelta, start_date: datetime | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.interval, self.start_date = interval, start_date

    def spec(self) -> ClockSpec:
        return ClockSpec(
            type="interval",
            interval_seconds=self.interval.total_seconds(),
            start_date=self.start_date,
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
