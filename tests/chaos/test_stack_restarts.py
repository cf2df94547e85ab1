"""The whole stack killed at once and restarted by hand: the database is sound and runs go on.

`flowbus up`'s process group (up and its service processes) and its
nats-server get SIGKILL at the same instant, as a power cut would. The
agents are not touched: their runners wait the outage out. While everything
is down the probe checks a copy of the SQLite database (``PRAGMA
integrity_check``, in a child process), then starts `flowbus up` again by
hand on the same home and NATS port.

- ``test_kill_the_process_group``: under load, restarted at once; every run
  ends Success, once.
- ``test_outage_longer_than_the_heartbeat_threshold``: runs whose task takes
  longer than the whole outage; the stack stays down past the Zombie
  Killer's threshold (their beats are lost meanwhile), and the runs must
  still finish Success: the Zombie Killer gives every run a full threshold
  after it is connected again.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from nats.aio.client import Client
from sqlalchemy.ext.asyncio import AsyncEngine

from flowbus.client import AsyncClient
from tests.helpers.chaos import Inputs, Load, analyse, chaos_scale, read_ledger, record_and_check, summarize
from tests.helpers.chaos_stack import ZOMBIE_THRESHOLD, ChaosStack, Probe, generate_load, integrity_check, scaled
from tests.helpers.waiting import eventually

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(300 * chaos_scale())]

TASK_SECONDS = 0.5
SETTLE_SECONDS = 1.5


async def _kill_check_restart(stack: ChaosStack, down_for: float = 0.0) -> dict[str, object]:
    """Kill everything, check the database copy, keep it down ``down_for`` seconds
    from the kill, start it again; the figures of that kill."""
    killed_at = time.monotonic()
    await asyncio.to_thread(stack.kill_everything)
    integrity = await asyncio.to_thread(integrity_check, stack.db_path)
    if (left := killed_at + down_for - time.monotonic()) > 0:
        await asyncio.sleep(left)  # the outage itself: its length is what the probe is about
    restarted_at = time.monotonic()
    took = await asyncio.to_thread(stack.start)
    return {
        "kill": "process group + nats-server",
        "integrity_check": integrity,
        "killed_at": killed_at,
        "ready_at": restarted_at + took,
        "down_s": round(restarted_at + took - killed_at, 2),
        "restart_s": round(took, 2),
    }


async def test_kill_the_process_group(
    chaos_stack: ChaosStack, probe: Probe, client: AsyncClient, service_nc: Client, engine: AsyncEngine
) -> None:
    flow_id = await probe.register_flow(client)
    for name in ("a", "b"):
        probe.agent(f"{probe.name}-{name}")
    done = asyncio.Event()
    load_task = asyncio.create_task(
        generate_load(
            chaos_stack.settings(),
            flow_id,
            probe.name,
            count=1,
            rate=4.0,
            labels=[probe.label],
            parameters={"seconds": TASK_SECONDS},
            until=done,
            give_up_after=180,
        )
    )
    kills = []
    try:
        await asyncio.sleep(SETTLE_SECONDS)
        for _ in range(chaos_scale()):
            kills.append(await _kill_check_restart(chaos_stack))
            await asyncio.sleep(SETTLE_SECONDS)
    finally:
        done.set()
        load = await load_task
    for kill in kills:
        killed_at = kill.pop("killed_at")
        kill.pop("ready_at")
        assert isinstance(killed_at, float)
        acked = load.first_ack_after(killed_at)
        kill["commands_back_s"] = None if acked is None else round(acked - killed_at, 2)

    figures, runs = await analyse(
        engine, service_nc, Inputs([flow_id], load, probe.ledger), wait_seconds=90 * chaos_scale()
    )
    summary = summarize(
        probe.name,
        figures,
        runs,
        load,
        kills=len(kills),
        recovery=kills,
        seconds=time.monotonic() - probe.began,
        integrity_not_ok=sum(1 for kill in kills if kill["integrity_check"] != "ok"),
    )
    record_and_check(summary, checked=("integrity_not_ok",))


async def test_outage_longer_than_the_heartbeat_threshold(
    chaos_stack: ChaosStack, probe: Probe, client: AsyncClient, service_nc: Client, engine: AsyncEngine
) -> None:
    outage = ZOMBIE_THRESHOLD * chaos_scale() + 2
    # Long enough to be running still once the stack is back and the Zombie Killer's grace has run out.
    task_seconds = outage + 10 + 2 * ZOMBIE_THRESHOLD
    flow_id = await probe.register_flow(client)
    probe.agent(f"{probe.name}-a")
    count = scaled(4)
    run_ids = [
        await client.create_flow_run(flow_id, labels=[probe.label], parameters={"seconds": task_seconds})
        for _ in range(count)
    ]
    await eventually(
        lambda: asyncio.to_thread(read_ledger, probe.ledger),
        "every run is in its task",
        until=lambda lines: len({e.run_id for e in lines}) == count,
        timeout=60,
    )
    kill = await _kill_check_restart(chaos_stack, down_for=outage)
    kill.pop("killed_at")
    ready_at = kill.pop("ready_at")
    assert isinstance(ready_at, float)
    ready_wall = time.time() - (time.monotonic() - ready_at)  # the ledger's clock

    figures, runs = await analyse(
        engine,
        service_nc,
        Inputs([flow_id], Load(), probe.ledger, direct_runs=run_ids),
        wait_seconds=task_seconds + 90 * chaos_scale(),
    )
    ends = [e.at for e in read_ledger(probe.ledger) if e.event == "end"]
    summary = summarize(
        probe.name,
        figures,
        runs,
        None,
        kills=1,
        recovery=[kill],
        seconds=time.monotonic() - probe.began,
        direct=count,
        outage_s=round(outage, 1),
        zombie_threshold_s=ZOMBIE_THRESHOLD,
        # Whether the runs outlived the Zombie Killer's grace after the restart (what the probe is for).
        runs_still_running_a_threshold_after_restart=sum(1 for at in ends if at > ready_wall + ZOMBIE_THRESHOLD),
        integrity_not_ok=int(kill["integrity_check"] != "ok"),
    )
    record_and_check(summary, checked=("integrity_not_ok",))
