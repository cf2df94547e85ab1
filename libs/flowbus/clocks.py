"""The clock math of schedules: when a flow's clocks fire (docs/semantics.md, "Schedules").

Pure computation, no I/O, no subjects. Cron expressions are parsed and
evaluated by cronsim, whose DST behaviour is Debian cron's; zones are IANA
names through zoneinfo. Every time returned is timezone-aware UTC.
"""

from __future__ import annotations

import bisect
import hashlib
import heapq
import itertools
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

if TYPE_CHECKING:
    from flowbus.schemas.flows import ClockSpec, ScheduleSpec

# Where an interval clock without a start date counts from, so its times are
# the same after every restart (the scheduler derives idempotency keys from them).
INTERVAL_EPOCH = datetime(2019, 1, 1, tzinfo=UTC)

_DAY = timedelta(days=1)
_MINUTE = timedelta(minutes=1)
# The nicknames Vixie and Debian cron accept, spelled out as the five fields cronsim reads.
_CRON_NICKNAMES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}


# ---- parsing (also used by the ClockSpec validators) ---------------------------------


def cron_fields(expr: str) -> str:
    """The five-field form of a cron expression; ``ValueError`` naming the bad part if it is invalid."""
    text = expr.strip()
    fields = _CRON_NICKNAMES.get(text.lower(), text)
    if len(fields.split()) != 5:
        raise ValueError(
            f"invalid cron {expr!r}: needs 5 fields (minute hour day-of-month month day-of-week) or a nickname"
            f" such as @daily"
        )
    try:
        CronSim(fields, INTERVAL_EPOCH)
    except CronSimError as error:
        raise ValueError(f"invalid cron {expr!r}: {error}") from None
    return fields


def zone(name: str | None) -> tzinfo:
    """The IANA zone called ``name`` (UTC for none); ``ValueError`` if there is none by that name."""
    if name is None or name == "UTC":
        return UTC  # cronsim skips its DST handling for this very object: faster, and UTC has no DST
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown timezone {name!r} (give an IANA name such as 'Europe/Berlin')") from None


def is_aware(moment: datetime) -> bool:
    return moment.tzinfo is not None and moment.utcoffset() is not None


# ---- identity -------------------------------------------------------------------------


