"""The scheduler's cost as its work grows: N flows with active 1-minute cron schedules.

For each N (``SCHEDULE_COUNTS``, scaled by ``BENCH_SCALE``), on a fresh
``flowbus up`` whose own scheduler does not plan runs
(``FLOWBUS_SCHEDULER__PLAN_RUNS=false``), the benchmark registers N flows,
each with ``CronClock("* * * * *")`` and a label no agent has, then starts
one ``flowbus service run scheduler`` process of its own, the only planner,
and measures from outside:

- ``cold_fill_seconds``: from that process's start until the 10 runs ahead of
  every schedule exist (N x 10 rows, counted in the SQLite file);
- ``steady_cpu_seconds_per_minute`` and ``steady_core_percent``: the CPU time
  (user + system, from /proc) the process used over ``SCHEDULE_MINUTES``
  whole minutes of steady state, from the middle of a minute after the
  fill; each minute every schedule's next run comes due, is released onto its
  run queue, and one new run is created per schedule;
- ``rss_mb``: its resident memory at the end.

The process also runs the release loop (due runs onto run queues) and the
backlog sweep, so the CPU figure is the whole scheduler service's.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flowbus.client import AsyncClient
from flowbus.schemas.flows import ClockSpec, RunConfigSpec, ScheduleSpec, SerializedFlow, StorageSpec, TaskSpec
from flowbus.settings import Settings

SCALE = float(os.environ.get("BENCH_SCALE", "1"))
SCHEDULE_COUNTS = [max(1, int(n * SCALE)) for n in (1000, 10000)]
SCHEDULE_MINUTES = int(os.environ.get("BENCH_SCHEDULE_MINUTES", "2"))
REGISTER_IN_FLIGHT = 32
FILL_TIMEOUT = 900.0
AHEAD = 10


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15 of the whole line (11 and 12 after the command name).
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _auto_runs(database: Path) -> int:
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30)) as conn:
        (count,) = conn.execute("SELECT count(*) FROM flow_run WHERE auto_scheduled").fetchone()
        return int(count)


async def _register(settings: Settings, count: int) -> None:
    limit = asyncio.Semaphore(REGISTER_IN_FLIGHT)
    schedule = ScheduleSpec(clocks=[ClockSpec(type="cron", cron="* * * * *")])
    async with AsyncClient(settings) as client:
        await client.create_project("schedules", skip_if_exists=True)

        async def one(i: int) -> None:
            spec = SerializedFlow(
                name=f"cron-{i}",
                tasks=[TaskSpec(slug="t-1", name="t")],
                storage=StorageSpec(type="script", path="/bench.py"),
                run_config=RunConfigSpec(labels=["bench-no-agent"]),
                schedule=schedule,
            )
            async with limit:
                await client.register(spec, "schedules")

        await asyncio.gather(*(one(i) for i in range(count)))


def _wait(condition: Callable[[], bool], timeout: float, interval: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the scheduler did not fill its schedules in time")
        time.sleep(interval)


@contextlib.contextmanager
def _scheduler(env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "flowbus_services.cli", "service", "run", "scheduler"],
        env={**env, "FLOWBUS_SCHEDULER__PLAN_RUNS": "true"},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def scheduler_cost(settings: Settings, env: dict[str, str], count: int) -> dict[str, Any]:
    """One N: register, fill from cold, then the steady state (see the module docstring)."""
    asyncio.run(_register(settings, count))
    database = settings.home / "flowbus.db"
    with _scheduler(env) as proc:
        started = time.monotonic()
        _wait(lambda: _auto_runs(database) >= count * AHEAD, FILL_TIMEOUT)
        fill = time.monotonic() - started
        # Whole minutes from mid-minute, so that each window holds exactly
        # SCHEDULE_MINUTES of the bursts at :00 (every schedule's run comes due then).
        now = datetime.now(UTC)
        time.sleep((90 - now.second - now.microsecond / 1e6) % 60)
        before, runs_before = _cpu_seconds(proc.pid), _auto_runs(database)
        time.sleep(SCHEDULE_MINUTES * 60)
        used, runs_after = _cpu_seconds(proc.pid) - before, _auto_runs(database)
        rss = _rss_mb(proc.pid)
    return {
        "name": "scheduler_cron_schedules",
        "schedules": count,
        "cold_fill_seconds": round(fill, 1),
        "cold_fill_runs_per_second": round(count * AHEAD / fill, 1),
        "steady_minutes": SCHEDULE_MINUTES,
        "steady_runs_created": runs_after - runs_before,
        "steady_cpu_seconds_per_minute": round(used / SCHEDULE_MINUTES, 3),
        "steady_core_percent": round(100 * used / (SCHEDULE_MINUTES * 60), 2),
        "rss_mb": round(rss, 1),
    }
