"""``make bench``: throughput and latency of the embedded stack, printed as JSON.

Starts ``flowbus up`` (nats-server from the wheel, SQLite, the five services
in one process) in a temporary FLOWBUS_HOME as a subprocess, as a user would,
then measures from this process:

- ``create_flow_run``: runs created per second and per-request latency, with
  1 and with 64 requests in flight;
- ``set_flow_run_state``: transitions per second and latency, with 1 and 64
  writers; each writer walks its own runs through Submitted -> Running ->
  Success, every write at the version the previous one returned.

Commands are serialized before the clock starts and sent with plain nats-py
requests, so the numbers are the services' (and NATS's), not this client's
pydantic work. Never part of the test suite: numbers are printed, not
asserted. ``BENCH_SCALE=0.1`` runs a tenth of the requests (a smoke run).
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import nats

from flowbus import subjects
from flowbus.client import AsyncClient
from flowbus.schemas.flows import RunConfigSpec, SerializedFlow, StorageSpec, TaskSpec
from flowbus.schemas.runs import CreateFlowRun, SetFlowRunState, StateSpec
from flowbus.settings import Settings
from flowbus.states import StateType

SCALE = float(os.environ.get("BENCH_SCALE", "1"))
CREATES = {1: int(1000 * SCALE), 64: int(20000 * SCALE)}
WALKS = {1: int(300 * SCALE), 64: int(6000 * SCALE)}  # runs walked through 3 transitions each
WALK = (StateType.SUBMITTED, StateType.RUNNING, StateType.SUCCESS)


def _summary(name: str, concurrency: int, latencies: list[float], elapsed: float) -> dict[str, Any]:
    ordered = sorted(latencies)
    return {
        "name": name,
        "concurrency": concurrency,
        "count": len(ordered),
        "seconds": round(elapsed, 3),
        "per_second": round(len(ordered) / elapsed, 1),
        "p50_ms": round(statistics.median(ordered) * 1000, 2),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 2),
    }


async def _drive(workers: int, jobs: list[Callable[[], Awaitable[list[float]]]]) -> tuple[list[float], float]:
    """Run ``jobs`` with ``workers`` of them in flight; return every latency and the wall time."""
    queue = list(reversed(jobs))
    latencies: list[float] = []

    async def worker() -> None:
        while queue:
            latencies.extend(await queue.pop()())

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(workers)))
    return latencies, time.perf_counter() - start


async def _request(nc: Any, subject: str, payload: bytes) -> tuple[dict[str, Any], float]:
    start = time.perf_counter()
    msg = await nc.request(subject, payload, timeout=30)
    took = time.perf_counter() - start
    reply = json.loads(msg.data)
    if not reply["ok"]:
        raise RuntimeError(f"{subject}: {reply['error']}")
    return reply["data"], took


async def bench(settings: Settings) -> list[dict[str, Any]]:
    async with AsyncClient(settings) as client:
        await client.create_project("bench", skip_if_exists=True)
        spec = SerializedFlow(
            name="bench",
            tasks=[TaskSpec(slug="t-1", name="t")],
            storage=StorageSpec(type="script", path="/bench.py"),
            # A label no agent has: runs stay where the benchmark puts them.
            run_config=RunConfigSpec(labels=["bench-no-agent"]),
        )
        flow = await client.register(spec, "bench")
    nc = await nats.connect(settings.nats_servers())
    results: list[dict[str, Any]] = []
    try:
        for concurrency, count in CREATES.items():
            created: list[str] = []
            payloads = [
                CreateFlowRun(flow_id=flow.id, idempotency_key=f"bench-{concurrency}-{i}").model_dump_json().encode()
                for i in range(count)
            ]

            def create(payload: bytes, created: list[str] = created) -> Callable[[], Awaitable[list[float]]]:
                async def go() -> list[float]:
                    data, took = await _request(nc, subjects.RunCreation.CREATE_FLOW_RUN, payload)
                    created.append(data["id"])
                    return [took]

                return go

            latencies, elapsed = await _drive(concurrency, [create(p) for p in payloads])
            results.append(_summary("create_flow_run", concurrency, latencies, elapsed))

        async with AsyncClient(settings) as client:
            for concurrency, count in WALKS.items():
                runs = [await client.create_flow_run(flow.id) for _ in range(count)]

                def walk(run_id: str) -> Callable[[], Awaitable[list[float]]]:
                    async def go() -> list[float]:
                        version, took_all = 1, []
                        for target in WALK:
                            cmd = SetFlowRunState(flow_run_id=run_id, version=version, state=StateSpec(type=target))
                            data, took = await _request(
                                nc, subjects.State.SET_FLOW_RUN_STATE, cmd.model_dump_json().encode()
                            )
                            version = data["version"]
                            took_all.append(took)
                        return took_all

                    return go

                latencies, elapsed = await _drive(concurrency, [walk(r.id) for r in runs])
                results.append(_summary("set_flow_run_state", concurrency, latencies, elapsed))
    finally:
        await nc.close()
    return results


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        env = {**os.environ, "FLOWBUS_HOME": str(home)}
        for var in ("FLOWBUS_NATS_URL", "FLOWBUS_DATABASE_URL"):
            env.pop(var, None)
        up = subprocess.Popen(
            [sys.executable, "-m", "flowbus.cli.main", "up"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            assert up.stdout is not None
            for line in up.stdout:
                if line.startswith("Press Ctrl-C"):
                    break
            else:
                raise SystemExit(f"flowbus up exited with {up.wait()}")
            settings = Settings(home=home)
            results = asyncio.run(bench(settings))
        finally:
            up.terminate()
            up.wait(timeout=30)
    print(
        json.dumps(
            {
                "stack": "flowbus up (embedded nats-server, SQLite WAL, all services in one process)",
                "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                "results": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
