"""``make bench``: throughput of the real stack, printed as JSON.

Starts a nats-server from the wheel and the five services on a temporary
SQLite database in this process, then measures flow-run creation and state
transitions, one at a time and with requests in flight. Never part of the
test suite: numbers are printed, not asserted.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path

from flowbus.client import AsyncClient
from flowbus.embedded import SERVICE_MODULES, NatsServer, build_service_app
from flowbus.schemas.flows import RunConfigSpec, SerializedFlow, StorageSpec, TaskSpec
from flowbus.settings import Settings
from flowbus.states import StateType

RUNS = 300
IN_FLIGHT = 16


async def _timed(label: str, count: int, coros: list, in_flight: int) -> dict:
    gate = asyncio.Semaphore(in_flight)

    async def one(coro) -> None:  # type: ignore[no-untyped-def]
        async with gate:
            await coro

    start = time.perf_counter()
    await asyncio.gather(*(one(c) for c in coros))
    elapsed = time.perf_counter() - start
    return {
        "name": label,
        "count": count,
        "in_flight": in_flight,
        "seconds": round(elapsed, 3),
        "per_second": round(count / elapsed, 1),
    }


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = NatsServer(Path(tmp) / "js")
        server.start()
        await server.wait_ready()
        settings = Settings(home=Path(tmp), nats_url=server.url, database_url=f"sqlite+aiosqlite:///{tmp}/bench.db")
        results = []
        try:
            async with AsyncExitStack() as stack:
                for name in SERVICE_MODULES:
                    await stack.enter_async_context(build_service_app(name, settings))
                async with AsyncClient(settings) as client:
                    await client.create_project("bench")
                    spec = SerializedFlow(
                        name="bench",
                        tasks=[TaskSpec(slug="t-1", name="t")],
                        storage=StorageSpec(type="script", path="/bench.py"),
                        run_config=RunConfigSpec(labels=["bench-no-agent"]),
                    )
                    flow = await client.register(spec, "bench")
                    for in_flight in (1, IN_FLIGHT):
                        runs: list = []

                        async def create(runs=runs) -> None:  # type: ignore[no-untyped-def]
                            runs.append(await client.create_flow_run(flow.id))

                        results.append(
                            await _timed("create_flow_run", RUNS, [create() for _ in range(RUNS)], in_flight)
                        )
                        results.append(
                            await _timed(
                                "set_flow_run_state",
                                RUNS,
                                [client.set_flow_run_state(r.id, r.version, StateType.CANCELLED) for r in runs],
                                in_flight,
                            )
                        )
        finally:
            server.stop()
        print(json.dumps({"backend": "sqlite", "results": results}, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
