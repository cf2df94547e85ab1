"""A cluster of three nats-server processes with JetStream, for the tests of the production topology.

Each node is a real nats-server on free loopback ports (clients and routes),
its store in the given folder, with the session's credentials (one user per
role, tests/conftest.py) and the embedded server's limits. Nothing here
publishes: ``wait_ready`` and ``wait_for_leaders`` only ask JetStream.
"""

from __future__ import annotations

import functools
import json
import subprocess
from pathlib import Path

from flowbus import subjects
from flowbus.bus_auth import AuthStore, BusRole, authorization_config
from flowbus.client import AsyncClient
from flowbus.runtime.nats import connect
from flowbus.settings import EmbeddedNatsSettings, Settings
from flowbus_services.up import free_port, nats_server_binary
from tests.helpers.waiting import eventually

NODES = 3


class Cluster:
    """Three nodes (n0, n1, n2) routed to each other; ``url`` lists all three."""

    def __init__(self, root: Path) -> None:
        self.client_ports = [free_port() for _ in range(NODES)]
        self.route_ports = [free_port() for _ in range(NODES)]
        self.procs: list[subprocess.Popen[bytes]] = []
        self.root = root

    @property
    def url(self) -> str:
        return ",".join(f"nats://127.0.0.1:{p}" for p in self.client_ports)

    def start(self, only: tuple[int, ...] = tuple(range(NODES))) -> None:
        for i in only:
            self.start_node(i)

    def start_node(self, i: int) -> None:
        routes = ", ".join(f"nats-route://127.0.0.1:{p}" for j, p in enumerate(self.route_ports) if j != i)
        conf = self.root / f"n{i}.conf"
        conf.write_text(
            f"""
server_name: n{i}
listen: 127.0.0.1:{self.client_ports[i]}
jetstream {{ store_dir: "{self.root / f"n{i}"}" }}
cluster {{
  name: flowbus
  listen: 127.0.0.1:{self.route_ports[i]}
  routes: [{routes}]
}}
accounts: {json.dumps(authorization_config(AuthStore(Settings().auth_path()).users(), EmbeddedNatsSettings().limits()))}
"""
        )
        with (self.root / f"n{i}.log").open("wb") as log:  # the child keeps its own copy
            self.procs.append(subprocess.Popen([nats_server_binary(), "-c", str(conf)], stdout=log, stderr=log))

    async def wait_ready(self, timeout: float = 60) -> None:
        """Until JetStream answers through the cluster (a meta leader is elected)."""

        async def account_info() -> object:
            nc = await connect(Settings(nats_url=self.url), "probe", BusRole.SERVICE)
            try:
                return await nc.jetstream().account_info()
            finally:
                await nc.close()

        await eventually(account_info, "JetStream answers", timeout=timeout, interval=0.2, ignoring=(Exception,))

    async def wait_for_leaders(self, client: AsyncClient, dead: str, timeout: float = 60) -> None:
        """Until every stream has elected a leader other than the dead node."""
        js = client.nc.jetstream()
        for stream in (subjects.EVENTS_STREAM, subjects.LOGS_STREAM, subjects.RUNQ_STREAM):
            await eventually(
                functools.partial(js.stream_info, stream),
                f"stream {stream} has a leader other than {dead}",
                until=lambda info: info.cluster is not None and info.cluster.leader not in (None, dead),
                timeout=timeout,
                interval=0.2,
                ignoring=(Exception,),  # no leader yet: the request itself fails
            )

    def kill(self, index: int) -> None:
        self.procs[index].kill()
        self.procs[index].wait()

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=10)
