"""The same figures on the production topology: three NATS nodes, PostgreSQL, two processes of every service.

Under load (two agents, the load generator), the probe SIGKILLs one
instance of each service in turn, then the NATS node that leads the
FLOWBUS_EVENTS stream (the worst one to lose), and times how long until a
command of that service (or, for the node, every stream's new leader and a
command) answers again. Nothing is restarted: the twins and the two
remaining nodes carry on. Every run must end Success, once, with its whole
history and every event.

It starts fifteen processes and takes a few minutes on two cores, more than
the tier's budget at CHAOS_SCALE=1: it runs at CHAOS_SCALE=2 and above, or
with CHAOS_TOPOLOGY=cluster. It needs PostgreSQL at 127.0.0.1:5432.
"""

from __future__ import annotations

import asyncio
import functools
import os
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from flowbus.bus_auth import BusRole
from flowbus.client import AsyncClient
from flowbus_services.registry import SERVICE_MODULES
from tests.helpers import unique
from tests.helpers.chaos import Inputs, analyse, chaos_scale, database_engine, record_and_check, summarize
from tests.helpers.chaos_cluster import PG_HOST, PG_PORT, ClusterStack
from tests.helpers.chaos_stack import ChaosAgent, commands_back, generate_load, register_ledger_flow

TASK_SECONDS = 0.5
SETTLE_SECONDS = 2.0


def _postgres_reachable() -> bool:
    try:
        with socket.create_connection((PG_HOST, PG_PORT), timeout=0.5):
            return True
    except OSError:
        return False


pytestmark = [
    pytest.mark.chaos,
    pytest.mark.postgres,
    pytest.mark.timeout(600 * chaos_scale()),
    pytest.mark.skipif(
        chaos_scale() < 2 and os.environ.get("CHAOS_TOPOLOGY") != "cluster",
        reason="the cluster topology runs at CHAOS_SCALE>=2 or with CHAOS_TOPOLOGY=cluster (it takes minutes)",
    ),
]


@pytest.fixture
async def topology(tmp_path: Path) -> AsyncIterator[ClusterStack]:
    if not _postgres_reachable():
        pytest.skip("PostgreSQL is not reachable at 127.0.0.1:5432")
    stack = ClusterStack(tmp_path)
    try:
        await stack.start()
        yield stack
    finally:
        await stack.stop()


async def test_cluster_topology(topology: ClusterStack, tmp_path: Path) -> None:
    began = time.monotonic()
    name, label = "cluster-topology", unique("cluster")
    ledger, hold = tmp_path / "executions.txt", tmp_path / "hold"
    agents: list[ChaosAgent] = []
    async with AsyncClient(topology.settings()) as client:
        flow_id = await register_ledger_flow(client, tmp_path, unique(name), ledger, hold)
        check_key = f"{name}-check"
        check_run = await client.create_flow_run(flow_id, labels=[label], idempotency_key=check_key)
        try:
            for letter in ("a", "b"):
                agents.append(await asyncio.to_thread(ChaosAgent, topology, tmp_path, f"{name}-{letter}", [label]))
            checker = AsyncClient(topology.settings(request_timeout=1.0), outage_seconds=0.2)
            await checker.connect()
            # Stream information is the services' to read: the probe looks with their credential.
            harness = AsyncClient(topology.settings(), role=BusRole.SERVICE)
            service_nc = await harness.connect()

            async def served_by(victim: str) -> object:
                if victim == "run_creation":
                    return await checker.create_flow_run(flow_id, labels=[label], idempotency_key=check_key)
                if victim == "registration":
                    return await checker.get_projects()
                if victim == "heartbeat":
                    return await checker.get_agents()
                if victim == "scheduler":
                    return await checker.get_scheduler_status()
                if victim == "gateway":
                    return await checker.list_api_keys()
                return await checker.get_flow_run(check_run)

            done = asyncio.Event()
            load_task = asyncio.create_task(
                generate_load(
                    topology.settings(),
                    flow_id,
                    name,
                    count=1,
                    rate=3.0,
                    labels=[label],
                    parameters={"seconds": TASK_SECONDS},
                    until=done,
                    give_up_after=180,
                )
            )
            recovery: list[dict[str, object]] = []
            try:
                await asyncio.sleep(SETTLE_SECONDS)
                for victim in SERVICE_MODULES:
                    killed_at = time.monotonic()
                    await asyncio.to_thread(topology.kill_service, victim)
                    back = await commands_back(functools.partial(served_by, victim), killed_at)
                    recovery.append({"kill": f"{victim} (1 of 2)", "commands_back_s": back})
                    await asyncio.sleep(SETTLE_SECONDS)
                js = service_nc.jetstream()
                info = (await js.stream_info("FLOWBUS_EVENTS")).cluster
                leader = info.leader if info is not None and info.leader else "n0"
                killed_at = time.monotonic()
                await asyncio.to_thread(topology.cluster.kill, int(leader.removeprefix("n")))
                commands = asyncio.create_task(commands_back(functools.partial(served_by, "state"), killed_at))
                await topology.cluster.wait_for_leaders(harness, leader, timeout=120)
                leaders_at = time.monotonic()
                back = await commands
                recovery.append(
                    {
                        "kill": f"NATS node {leader} (the EVENTS leader)",
                        "new_leaders_s": round(leaders_at - killed_at, 2),
                        "commands_back_s": back,
                    }
                )
                await asyncio.sleep(SETTLE_SECONDS)
            finally:
                done.set()
                load = await load_task
                await checker.close()
            load.acked[check_key] = check_run
            load.attempts[check_key] = 1

            engine = database_engine(topology.db_url)
            try:
                figures, runs = await analyse(
                    engine, service_nc, Inputs([flow_id], load, ledger), wait_seconds=120 * chaos_scale()
                )
            finally:
                await engine.dispose()
                await harness.close()
        finally:
            for agent in agents:
                await asyncio.to_thread(agent.stop)
    summary = summarize(
        name,
        figures,
        runs,
        load,
        kills=len(recovery),
        recovery=recovery,
        seconds=time.monotonic() - began,
        topology="3 nats-server nodes (R3 streams), PostgreSQL, 2 processes of each of 6 services",
        commands_never_back=sum(1 for kill in recovery if kill["commands_back_s"] is None),
    )
    record_and_check(summary, checked=("commands_never_back",))