def clock_id(spec: ClockSpec) -> str:
    """12 hex characters naming the clock by its content: any change to it gives another id."""
    canonical = json.dumps(spec.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def schedule_key(clock_id: str, start: datetime) -> str:
    """``scheduled:<clock_id>:<start in UTC>``, e.g. ``scheduled:0123456789ab:2026-03-29T01:00:00Z``."""
    return f"scheduled:{clock_id}:{_iso_utc(start)}"


def _iso_utc(moment: datetime) -> str:
    if not is_aware(moment):
        raise ValueError("start must be timezone-aware")
    utc = moment.astimezone(UTC)
    text = utc.strftime("%Y-%m-%dT%H:%M:%S")
    return f"{text}.{utc.microsecond:06d}Z" if utc.microsecond else f"{text}Z"


@dataclass(frozen=True)
class ScheduledTime:
    start: datetime  # timezone-aware, in UTC
    clock_id: str
    clock_index: int  # position of the clock in the schedule
    parameter_defaults: dict[str, Any]
    labels: list[str] | None

    @property
    def key(self) -> str:
        return schedule_key(self.clock_id, self.start)


# ---- one clock --------------------------------------------------------------------------


class CompiledClock:
    """A clock made ready to compute times: parsed once, then asked any number of times."""

    __slots__ = ("_cron", "_dates", "_start", "_step", "_zone", "id", "index", "spec")

    def __init__(self, spec: ClockSpec, index: int = 0) -> None:
        self.spec, self.index, self.id = spec, index, clock_id(spec)
        self._zone = zone(spec.timezone)
        self._cron = cron_fields(spec.cron) if spec.type == "cron" and spec.cron else ""
        self._start = spec.start_date.astimezone(UTC) if spec.start_date else INTERVAL_EPOCH
        self._step = timedelta(seconds=spec.interval_seconds or 0)
        self._dates = sorted({d.astimezone(UTC) for d in spec.dates or ()})

    def times_after(self, after: datetime) -> Iterator[datetime]:
        """The clock's times strictly after ``after`` (aware), increasing, in UTC; finite for dates clocks."""
        if not is_aware(after):
            raise ValueError("after must be timezone-aware")
        if self.spec.type == "cron":
            return self._cron_times(after)
        if self.spec.type == "dates":
            return iter(self._dates[bisect.bisect_right(self._dates, after) :])
        if self._step % _DAY or self._zone is UTC:
            return self._elapsed_times(after)
        return self._local_day_times(after)

    def _cron_times(self, after: datetime) -> Iterator[datetime]:
        if self._zone is UTC:
            yield from CronSim(self._cron, after.astimezone(UTC))
            return
        # The cron's wall-clock times in the zone, each placed by the one DST rule
        # (``_local``), whatever the cron: a time that does not exist fires at the
        # first valid minute after it, one that happens twice at its first
        # occurrence, and several that land on one instant fire once. Starting at
        # ``after``'s own wall-clock time is enough: a skipped time before it lands
        # at or before ``after``, and a repeated one at its first occurrence.
        last: datetime | None = None
        for wall in CronSim(self._cron, after.astimezone(self._zone).replace(tzinfo=None)):
            moment = _local(wall, self._zone)
            if moment > after and moment != last:
                last = moment
                yield moment

    def _elapsed_times(self, after: datetime) -> Iterator[datetime]:
        """start + k x interval in absolute time (timedelta arithmetic is exact to the microsecond)."""
        k = max((after - self._start) // self._step + 1, 0)
        moment = self._start + k * self._step
        while True:
            yield moment
            moment += self._step

    def _local_day_times(self, after: datetime) -> Iterator[datetime]:
        """Whole days in the clock's zone: the start's wall-clock time of day, whatever the UTC offset."""
        days = self._step // _DAY
        wall = self._start.astimezone(self._zone).replace(tzinfo=None)
        # The UTC offset moves a time by hours at most, so one step back from the estimate is enough.
        k = max((after - self._start) // self._step - 1, 0)
        while True:
            moment = self._start if k == 0 else _local(wall + timedelta(days=days * k), self._zone)
            if moment > after:
                yield moment
            k += 1


def _local(wall: datetime, tz: tzinfo) -> datetime:
    """The instant a naive wall-clock time names in ``tz``, in UTC, by the cron rule: a repeated
    time is its first occurrence (fold=0); a skipped time is the first valid minute after it."""
    moment = wall.replace(tzinfo=tz)
    if _exists(moment):
        return moment.astimezone(UTC)
    wall = wall.replace(second=0, microsecond=0)
    for _ in range(2 * 24 * 60):  # no zone has ever skipped more than a day
        wall += _MINUTE
        moment = wall.replace(tzinfo=tz)
        if _exists(moment):
            return moment.astimezone(UTC)
    raise ValueError(f"{wall} does not exist in {tz}")  # pragma: no cover - no such zone


def _exists(moment: datetime) -> bool:
    return moment.astimezone(UTC).astimezone(moment.tzinfo).replace(tzinfo=None) == moment.replace(tzinfo=None)


# ---- a schedule -------------------------------------------------------------------------


def compile_schedule(schedule: ScheduleSpec) -> list[CompiledClock]:
    return [CompiledClock(spec, index) for index, spec in enumerate(schedule.clocks)]


def _tagged(clock: CompiledClock, position: int, after: datetime) -> Iterator[tuple[datetime, int, int, CompiledClock]]:
    # position breaks ties between clocks given the same index, so clocks themselves are never compared
    return ((moment, clock.index, position, clock) for moment in clock.times_after(after))


def merged_times(clocks: Sequence[CompiledClock], after: datetime) -> Iterator[ScheduledTime]:
    """Every time strictly after ``after`` over all clocks, lazily, sorted by (start, clock_index):
    the scheduler keeps one per schedule and takes the next time as each run comes due."""
    streams = [_tagged(clock, position, after) for position, clock in enumerate(clocks)]
    for moment, index, _, clock in heapq.merge(*streams):
        yield ScheduledTime(
            start=moment,
            clock_id=clock.id,
            clock_index=index,
            parameter_defaults=dict(clock.spec.parameter_defaults),
            labels=list(clock.spec.labels) if clock.spec.labels is not None else None,
        )


def next_times(clocks: Sequence[CompiledClock], after: datetime, n: int) -> list[ScheduledTime]:
    """The first ``n`` times strictly after ``after`` over all clocks, sorted by (start, clock_index)."""
    return list(itertools.islice(merged_times(clocks, after), max(n, 0)))


def times_between(clocks: Sequence[CompiledClock], after: datetime, until: datetime, limit: int) -> list[ScheduledTime]:
    """The times in (``after``, ``until``], sorted by (start, clock_index), at most ``limit`` of them."""
    if not is_aware(until):
        raise ValueError("until must be timezone-aware")
    due = itertools.takewhile(lambda s: s.start <= until, merged_times(clocks, after))
    return list(itertools.islice(due, max(limit, 0)))
