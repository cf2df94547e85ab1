"""kill -9 of each process `flowbus up` supervises, under load: its service processes and its nats-server.

Two agents run a one-task flow that records each execution; a load
generator creates runs with idempotency keys, resending each with its key
after any error. Meanwhile the probe SIGKILLs each victim in turn, awaits
`flowbus up`'s "... is ready again", and times how long until a command the
victim serves answers again. Every run must end Success, once, with its
whole history and every event (tests.helpers.chaos).
"""

from __future__ import annotations

import asyncio
import functools
import time

import pytest
from nats.aio.client import Client
from sqlalchemy.ext.asyncio import AsyncEngine

from flowbus.client import AsyncClient
from tests.helpers.chaos import Inputs, analyse, chaos_scale, record_and_check, summarize
from tests.helpers.chaos_stack import SHARED, ChaosStack, Probe, commands_back, generate_load

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(240 * chaos_scale())]

TASK_SECONDS = 0.5
RATE = 4.0  # runs created per second
# Load before the first kill and between kills: runs in every stage of their life when the next one dies.
SETTLE_SECONDS = 1.0


@pytest.mark.parametrize(
    "victims", [("run_creation", "state", SHARED), ("nats-server",)], ids=["service-processes", "nats-server"]
)
async def test_kill_9(
    victims: tuple[str, ...],
    chaos_stack: ChaosStack,
    probe: Probe,
    client: AsyncClient,
    service_nc: Client,
    engine: AsyncEngine,
) -> None:
    flow_id = await probe.register_flow(client)
    for name in ("a", "b"):
        probe.agent(f"{probe.name}-{name}")
    # A run the recovery checks read back (its key replayed for run_creation).
    check_key = f"{probe.name}-check"
    check_run = await client.create_flow_run(
        flow_id, labels=[probe.label], idempotency_key=check_key, parameters={"seconds": TASK_SECONDS}
    )
    checker = AsyncClient(chaos_stack.settings(request_timeout=1.0), outage_seconds=0.2)
    await checker.connect()

    async def served_by(victim: str) -> object:
        if victim == "run_creation":
            return await checker.create_flow_run(flow_id, labels=[probe.label], idempotency_key=check_key)
        if victim == SHARED:  # registration and heartbeat live there
            return await asyncio.gather(checker.get_projects(), checker.get_agents())
        return await checker.get_flow_run(check_run)

    done = asyncio.Event()
    load_task = asyncio.create_task(
        generate_load(
            chaos_stack.settings(),
            flow_id,
            probe.name,
            count=1,
            rate=RATE,
            labels=[probe.label],
            parameters={"seconds": TASK_SECONDS},
            until=done,
        )
    )
    recovery = []
    try:
        await asyncio.sleep(SETTLE_SECONDS)
        for _ in range(chaos_scale()):
            for victim in victims:
                killed_at = time.monotonic()
                name, mark = chaos_stack.kill_service(victim)
                ready_at = await asyncio.to_thread(chaos_stack.await_restart, name, mark)
                back = await commands_back(functools.partial(served_by, victim), killed_at)
                recovery.append(
                    {"kill": victim, "restarted_s": round(ready_at - killed_at, 2), "commands_back_s": back}
                )
                await asyncio.sleep(SETTLE_SECONDS)
    finally:
        done.set()
        load = await load_task
        await checker.close()
    load.acked[check_key] = check_run
    load.attempts[check_key] = 1

    figures, runs = await analyse(
        engine, service_nc, Inputs([flow_id], load, probe.ledger), wait_seconds=90 * chaos_scale()
    )
    deaths = probe.deaths()
    summary = summarize(
        probe.name,
        figures,
        runs,
        load,
        kills=len(recovery),
        recovery=recovery,
        seconds=time.monotonic() - probe.began,
        # `flowbus up` saw exactly the deaths the probe caused.
        unexpected_deaths=len(deaths) - len(recovery),
        commands_never_back=sum(1 for kill in recovery if kill["commands_back_s"] is None),
    )
    record_and_check(summary, checked=("unexpected_deaths", "commands_never_back"))
