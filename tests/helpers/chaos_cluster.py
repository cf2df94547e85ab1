"""The chaos suite's second topology: three nats-server nodes, PostgreSQL, two processes of every service.

``ClusterStack`` starts a NATS cluster (tests.helpers.nats_cluster, streams
replicated 3 times), a fresh PostgreSQL database at 127.0.0.1:5432 migrated
with `flowbus db upgrade`, and two `flowbus service run NAME` processes per
service, each in a process group of its own and awaited on its ``/readyz``.
No supervisor restarts anything: a killed instance stays dead and its twin
carries on, as in production behind an orchestrator that is slow to act.
The processes use the session's NATS credentials (tests/conftest.py).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import uuid
from pathlib import Path

from flowbus.settings import Settings
from flowbus_services.registry import SERVICE_MODULES
from flowbus_services.up import free_port
from tests.helpers.bus import bus_env
from tests.helpers.chaos_stack import CHAOS_ENV, OutputLog
from tests.helpers.nats_cluster import Cluster
from tests.helpers.processes import FLOWBUS, cli_env, start, wait_ready

PG_HOST, PG_PORT = "127.0.0.1", 5432
INSTANCES = 2


async def _admin(statement: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user="postgres", database="test")
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


class ClusterStack:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.home = root / "home"
        self.work = root / "work"
        self.work.mkdir(parents=True, exist_ok=True)
        (root / "nats").mkdir(exist_ok=True)
        self.cluster = Cluster(root / "nats")
        self.database = f"flowbus_chaos_{uuid.uuid4().hex[:12]}"
        self.db_url = f"postgresql+asyncpg://postgres@{PG_HOST}:{PG_PORT}/{self.database}"
        self.env = {
            **CHAOS_ENV,
            **bus_env(self.cluster.url),
            "FLOWBUS_DATABASE_URL": self.db_url,
            "FLOWBUS_NATS__STREAM_REPLICAS": "3",
            # A dead holder's leases (the scheduler's, the heartbeat loops') pass to its twin within seconds.
            "FLOWBUS_LEASE__TTL_SECONDS": "2",
        }
        self.services: dict[tuple[str, int], subprocess.Popen[str]] = {}
        self.logs: list[OutputLog] = []
        self._created = False

    def settings(self, request_timeout: float | None = None) -> Settings:
        settings = Settings(home=self.home, nats_url=self.cluster.url)
        if request_timeout is not None:
            tuning = settings.nats.model_copy(update={"request_timeout": request_timeout})
            settings = settings.model_copy(update={"nats": tuning})
        return settings

    async def start(self) -> None:
        self.cluster.start()
        await self.cluster.wait_ready()
        await _admin(f'CREATE DATABASE "{self.database}"')
        self._created = True
        await asyncio.to_thread(
            subprocess.run,
            [FLOWBUS, "db", "upgrade"],
            env=cli_env(self.home, self.env),
            check=True,
            capture_output=True,
            timeout=120,
        )
        ports: dict[tuple[str, int], int] = {}
        for name in SERVICE_MODULES:
            for i in range(INSTANCES):
                ports[name, i] = port = free_port()
                args = [FLOWBUS, "service", "run", name, "--port", str(port)]
                proc = start(args, self.home, self.work, self.env, new_session=True)
                self.services[name, i] = proc
                self.logs.append(OutputLog(proc, self.root / f"{name}-{i}.log"))
        for key, proc in self.services.items():
            await asyncio.to_thread(wait_ready, f"http://127.0.0.1:{ports[key]}/readyz", proc, 180)

    def kill_service(self, name: str, instance: int = 0) -> None:
        proc = self.services[name, instance]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)

    async def stop(self) -> None:
        for proc in self.services.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.services.values():
            try:
                await asyncio.to_thread(proc.wait, 60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                await asyncio.to_thread(proc.wait)
        for log in self.logs:
            log.join()
        self.cluster.stop()
        if self._created:
            await _admin(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')

    def output(self) -> str:
        return "".join(log.text() for log in self.logs)
