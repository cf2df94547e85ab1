"""Heartbeats from a sender whose clock is wrong: a run is judged by when its beats arrive.

Three runs are put in Running by hand, with a label no agent has, on a flow
whose Lazarus is off (the Zombie Killer alone judges them): D0 never beats
(the control), D1 beats once stamped a day ahead and then falls silent, D2
beats every half second stamped a minute behind, for twice the Zombie
Killer's threshold. D0 and D1 must end Failed by the Zombie Killer (D1 is not
immune for a day); D2 must still be Running when its beats stop, and the
probe then finishes it Success as its runner would. An agent's heartbeat
stamped a day ahead must not put its last seen in the future.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import pytest
from nats.aio.client import Client
from sqlalchemy.ext.asyncio import AsyncEngine

from flowbus import subjects
from flowbus.client import AsyncClient
from flowbus.schemas.agents import AgentHeartbeat, RunHeartbeat
from flowbus.states import StateType
from flowbus_services.heartbeat.zombies import FLOW_RUN_MESSAGE
from tests.helpers.chaos import Inputs, Load, analyse, chaos_scale, fetch_runs, record_and_check, summarize
from tests.helpers.chaos_stack import ZOMBIE_THRESHOLD, ChaosStack, Probe
from tests.helpers.waiting import eventually

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(180 * chaos_scale())]

AHEAD = timedelta(days=1)
BEHIND = timedelta(seconds=-60)
BEAT_EVERY = 0.5


async def _beat(nc: Client, run_id: str, skew: timedelta) -> None:
    beat = RunHeartbeat(flow_run_id=run_id, timestamp=datetime.now(UTC) + skew)
    await nc.publish(subjects.flow_run_heartbeat(run_id), beat.model_dump_json().encode())


async def test_clock_skewed_heartbeats(
    chaos_stack: ChaosStack, probe: Probe, client: AsyncClient, service_nc: Client, engine: AsyncEngine
) -> None:
    flow_id = await probe.register_flow(client)
    await client.disable_lazarus_for_flow(flow_id)
    ids = []
    for _ in range(3):
        run_id = await client.create_flow_run(flow_id, labels=[f"{probe.label}-nobody"])
        await client.set_flow_run_state(run_id, 1, StateType.SUBMITTED, "claimed by hand")
        await client.set_flow_run_state(run_id, 2, StateType.RUNNING, "running by hand")
        ids.append(run_id)
    control, ahead, behind = ids
    await _beat(service_nc, ahead, AHEAD)

    # D2 beats, a minute behind, for twice the threshold: it must stay Running throughout.
    beating_for = 2 * ZOMBIE_THRESHOLD * chaos_scale()
    failed_while_beating = 0
    until = time.monotonic() + beating_for
    while time.monotonic() < until:
        await _beat(service_nc, behind, BEHIND)
        await service_nc.flush()
        detail = await client.get_flow_run(behind)
        failed_while_beating += detail.run.state.type is not StateType.RUNNING
        if failed_while_beating:
            break
        await asyncio.sleep(BEAT_EVERY)
    if not failed_while_beating:
        await client.set_flow_run_state(behind, 3, StateType.SUCCESS, "finished by hand, as its runner would")

    async def judged() -> list[StateType]:
        return [r.state for r in await fetch_runs(engine, [flow_id]) if r.id in (control, ahead)]

    await eventually(
        judged,
        "the silent runs are judged",
        until=lambda s: all(t is not StateType.RUNNING for t in s),
        timeout=60 * chaos_scale(),
    )

    agent = await client.register_agent(f"{probe.name}-skewed", labels=[probe.label])
    skewed = AgentHeartbeat(agent_id=agent.id, timestamp=datetime.now(UTC) + AHEAD)
    await service_nc.publish(subjects.agent_heartbeat(agent.id), skewed.model_dump_json().encode())

    async def last_seen() -> datetime:
        (found,) = [a for a in (await client.get_agents()).agents if a.id == agent.id]
        return found.last_seen

    seen = await eventually(last_seen, "the agent's beat is recorded", until=lambda t: t > agent.last_seen)

    figures, runs = await analyse(
        engine,
        service_nc,
        Inputs([flow_id], Load(), probe.ledger, killed_runs=frozenset({control, ahead}), by_hand=frozenset({behind})),
        wait_seconds=30,
    )
    by_id = {r.id: r for r in runs}
    summary = summarize(
        probe.name,
        figures,
        runs,
        None,
        kills=0,
        recovery=[],
        seconds=time.monotonic() - probe.began,
        direct=len(ids),
        healthy_failed_while_beating=failed_while_beating,
        silent_not_failed_by_zombie_killer=sum(
            1 for i in (control, ahead) if (by_id[i].state, by_id[i].message) != (StateType.FAILED, FLOW_RUN_MESSAGE)
        ),
        agent_seen_in_the_future=int(seen > datetime.now(UTC) + timedelta(minutes=1)),
        beats={
            "ahead_s": AHEAD.total_seconds(),
            "behind_s": BEHIND.total_seconds(),
            "beating_for_s": beating_for,
        },
    )
    record_and_check(
        summary,
        checked=("healthy_failed_while_beating", "silent_not_failed_by_zombie_killer", "agent_seen_in_the_future"),
    )
