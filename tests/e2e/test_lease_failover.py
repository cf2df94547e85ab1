"""Fail-over of the scheduler's release loop between two scheduler processes.

Two `flowbus service run scheduler` processes share one nats-server and one
SQLite file; one holds the ``scheduler.release`` lease. SIGKILL it: the other
takes the lease over and releases a run that comes due afterwards. The other
services run in this process.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from flowbus import subjects
from flowbus.client import AsyncClient
from flowbus.runtime.lease import lease_status
from flowbus.schemas.flows import ClockSpec, ScheduleSpec, SerializedFlow, StorageSpec
from flowbus.schemas.runs import FlowRunOut
from flowbus.settings import LeaseSettings, Settings
from flowbus_services.registry import SERVICE_MODULES, build_service_app
from flowbus_services.scheduler.planner import PLANNER_LEASE
from flowbus_services.up import free_port
from tests.helpers import unique
from tests.helpers.bus import bus_env
from tests.helpers.processes import FLOWBUS, start, stop, wait_ready
from tests.helpers.waiting import eventually

pytestmark = pytest.mark.e2e

LEASE = "scheduler.release"
TTL = 2.0


@pytest.fixture
async def others(nats_url: str, tmp_path: Path) -> AsyncIterator[Settings]:
    """Every service but the scheduler, in this process, on a fresh SQLite file."""
    settings = Settings(
        home=tmp_path / "home",
        nats_url=nats_url,
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}",
        lease=LeaseSettings(ttl_seconds=TTL),
    )
    async with AsyncExitStack() as apps:
        for name in SERVICE_MODULES:
            if name != "scheduler":
                await apps.enter_async_context(build_service_app(name, settings))
        yield settings


@pytest.fixture
async def schedulers(others: Settings, tmp_path: Path) -> AsyncIterator[list[subprocess.Popen[str]]]:
    """Two scheduler processes against the same server and database, both ready."""
    env = {
        **bus_env(others.resolved_nats_url()),
        "FLOWBUS_DATABASE_URL": others.resolved_database_url(),
        "FLOWBUS_LEASE__TTL_SECONDS": str(TTL),
        "FLOWBUS_SCHEDULER__RELEASE_INTERVAL": "0.2",
    }
    procs: list[subprocess.Popen[str]] = []
    try:
        for _ in range(2):
            port = free_port()
            proc = start([FLOWBUS, "service", "run", "scheduler", "--port", str(port)], others.home, tmp_path, env)
            procs.append(proc)
            await asyncio.to_thread(wait_ready, f"http://127.0.0.1:{port}/readyz", proc)
        yield procs
    finally:
        for proc in procs:
            await asyncio.to_thread(stop, proc)


def holder_pid(holder: str | None) -> int | None:
    """The pid in a holder name (``host:pid:token``)."""
    return int(holder.split(":")[-2]) if holder else None


async def test_the_other_scheduler_takes_the_leases_releases_due_runs_and_plans_when_the_holder_is_killed(
    others: Settings, schedulers: list[subprocess.Popen[str]], nc: Client
) -> None:
    pids = {proc.pid: proc for proc in schedulers}

    async def holder() -> int | None:
        return holder_pid((await lease_status(nc, LEASE)).holder)

    first = await eventually(holder, "one scheduler holds the release lease", until=lambda pid: pid in pids)
    assert first is not None
    killed = pids.pop(first)
    killed.kill()  # SIGKILL: no release, the lease must expire
    await asyncio.to_thread(killed.wait)
    (survivor,) = pids
    await eventually(
        holder, "the other scheduler takes the lease over", until=lambda pid: pid == survivor, timeout=10 * TTL
    )

    async def planner() -> int | None:
        return holder_pid((await lease_status(nc, PLANNER_LEASE)).holder)

    await eventually(
        planner, "the survivor plans runs from clocks", until=lambda pid: pid == survivor, timeout=10 * TTL
    )

    async with AsyncClient(others) as client:
        project, label = unique("lease"), unique("lease")
        await client.create_project(project)
        spec = SerializedFlow(name=unique("lease"), storage=StorageSpec(type="script", path="/lease.py"))
        flow = await client.register(spec, project)
        queued: asyncio.Queue[bytes] = asyncio.Queue()

        async def on_queued(msg: Msg) -> None:
            await queued.put(msg.data)

        await nc.subscribe(subjects.run_queue([label]), cb=on_queued)
        await nc.flush()
        # Due after the take-over: only the surviving scheduler can release it.
        start_at = datetime.now(UTC) + timedelta(seconds=1)
        run_id = await client.create_flow_run(flow.id, labels=[label], scheduled_start_time=start_at)
        message = await asyncio.wait_for(queued.get(), timeout=30)
        assert run_id.encode() in message

        hourly = ScheduleSpec(clocks=[ClockSpec(type="interval", interval_seconds=3600)])
        spec = SerializedFlow(
            name=unique("lease"), storage=StorageSpec(type="script", path="/lease.py"), schedule=hourly
        )
        scheduled = await client.register(spec, project)

        async def runs() -> list[FlowRunOut]:
            return await client.get_flow_runs(flow_id=scheduled.id)

        ahead = await eventually(runs, "the survivor creates the runs ahead", until=lambda r: len(r) == 10)
    assert all(r.auto_scheduled for r in ahead)
