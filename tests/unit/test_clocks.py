"""The clock math (flowbus.clocks) and the validation of clocks (ClockSpec, SerializedFlow)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from flowbus import CronClock, DatesClock, IntervalClock, Schedule
from flowbus.clocks import (
    INTERVAL_EPOCH,
    CompiledClock,
    ScheduledTime,
    clock_id,
    compile_schedule,
    next_times,
    schedule_key,
    times_between,
)
from flowbus.schemas.flows import ClockSpec, ParameterSpec, ScheduleSpec, SerializedFlow, StorageSpec

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def cron(expr: str, tz: str | None = None, **kwargs: Any) -> CompiledClock:
    return CompiledClock(ClockSpec(type="cron", cron=expr, timezone=tz, **kwargs))


def interval(seconds: float, start: datetime | None = None, tz: str | None = None) -> CompiledClock:
    return CompiledClock(ClockSpec(type="interval", interval_seconds=seconds, start_date=start, timezone=tz))


def first(clock: CompiledClock, after: datetime, n: int) -> list[datetime]:
    times = clock.times_after(after)
    return [next(times) for _ in range(n)]


# ---- cron ------------------------------------------------------------------------------


def test_cron_in_utc_is_strictly_after() -> None:
    clock = cron("0 6 * * *", "UTC")
    assert first(clock, utc(2026, 1, 1, 6), 2) == [utc(2026, 1, 2, 6), utc(2026, 1, 3, 6)]
    assert first(clock, utc(2026, 1, 1, 5, 59, 59), 1) == [utc(2026, 1, 1, 6)]
    every_minute = cron("* * * * *")
    assert first(every_minute, datetime(2026, 1, 1, 0, 0, 0, 500, tzinfo=UTC), 2) == [
        utc(2026, 1, 1, 0, 1),
        utc(2026, 1, 1, 0, 2),
    ]


def test_cron_times_are_aware_utc_whatever_the_zone_of_after() -> None:
    times = first(cron("0 9 * * 1-5", "Europe/Berlin"), datetime(2026, 1, 2, 12, tzinfo=NEW_YORK), 2)
    assert times == [utc(2026, 1, 5, 8), utc(2026, 1, 6, 8)]  # Friday 18:00 Berlin is past; then Mon, Tue
    assert all(t.tzinfo is UTC for t in times)


def test_cron_keeps_local_time_in_its_zone() -> None:
    # 09:00 in Berlin is 08:00 UTC in winter and 07:00 UTC in summer.
    assert first(cron("0 9 * * *", "Europe/Berlin"), utc(2026, 3, 28, 9), 2) == [
        utc(2026, 3, 29, 7),
        utc(2026, 3, 30, 7),
    ]
    assert first(cron("0 9 * * *", "America/New_York"), utc(2026, 3, 7, 15), 2) == [
        utc(2026, 3, 8, 13),
        utc(2026, 3, 9, 13),
    ]


def test_cron_nicknames() -> None:
    assert first(cron("@hourly"), utc(2026, 1, 1, 0, 30), 1) == [utc(2026, 1, 1, 1)]
    assert first(cron("@daily"), utc(2026, 1, 1, 0, 30), 1) == [utc(2026, 1, 2)]


# ---- DST ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "tz", "after", "expected"),
    [
        # Spring forward: 02:30 does not exist; it fires once, at the first valid instant (03:00 local).
        ("30 2 * * *", "Europe/Berlin", utc(2026, 3, 28, 2), [utc(2026, 3, 29, 1), utc(2026, 3, 30, 0, 30)]),
        ("30 2 * * *", "America/New_York", utc(2026, 3, 7, 8), [utc(2026, 3, 8, 7), utc(2026, 3, 9, 6, 30)]),
        # Fall back: 02:30 (Berlin) and 01:30 (New York) happen twice; they fire once, at the first.
        ("30 2 * * *", "Europe/Berlin", utc(2026, 10, 24, 1), [utc(2026, 10, 25, 0, 30), utc(2026, 10, 26, 1, 30)]),
        ("30 1 * * *", "America/New_York", utc(2026, 10, 31, 6), [utc(2026, 11, 1, 5, 30), utc(2026, 11, 2, 6, 30)]),
    ],
)
def test_cron_fixed_time_across_dst(expr: str, tz: str, after: datetime, expected: list[datetime]) -> None:
    assert first(cron(expr, tz), after, 2) == expected


def test_cron_several_fixed_times_in_the_skipped_hour_fire_once() -> None:
    assert first(cron("0,30 2 * * *", "Europe/Berlin"), utc(2026, 3, 28, 23), 2) == [
        utc(2026, 3, 29, 1),
        utc(2026, 3, 30, 0),
    ]


def test_hourly_and_quarter_hour_crons_fire_each_wall_clock_time_once_across_dst() -> None:
    """The DST rule holds for every cron, not only fixed-time ones: a skipped wall-clock time
    fires at the first valid instant after it, a repeated one at its first occurrence only."""
    hourly = cron("0 * * * *", "Europe/Berlin")
    # Spring forward: 01:00 CET, then 03:00 CEST (02:00 does not exist; it lands on 03:00, once).
    assert first(hourly, utc(2026, 3, 28, 23, 30), 3) == [utc(2026, 3, 29, 0), utc(2026, 3, 29, 1), utc(2026, 3, 29, 2)]
    # Fall back: 02:00 fires at 02:00 CEST (00:00 UTC) only; next is 03:00 CET (02:00 UTC).
    assert first(hourly, utc(2026, 10, 24, 23, 30), 3) == [
        utc(2026, 10, 25, 0),
        utc(2026, 10, 25, 2),
        utc(2026, 10, 25, 3),
    ]
    # Asked during the repeated hour's second pass, it does not fire again.
    assert first(hourly, utc(2026, 10, 25, 1, 10), 1) == [utc(2026, 10, 25, 2)]
    # New York falls back at 02:00 EDT to 01:00 EST: 01:00-01:45 fire once, at EDT (05:00-05:45 UTC).
    quarter = cron("*/15 * * * *", "America/New_York")
    times = first(quarter, utc(2026, 11, 1, 4, 50), 9)
    assert times == [utc(2026, 11, 1, 5) + timedelta(minutes=15 * i) for i in range(4)] + [
        utc(2026, 11, 1, 7) + timedelta(minutes=15 * i) for i in range(5)
    ]
    # Spring forward in New York: 02:00-02:45 do not exist; all land once on 03:00 EDT (07:00 UTC).
    assert first(quarter, utc(2026, 3, 8, 6, 40), 3) == [
        utc(2026, 3, 8, 6, 45),
        utc(2026, 3, 8, 7),
        utc(2026, 3, 8, 7, 15),
    ]


# ---- intervals ---------------------------------------------------------------------------


def test_interval_without_start_counts_from_the_epoch() -> None:
    assert utc(2019, 1, 1) == INTERVAL_EPOCH
    clock = interval(7 * 60)  # 7 minutes do not divide a day: the anchor shows
    times = first(clock, utc(2026, 1, 1), 3)
    assert all((t - INTERVAL_EPOCH) % timedelta(minutes=7) == timedelta(0) for t in times)
    assert times[0] > utc(2026, 1, 1) >= times[0] - timedelta(minutes=7)
    assert first(interval(7 * 60), utc(2026, 1, 1), 3) == times  # the same after a restart


def test_interval_start_in_the_past_and_in_the_future() -> None:
    start = utc(2026, 1, 1, 0, 0, 10)
    assert first(interval(3600, start), utc(2026, 1, 1, 5), 2) == [utc(2026, 1, 1, 5, 0, 10), utc(2026, 1, 1, 6, 0, 10)]
    assert first(interval(3600, start), utc(2026, 1, 1, 5, 0, 10), 1) == [utc(2026, 1, 1, 6, 0, 10)]
    assert first(interval(3600, start), utc(2025, 6, 1), 2) == [start, start + timedelta(hours=1)]


def test_interval_with_fractional_seconds_is_exact() -> None:
    start = utc(2026, 1, 1)
    times = first(interval(0.25, start), utc(2026, 1, 1, 0, 0, 1), 3)
    assert times == [start + timedelta(seconds=s) for s in (1.25, 1.5, 1.75)]
    far = first(interval(1.1, start), start + timedelta(days=300), 1)[0]
    assert (far - start) % timedelta(seconds=1.1) == timedelta(0)


@pytest.mark.parametrize("tz", ["Europe/Berlin", "America/New_York"])
def test_sub_day_interval_is_elapsed_time_across_dst(tz: str) -> None:
    times = first(interval(3600, utc(2026, 1, 1), tz), utc(2026, 3, 7), 24 * 60)
    assert all(b - a == timedelta(hours=1) for a, b in itertools.pairwise(times))


def test_whole_days_keep_the_local_time_of_day_in_the_clock_zone() -> None:
    start = datetime(2026, 3, 27, 9, tzinfo=BERLIN)
    daily = interval(86400, start, "Europe/Berlin")
    local = [t.astimezone(BERLIN) for t in first(daily, utc(2026, 3, 26), 4)]
    assert [(t.day, t.hour) for t in local] == [(27, 9), (28, 9), (29, 9), (30, 9)]
    weekly = interval(7 * 86400, datetime(2026, 10, 20, 9, tzinfo=NEW_YORK), "America/New_York")
    assert first(weekly, utc(2026, 10, 21), 2) == [utc(2026, 10, 27, 13), utc(2026, 11, 3, 14)]
    # Without a zone a day is 86400 s: the UTC time stays, the local one moves.
    assert first(interval(86400, start), utc(2026, 3, 28, 12), 1) == [utc(2026, 3, 29, 8)]


def test_whole_days_on_skipped_and_repeated_local_times() -> None:
    skipped = interval(86400, datetime(2026, 3, 27, 2, 30, tzinfo=BERLIN), "Europe/Berlin")
    assert first(skipped, utc(2026, 3, 28, 12), 2) == [utc(2026, 3, 29, 1), utc(2026, 3, 30, 0, 30)]
    repeated = interval(86400, datetime(2026, 10, 31, 1, 30, tzinfo=NEW_YORK), "America/New_York")
    assert first(repeated, utc(2026, 10, 31, 12), 2) == [utc(2026, 11, 1, 5, 30), utc(2026, 11, 2, 6, 30)]


def test_sdk_interval_clock_takes_the_zone_of_its_start_date() -> None:
    spec = IntervalClock(timedelta(days=1), start_date=datetime(2026, 3, 27, 9, tzinfo=BERLIN)).spec()
    assert spec.timezone == "Europe/Berlin"
    assert IntervalClock(timedelta(days=1), start_date=utc(2026, 1, 1)).spec().timezone is None
    # The zone survives the trip through JSON that the start date's ZoneInfo does not.
    again = ClockSpec.model_validate_json(spec.model_dump_json())
    assert first(CompiledClock(again), utc(2026, 3, 29), 1) == [utc(2026, 3, 29, 7)]


# ---- dates -------------------------------------------------------------------------------


def test_dates_are_sorted_deduplicated_and_finite() -> None:
    one, two = utc(2026, 5, 1), utc(2026, 6, 1)
    clock = CompiledClock(ClockSpec(type="dates", dates=[two, one, two.astimezone(BERLIN), one]))
    assert list(clock.times_after(utc(2026, 1, 1))) == [one, two]
    assert list(clock.times_after(one)) == [two]
    assert list(clock.times_after(two)) == []


# ---- schedules: merging, ties, windows ---------------------------------------------------


def test_next_times_merge_clocks_and_break_ties_by_clock_index() -> None:
    schedule = ScheduleSpec(
        clocks=[
            ClockSpec(type="interval", interval_seconds=1800, start_date=utc(2026, 1, 1), parameter_defaults={"x": 1}),
            ClockSpec(type="cron", cron="0 * * * *", labels=["hourly"]),
            ClockSpec(type="dates", dates=[utc(2026, 1, 1, 0, 45)]),
        ]
    )
    clocks = compile_schedule(schedule)
    got = next_times(clocks, utc(2026, 1, 1), 5)
    assert [(t.start, t.clock_index) for t in got] == [
        (utc(2026, 1, 1, 0, 30), 0),
        (utc(2026, 1, 1, 0, 45), 2),
        (utc(2026, 1, 1, 1), 0),
        (utc(2026, 1, 1, 1), 1),
        (utc(2026, 1, 1, 1, 30), 0),
    ]
    assert got[0].parameter_defaults == {"x": 1}
    assert got[0].labels is None
    assert got[3].labels == ["hourly"]
    assert got[3].clock_id == clocks[1].id
    assert next_times(clocks, utc(2026, 1, 1), 0) == []
    # Clocks given in another order still tie by their index, not their position.
    assert [t.clock_index for t in next_times(list(reversed(clocks)), utc(2026, 1, 1, 0, 45), 2)] == [0, 1]


def test_times_between_is_half_open_and_limited() -> None:
    clocks = compile_schedule(ScheduleSpec(clocks=[ClockSpec(type="cron", cron="*/10 * * * *")]))
    window = times_between(clocks, utc(2026, 1, 1), utc(2026, 1, 1, 1), 100)
    assert [t.start for t in window] == [utc(2026, 1, 1) + timedelta(minutes=m) for m in (10, 20, 30, 40, 50, 60)]
    assert [t.start for t in times_between(clocks, utc(2026, 1, 1), utc(2026, 1, 1, 1), 2)] == [
        utc(2026, 1, 1, 0, 10),
        utc(2026, 1, 1, 0, 20),
    ]
    assert times_between(clocks, utc(2026, 1, 1), utc(2026, 1, 1, 0, 9), 100) == []
    dates = compile_schedule(ScheduleSpec(clocks=[ClockSpec(type="dates", dates=[utc(2026, 1, 2)])]))
    assert times_between(dates, utc(2026, 1, 1), utc(2027, 1, 1), 10)[0].start == utc(2026, 1, 2)


def test_naive_after_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        cron("* * * * *").times_after(datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="timezone-aware"):
        schedule_key("abc", datetime(2026, 1, 1))


# ---- keys and ids ------------------------------------------------------------------------


def test_schedule_key_format() -> None:
    assert schedule_key("0123456789ab", utc(2026, 3, 29, 1)) == "scheduled:0123456789ab:2026-03-29T01:00:00Z"
    berlin = datetime(2026, 3, 29, 3, tzinfo=BERLIN)
    assert schedule_key("0123456789ab", berlin) == "scheduled:0123456789ab:2026-03-29T01:00:00Z"
    fine = datetime(2026, 3, 29, 1, 0, 0, 250000, tzinfo=UTC)
    assert schedule_key("0123456789ab", fine) == "scheduled:0123456789ab:2026-03-29T01:00:00.250000Z"
    spec = ClockSpec(type="cron", cron="0 6 * * *")
    time_ = ScheduledTime(utc(2026, 1, 1, 6), clock_id(spec), 0, {}, None)
    assert time_.key == f"scheduled:{clock_id(spec)}:2026-01-01T06:00:00Z"


def test_clock_id_is_deterministic_and_survives_json() -> None:
    spec = ClockSpec(type="interval", interval_seconds=60, start_date=datetime(2026, 1, 1, tzinfo=BERLIN))
    ident = clock_id(spec)
    assert len(ident) == 12
    assert int(ident, 16) >= 0
    assert clock_id(ClockSpec.model_validate_json(spec.model_dump_json())) == ident
    assert CompiledClock(spec, 3).id == ident


@pytest.mark.parametrize(
    "change",
    [
        {"cron": "0 7 * * *"},
        {"timezone": "Europe/Berlin"},
        {"parameter_defaults": {"x": 1}},
        {"labels": ["a"]},
    ],
)
def test_clock_id_changes_with_any_cron_field(change: dict[str, Any]) -> None:
    base = {"type": "cron", "cron": "0 6 * * *", "timezone": "UTC"}
    assert clock_id(ClockSpec.model_validate({**base, **change})) != clock_id(ClockSpec.model_validate(base))


@pytest.mark.parametrize(
    "change",
    [{"interval_seconds": 61}, {"start_date": "2026-01-01T00:00:01Z"}, {"timezone": "Europe/Berlin"}],
)
def test_clock_id_changes_with_any_interval_field(change: dict[str, Any]) -> None:
    base = {"type": "interval", "interval_seconds": 60, "start_date": "2026-01-01T00:00:00Z"}
    assert clock_id(ClockSpec.model_validate({**base, **change})) != clock_id(ClockSpec.model_validate(base))


def test_clock_id_changes_with_the_dates() -> None:
    one = ClockSpec(type="dates", dates=[utc(2026, 1, 1)])
    assert clock_id(one) != clock_id(ClockSpec(type="dates", dates=[utc(2026, 1, 2)]))


# ---- the SDK -----------------------------------------------------------------------------


def test_schedule_next() -> None:
    schedule = Schedule([CronClock("30 2 * * *", "Europe/Berlin"), DatesClock([utc(2026, 3, 28, 12)])])
    assert schedule.next(3, after=utc(2026, 3, 28)) == [
        utc(2026, 3, 28, 1, 30),
        utc(2026, 3, 28, 12),
        utc(2026, 3, 29, 1),
    ]
    upcoming = Schedule([CronClock("* * * * *")]).next(2)
    assert upcoming[0] > datetime.now(UTC) - timedelta(minutes=1)
    assert upcoming[1] - upcoming[0] == timedelta(minutes=1)


# ---- validation --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"type": "cron", "cron": "61 * * * *"}, "invalid cron '61 \\* \\* \\* \\*': Bad minute"),
        ({"type": "cron", "cron": "* * *"}, "needs 5 fields"),
        ({"type": "cron", "cron": "0 0 30 2 *"}, "Bad day-of-month"),
        ({"type": "cron"}, "a cron clock needs cron"),
        ({"type": "cron", "cron": "* * * * *", "timezone": "Mars/Olympus"}, "unknown timezone 'Mars/Olympus'"),
        ({"type": "interval", "interval_seconds": 60, "timezone": "../etc/passwd"}, "unknown timezone"),
        ({"type": "interval"}, "needs interval_seconds"),
        ({"type": "interval", "interval_seconds": 0}, "greater than 0"),
        ({"type": "interval", "interval_seconds": -5}, "greater than 0"),
        ({"type": "interval", "interval_seconds": 1e-9}, "at least one microsecond"),
        ({"type": "interval", "interval_seconds": 1e20}, "less than or equal"),
        ({"type": "interval", "interval_seconds": 60, "start_date": "2026-01-01T00:00:00"}, "timezone-aware"),
        ({"type": "interval", "interval_seconds": 60, "cron": "* * * * *"}, "interval clocks do not take cron"),
        ({"type": "cron", "cron": "* * * * *", "interval_seconds": 60}, "cron clocks do not take interval_seconds"),
        ({"type": "cron", "cron": "* * * * *", "dates": ["2026-01-01T00:00:00Z"]}, "do not take dates"),
        ({"type": "dates"}, "needs at least one date"),
        ({"type": "dates", "dates": []}, "needs at least one date"),
        ({"type": "dates", "dates": ["2026-01-01T00:00:00"]}, "timezone-aware"),
        ({"type": "dates", "dates": ["2026-01-01T00:00:00Z"], "timezone": "UTC"}, "dates clocks do not take timezone"),
        ({"type": "dates", "dates": ["2026-01-01T00:00:00Z"], "start_date": "2026-01-01T00:00:00Z"}, "start_date"),
    ],
)
def test_bad_clocks_are_refused(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ClockSpec.model_validate(fields)


def test_clock_parameters_must_be_declared_by_the_flow() -> None:
    clock = ClockSpec(type="cron", cron="0 6 * * *", parameter_defaults={"x": 1, "y": 2})
    base = {"name": "f", "storage": StorageSpec(type="script", path="/f.py")}
    with pytest.raises(ValidationError, match=r"clock 0 sets parameters the flow does not declare: \['y'\]"):
        SerializedFlow(**base, parameters=[ParameterSpec(name="x")], schedule=ScheduleSpec(clocks=[clock]))
    ok = SerializedFlow(
        **base, parameters=[ParameterSpec(name="x"), ParameterSpec(name="y")], schedule=ScheduleSpec(clocks=[clock])
    )
    assert ok.schedule is not None
