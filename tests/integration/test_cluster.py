"""The production topology with real processes: a 3-node NATS cluster with
JetStream (streams replicated 3 times), the services connected to all three
nodes, and an agent. A node dies mid-way and the system keeps running runs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
from nats.js.api import StreamConfig
from nats.js.errors import BadRequestError

from flowbus import subjects
from flowbus.agent.local import LocalAgent
from flowbus.bus_auth import BusRole
from flowbus.client import AsyncClient
from flowbus.runtime.nats import NO_SUITABLE_PEERS, connect, ensure_streams
from flowbus.settings import NatsTuning, SchedulerSettings, Settings
from flowbus.states import StateType
from flowbus_services.registry import SERVICE_MODULES, build_service_app
from tests.helpers import unique
from tests.helpers.agents import running_agents
from tests.helpers.nats_cluster import NODES, Cluster
from tests.helpers.runs import watch_until_finished
from tests.helpers.scripts import register_greeting_flow


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    nodes = Cluster(tmp_path)
    nodes.start()
    try:
        asyncio.run(nodes.wait_ready())
        yield nodes
    finally:
        nodes.stop()


@pytest.fixture
async def cluster_stack(cluster: Cluster, tmp_path: Path) -> AsyncIterator[Settings]:
    settings = Settings(
        home=tmp_path / "home",
        nats_url=cluster.url,
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'cluster.db'}",
        nats=NatsTuning(stream_replicas=3, request_timeout=15.0),
        scheduler=SchedulerSettings(release_interval=0.1),
    )
    async with AsyncExitStack() as apps:
        for name in SERVICE_MODULES:
            await apps.enter_async_context(build_service_app(name, settings))
        yield settings


async def test_runs_survive_losing_a_nats_node(cluster: Cluster, cluster_stack: Settings, tmp_path: Path) -> None:
    # Stream information is the services' to read: the harness looks with their credential.
    async with AsyncClient(cluster_stack) as client, AsyncClient(cluster_stack, role=BusRole.SERVICE) as harness:
        info = await harness.nc.jetstream().stream_info("FLOWBUS_EVENTS")
        assert info.config.num_replicas == 3

        flow_id = await register_greeting_flow(client, tmp_path)
        async with running_agents(LocalAgent(cluster_stack, labels=["itest"], hostname_label=False)):
            first_id = await client.create_flow_run(flow_id, labels=["itest"], run_name=unique("before"))
            watched = await watch_until_finished(client, first_id)
            assert watched.types[-1] is StateType.SUCCESS
            assert "Hello, Cloud!" in watched.messages

            # The worst node to lose: the one leading the events stream. The
            # other two keep a quorum and elect a new leader within seconds.
            leader = (await harness.nc.jetstream().stream_info("FLOWBUS_EVENTS")).cluster
            assert leader is not None
            assert leader.leader is not None
            dead = leader.leader
            cluster.kill(int(dead.removeprefix("n")))
            await cluster.wait_for_leaders(harness, dead)

            second_id = await client.create_flow_run(flow_id, labels=["itest"], run_name=unique("after"))
            watched = await watch_until_finished(client, second_id)
            assert watched.types[-1] is StateType.SUCCESS
            assert "Hello, Cloud!" in watched.messages


async def test_streams_wait_for_a_forming_cluster_to_place_their_replicas(tmp_path: Path) -> None:
    """Two of three nodes elect a meta leader but cannot hold three replicas:
    JetStream refuses the streams ("no suitable peers") until the third node
    joins. Services starting with the cluster wait for it instead of failing."""
    nodes = Cluster(tmp_path)
    nodes.start(only=(0, 1))
    try:
        await nodes.wait_ready()
        settings = Settings(nats_url=nodes.url, nats=NatsTuning(stream_replicas=3))
        nc = await connect(settings, "test-forming", BusRole.SERVICE)
        try:
            js = nc.jetstream()
            probe = StreamConfig(name=unique("PROBE"), subjects=[f"{unique('probe')}.>"], num_replicas=3)
            with pytest.raises(BadRequestError) as refused:
                await js.add_stream(probe)
            assert refused.value.err_code == NO_SUITABLE_PEERS
            placing = asyncio.create_task(ensure_streams(js, settings))
            nodes.start_node(2)
            async with asyncio.timeout(60):
                await placing
            for stream in (subjects.EVENTS_STREAM, subjects.LOGS_STREAM, subjects.RUNQ_STREAM):
                assert (await js.stream_info(stream)).config.num_replicas == NODES
        finally:
            await nc.close()
    finally:
        nodes.stop()
