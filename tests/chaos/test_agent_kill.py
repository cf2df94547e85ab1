"""An agent's whole process group killed mid-run, as a lost host: its runs end, none stays stuck.

Agent A holds runs in both stages an agent can die in: some Running (their
task sleeping), some Submitted (claimed, their flow still loading: the
probe's hold file keeps it so). The probe SIGKILLs A's process group, then
starts A2 with A's labels. With the tier's short heartbeat settings
(tests.helpers.chaos_stack) the Zombie Killer fails the Running ones, whose
runner died with A; the Submitted ones go back to the queue (stuck claims,
or Lazarus: whichever looks first) and A2 runs them to Success. Agent B's
runs, created by the load generator throughout, all succeed.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from nats.aio.client import Client
from sqlalchemy.ext.asyncio import AsyncEngine

from flowbus.client import AsyncClient
from flowbus.states import StateType, is_finished
from flowbus_services.heartbeat.zombies import FLOW_RUN_MESSAGE
from tests.helpers.chaos import Inputs, analyse, chaos_scale, fetch_runs, read_ledger, record_and_check, summarize
from tests.helpers.chaos_stack import ChaosStack, Probe, generate_load, scaled
from tests.helpers.waiting import eventually

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(240 * chaos_scale())]

KILLED_TASK_SECONDS = 120.0  # far longer than the probe: they only end when the Zombie Killer ends them
HEALTHY_TASK_SECONDS = 0.3


async def test_kill_an_agent_mid_run(
    chaos_stack: ChaosStack, probe: Probe, client: AsyncClient, service_nc: Client, engine: AsyncEngine
) -> None:
    flow_id = await probe.register_flow(client)
    lost_label, healthy_label = f"{probe.label}-a", f"{probe.label}-b"
    running, submitted = scaled(3), scaled(2)
    victim = probe.agent(f"{probe.name}-a", [lost_label], limit=running + submitted)
    probe.agent(f"{probe.name}-b", [healthy_label])

    async def create(count: int, seconds: float) -> list[str]:
        return [
            await client.create_flow_run(flow_id, labels=[lost_label], parameters={"seconds": seconds})
            for _ in range(count)
        ]

    running_ids = await create(running, KILLED_TASK_SECONDS)
    await eventually(
        lambda: asyncio.to_thread(read_ledger, probe.ledger),
        "the victim's runs are in their task",
        until=lambda lines: len({e.run_id for e in lines} & set(running_ids)) == running,
        timeout=60,
    )
    probe.hold.touch()
    held_ids = await create(submitted, HEALTHY_TASK_SECONDS)

    async def states() -> list[StateType]:
        return [r.state for r in await fetch_runs(engine, [flow_id]) if r.id in held_ids]

    await eventually(
        states, "the victim claimed the held runs", until=lambda s: s == [StateType.SUBMITTED] * submitted, timeout=60
    )

    load = asyncio.create_task(
        generate_load(
            chaos_stack.settings(),
            flow_id,
            probe.name,
            count=scaled(12),
            rate=4.0,
            labels=[healthy_label],
            parameters={"seconds": HEALTHY_TASK_SECONDS},
        )
    )
    killed_at = time.monotonic()
    await asyncio.to_thread(victim.kill)
    probe.hold.unlink()
    probe.agent(f"{probe.name}-a2", [lost_label], limit=running + submitted)

    # When the killed runs were settled and the held ones requeued, for the recovery figures.
    settled_at: float | None = None
    requeued_at: float | None = None
    deadline = killed_at + 120 * chaos_scale()
    while time.monotonic() < deadline and (settled_at is None or requeued_at is None):
        rows = {r.id: r for r in await fetch_runs(engine, [flow_id])}
        if settled_at is None and all(is_finished(rows[i].state) for i in running_ids):
            settled_at = time.monotonic()
        if requeued_at is None and all(rows[i].times_resurrected for i in held_ids):
            requeued_at = time.monotonic()
        await asyncio.sleep(0.2)
    generated = await load

    figures, runs = await analyse(
        engine,
        service_nc,
        Inputs(
            [flow_id], generated, probe.ledger, killed_runs=frozenset(running_ids), direct_runs=running_ids + held_ids
        ),
        wait_seconds=90 * chaos_scale(),
    )
    by_id = {r.id: r for r in runs}
    summary = summarize(
        probe.name,
        figures,
        runs,
        generated,
        kills=1,
        recovery=[
            {
                "kill": "agent process group",
                "running_runs_failed_s": None if settled_at is None else round(settled_at - killed_at, 2),
                "submitted_runs_requeued_s": None if requeued_at is None else round(requeued_at - killed_at, 2),
            }
        ],
        seconds=time.monotonic() - probe.began,
        direct=running + submitted,
        killed_running=running,
        killed_submitted=submitted,
        # What the settings say: the Running ones failed by the Zombie Killer, the
        # Submitted ones rescheduled (by stuck claims or Lazarus) and run again.
        killed_running_not_failed_by_zombie_killer=sum(
            1 for i in running_ids if (by_id[i].state, by_id[i].message) != (StateType.FAILED, FLOW_RUN_MESSAGE)
        ),
        killed_submitted_not_rescheduled_to_success=sum(
            1 for i in held_ids if by_id[i].state is not StateType.SUCCESS or not by_id[i].times_resurrected
        ),
    )
    record_and_check(
        summary,
        checked=("killed_running_not_failed_by_zombie_killer", "killed_submitted_not_rescheduled_to_success"),
    )
