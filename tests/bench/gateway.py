"""The gateway's part of ``make bench``: GraphQL over HTTP, as a Prefect 1.x client would send it.

- ``gateway_create_flow_run``: ``create_flow_run`` mutations per second and
  latency, with 1 and 64 requests in flight;
- ``gateway_set_flow_run_states``: ``set_flow_run_states`` mutations, each
  run walked through Submitted -> Running -> Success at the versions the
  previous writes gave, with 1 and 64 writers;
- ``gateway_query_runs``: a Hasura-style query of 50 runs with their task
  runs (and each task run's task), with 1 and 16 requests in flight.

One ``aiohttp.ClientSession`` with connection reuse (up to one connection
per request in flight); every request body is serialized before the clock
starts. (httpx spent about 5 ms of CPU per request here, mostly in its
connection pool: with it the benchmark measured its own client.) The key is
the admin key ``flowbus up`` wrote on its first start.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from flowbus.settings import Settings

CREATE = """mutation($input: create_flow_run_input!) {
    create_flow_run(input: $input) {
        id
    }
}"""
SET_STATES = """mutation($input: set_flow_run_states_input!) {
    set_flow_run_states(input: $input) {
        states {
            id
            status
            message
        }
    }
}"""
QUERY_RUNS = """query($flow_id: uuid!) {
    flow_run(where: {flow_id: {_eq: $flow_id}}, order_by: {created: desc}, limit: 50) {
        id
        name
        state
        version
        scheduled_start_time
        task_runs {
            id
            state
            version
            task {
                slug
            }
        }
    }
}"""
WALK = ("Submitted", "Running", "Success")

Drive = Callable[[int, list[Callable[[], Awaitable[list[float]]]]], Awaitable[tuple[list[float], float]]]
Summary = Callable[[str, int, list[float], float], dict[str, Any]]


def graphql_endpoint(settings: Settings) -> tuple[str, dict[str, str]]:
    """The running stack's GraphQL URL and the headers that authenticate to it."""
    url = str(json.loads(settings.endpoint_file.read_text())["graphql_url"])
    headers = {"content-type": "application/json"}
    if settings.api_key_file.exists():
        headers["authorization"] = f"Bearer {settings.api_key_file.read_text().strip()}"
    return url, headers


async def _post(
    http: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str]
) -> tuple[dict[str, Any], float]:
    start = time.perf_counter()
    async with http.post(url, data=body, headers=headers) as response:
        raw = await response.read()
        took = time.perf_counter() - start
        result: dict[str, Any] = json.loads(raw)
        if response.status != 200 or "errors" in result:
            raise RuntimeError(f"gateway: {response.status} {raw[:500]!r}")
    return result["data"], took


def _body(query: str, variables: dict[str, Any]) -> bytes:
    return json.dumps({"query": query, "variables": variables}).encode()


async def gateway_bench(
    settings: Settings, flow_id: str, creates: dict[int, int], walks: dict[int, int], drive: Drive, summary: Summary
) -> list[dict[str, Any]]:
    url, headers = graphql_endpoint(settings)
    results: list[dict[str, Any]] = []
    connector = aiohttp.TCPConnector(limit=64)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as http:
        # One round first: connections opened and every code path warm.
        await _post(http, url, _body(CREATE, {"input": {"flow_id": flow_id}}), headers)

        for concurrency, count in creates.items():
            tag = uuid.uuid4().hex[:8]
            bodies = [
                _body(CREATE, {"input": {"flow_id": flow_id, "idempotency_key": f"gw-{tag}-{i}"}}) for i in range(count)
            ]

            def create(body: bytes) -> Callable[[], Awaitable[list[float]]]:
                async def go() -> list[float]:
                    return [(await _post(http, url, body, headers))[1]]

                return go

            latencies, elapsed = await drive(concurrency, [create(b) for b in bodies])
            results.append(summary("gateway_create_flow_run", concurrency, latencies, elapsed))

        for concurrency, count in walks.items():
            runs = [
                (await _post(http, url, _body(CREATE, {"input": {"flow_id": flow_id}}), headers))[0]["create_flow_run"][
                    "id"
                ]
                for _ in range(count)
            ]
            steps = {
                run_id: [
                    _body(
                        SET_STATES,
                        {"input": {"states": [{"flow_run_id": run_id, "version": v + 1, "state": {"type": t}}]}},
                    )
                    for v, t in enumerate(WALK)
                ]
                for run_id in runs
            }

            def walk(bodies: list[bytes]) -> Callable[[], Awaitable[list[float]]]:
                async def go() -> list[float]:
                    return [(await _post(http, url, body, headers))[1] for body in bodies]

                return go

            latencies, elapsed = await drive(concurrency, [walk(b) for b in steps.values()])
            results.append(summary("gateway_set_flow_run_states", concurrency, latencies, elapsed))

        query = _body(QUERY_RUNS, {"flow_id": flow_id})
        for concurrency, count in ((1, max(1, walks[1] // 3)), (16, max(16, walks[64] // 6))):

            async def read() -> list[float]:
                data, took = await _post(http, url, query, headers)
                assert len(data["flow_run"]) == 50, len(data["flow_run"])
                return [took]

            latencies, elapsed = await drive(concurrency, [read] * count)
            results.append(summary("gateway_query_50_runs_with_task_runs", concurrency, latencies, elapsed))
    return results
