"""``make bench``: throughput and latency of the embedded stack, printed as JSON.

Starts ``flowbus up`` (nats-server from the wheel, SQLite, the five services
in their default processes) in a temporary FLOWBUS_HOME as a subprocess, as a
user would,
then measures from this process:

- ``create_flow_run``: runs created per second and per-request latency, with
  1 and with 64 requests in flight;
- ``set_flow_run_state``: transitions per second and latency, with 1 and 64
  writers; each writer walks its own runs through Submitted -> Running ->
  Success, every write at the version the previous one returned.

Commands are serialized before the clock starts and sent with plain nats-py
requests, so the numbers are the services' (and NATS's), not this client's
pydantic work. For the same reason, before each timed part this process
settles its heap as the services do (``settle_heap``): otherwise a full
collection of its own garbage, walking the tens of thousands of prepared
requests, paused all 64 requests in flight for about 30 ms once per run.

Run delivery and agents (measured first, on the fresh stack; see below):

- ``delivery_latency_future``: due-to-agent latency of runs whose
  ``scheduled_start_time`` is 2 s ahead when created, one due every 20 ms, so
  the scheduler's release loop queues them; latency = when the agent gets
  the run minus its ``scheduled_start_time`` (wall clock, same machine).
- ``delivery_latency_due_now``: runs created due now, one every 50 ms, which
  run creation queues itself; latency = from sending the create request to
  the agent getting the run.
  Both use a real ``LocalAgent`` in this process (``ReceivingAgent``, a
  subclass): its own durable consumer, fetch loop and claim
  (Scheduled -> Submitted), with a label only this measurement uses; it
  timestamps each run-queue message when ``_take`` gets it and executes
  nothing. So "getting the run" is the moment an agent can act on it.
- ``e2e_noop_flow_runs``: no-op flow runs completed per second with two
  ``flowbus agent local start`` subprocesses (default limit), a script flow
  of one no-op task in the bench's temporary home, ``E2E_IN_FLIGHT`` runs
  created and not yet finished at any time; per run, latency from sending the
  create request to its finished state event (``flowbus.evt.flow_run.*.state``,
  core NATS, no polling); ``final_states`` counts how the runs ended
  (with the ``E2E_TIMELINE_RUNS`` created one at a time after the load).
  ``timeline_loaded_ms`` and ``timeline_idle_ms``: each step's median offset
  from the create request, as seen on the bus (tests/bench/timeline.py),
  for the runs under load and for those created one at a time afterwards.
  The agents get SIGTERM at the end (running flows finish) and their process
  groups are killed if they have not stopped after ``AGENT_STOP_SECONDS``.

These run before the create benchmark because that one leaves thousands of
due runs that no agent takes, and the scheduler releases the oldest due
Scheduled runs ``scheduler.release_batch`` (500) at a time: behind them, a
later-scheduled run would never be released.

``BENCH_DATABASE`` picks the database of the stack: ``sqlite`` (the
default: the home's SQLite file), ``postgres`` (a fresh database created at
127.0.0.1:5432 as user ``postgres``, dropped at the end) or a SQLAlchemy URL
(``postgresql+asyncpg://...``, used as it is). The JSON names it.

Never part of the test suite: numbers are printed, not asserted.
``BENCH_TRACES=1`` runs the stack with ``flowbus up --traces`` (the
services, the agents and their runners write every span to the home's
``traces/`` folder) and sends each create with a new sampled trace's W3C
``traceparent`` header and each run's state writes with one of their own, as
traced clients do: the cost of tracing at a sampling ratio of 1.0
(docs/performance.md, "Tracing").
``BENCH_SCALE=0.1`` runs a tenth of the requests and runs (a smoke run).
``BENCH_ONLY=create,set_state`` runs only the named parts (``delivery``,
``e2e``, ``create``, ``set_state``, ``gateway``, ``schedules``, ``startup``), for working on one of them.

``gateway`` (tests/bench/gateway.py): ``create_flow_run``,
``set_flow_run_states`` and a query of 50 runs with their task runs, as
GraphQL over HTTP through the gateway.

``schedules`` (tests/bench/schedules.py) runs on fresh stacks of its
own: the scheduler's CPU and fill time with 1,000 and 10,000 active cron
schedules (``BENCH_SCHEDULE_MINUTES`` minutes of steady state each, default 2).

``startup`` (tests/bench/startup.py) runs last: the time from spawning
``flowbus up`` to its first answered command on fresh and existing homes,
and the idle stack's PSS per process (``STARTUP_*`` settings there).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from nats.aio.msg import Msg
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, set_span_in_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from flowbus import subjects
from flowbus.agent.launcher import Launcher
from flowbus.agent.local import LocalAgent
from flowbus.agent.runner import load_flow
from flowbus.bus_auth import BusRole
from flowbus.client import AsyncClient
from flowbus.runtime.nats import connect
from flowbus.runtime.service import settle_heap
from flowbus.schemas.flows import RunConfigSpec, SerializedFlow, StorageSpec, TaskSpec
from flowbus.schemas.runs import CreateFlowRun, RunQueued, SetFlowRunState, StateChanged, StateSpec
from flowbus.settings import Settings
from flowbus.states import StateType, is_finished
from tests.bench.gateway import gateway_bench
from tests.bench.schedules import SCHEDULE_COUNTS, scheduler_cost
from tests.bench.startup import startup_bench
from tests.bench.timeline import Tap, summarize

SCALE = float(os.environ.get("BENCH_SCALE", "1"))
# BENCH_TRACES=1: the stack runs with `flowbus up --traces` (every process writes its spans
# under the home) and every command the bench sends carries a sampled trace's W3C context.
TRACES = os.environ.get("BENCH_TRACES", "") not in ("", "0")
PARTS = ("delivery", "e2e", "create", "set_state", "gateway", "schedules", "startup")
ONLY = {p.strip() for p in os.environ.get("BENCH_ONLY", ",".join(PARTS)).split(",") if p.strip()}
CREATES = {1: int(1000 * SCALE), 64: int(20000 * SCALE)}
WALKS = {1: int(300 * SCALE), 64: int(6000 * SCALE)}  # runs walked through 3 transitions each
WALK = (StateType.SUBMITTED, StateType.RUNNING, StateType.SUCCESS)
# Through the gateway (GraphQL over HTTP): fewer, as each request costs more than a NATS command.
GATEWAY_CREATES = {1: int(500 * SCALE), 64: int(10000 * SCALE)}
GATEWAY_WALKS = {1: int(150 * SCALE), 64: int(3000 * SCALE)}

# Delivery latency: runs scheduled ahead (released by the scheduler) and runs due now.
FUTURE_RUNS = int(300 * SCALE)
FUTURE_LEAD = 2.0  # seconds from the creates to the first run coming due
FUTURE_SPACING = 0.02  # one run comes due every 20 ms
DUE_NOW_RUNS = int(200 * SCALE)
DUE_NOW_SPACING = 0.05  # one create every 50 ms
RECEIVE_GRACE = 15.0  # how long after the last run is due we wait for the agent to get it

# End to end: no-op flow runs executed by agent subprocesses.
E2E_RUNS = int(400 * SCALE)
E2E_AGENTS = 2
E2E_IN_FLIGHT = 16  # runs created and not yet finished, at any time
E2E_TIMEOUT = 300.0
# After the load: runs created one at a time on the idle agents, for the timeline of an unloaded run.
E2E_TIMELINE_RUNS = 20
AGENT_START_SECONDS = 60.0
AGENT_STOP_SECONDS = 30.0

NOOP_FLOW = """
from flowbus import Flow, task


@task
def noop():
    pass


with Flow({name!r}) as flow:
    noop()
"""


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


def _latency(name: str, latencies: list[float], **extra: Any) -> dict[str, Any]:
    ordered = sorted(latencies)

    def ms(value: float) -> float:
        return round(value * 1000, 2)

    return {
        "name": name,
        **extra,
        "count": len(ordered),
        "p50_ms": ms(statistics.median(ordered)) if ordered else None,
        "p99_ms": ms(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]) if ordered else None,
        "max_ms": ms(ordered[-1]) if ordered else None,
    }


async def _drive(workers: int, jobs: list[Callable[[], Awaitable[list[float]]]]) -> tuple[list[float], float]:
    """Run ``jobs`` with ``workers`` of them in flight; return every latency and the wall time."""
    queue = list(reversed(jobs))
    latencies: list[float] = []
    settle_heap()

    async def worker() -> None:
        while queue:
            latencies.extend(await queue.pop()())

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(workers)))
    return latencies, time.perf_counter() - start


def _trace_headers() -> dict[str, str] | None:
    """With BENCH_TRACES, a new sampled trace's W3C context, as a traced client's command carries
    (made with the SDK's propagator before the clock starts); else None."""
    if not TRACES:
        return None
    ids = RandomIdGenerator()
    parent = NonRecordingSpan(
        SpanContext(ids.generate_trace_id(), ids.generate_span_id(), is_remote=False, trace_flags=TraceFlags(1))
    )
    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier, context=set_span_in_context(parent))
    return carrier


async def _request(
    nc: Any, subject: str, payload: bytes, headers: dict[str, str] | None = None
) -> tuple[dict[str, Any], float]:
    start = time.perf_counter()
    msg = await nc.request(subject, payload, timeout=30, headers=headers)
    took = time.perf_counter() - start
    reply = json.loads(msg.data)
    if not reply["ok"]:
        raise RuntimeError(f"{subject}: {reply['error']}")
    return reply["data"], took


class _NoForkServer(Launcher):
    async def warm_up(self) -> None:
        """Nothing executes in the receiving agent: no fork server to start."""


class ReceivingAgent(LocalAgent):
    """A ``LocalAgent`` that records when each queued run reaches it and runs nothing.

    Same durable consumer, fetch loop, limit and claim (Scheduled -> Submitted)
    as the real agent; only the flow process is left out.
    """

    def __init__(self, settings: Settings, labels: list[str]) -> None:
        super().__init__(settings, labels=labels, name="bench-receiver", hostname_label=False)
        self._launcher = _NoForkServer()
        self._warm.size = 0
        # run id -> (time.time(), time.perf_counter()) when _take first got it
        self.received: dict[str, tuple[float, float]] = {}
        self.got_one = asyncio.Event()

    async def _take(self, msg: Msg) -> None:
        wall, mono = time.time(), time.perf_counter()
        with contextlib.suppress(ValueError):
            self.received.setdefault(RunQueued.model_validate_json(msg.data).flow_run_id, (wall, mono))
            self.got_one.set()
        await super()._take(msg)

    async def _run_child(self, queued: RunQueued) -> None:
        """Claimed: the measurement ends here."""

    async def until_received(self, run_ids: set[str], seconds: float) -> None:
        """Wait until every run in ``run_ids`` has been received, or ``seconds`` have passed."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                while not run_ids <= self.received.keys():
                    self.got_one.clear()
                    await self.got_one.wait()


async def _first_heartbeats(nc: Any, count: int, seconds: float, agent_id: str = "*") -> set[str]:
    """Subscribe to agent heartbeats; return the subscription's ids once ``count`` agents have beaten.

    An agent's first heartbeat follows the creation of its run-queue consumer: it is ready.
    """
    seen: set[str] = set()
    enough = asyncio.Event()

    async def on_beat(msg: Msg) -> None:
        seen.add(msg.subject.rsplit(".", 1)[-1])
        if len(seen) >= count:
            enough.set()

    sub = await nc.subscribe(subjects.agent_heartbeat(agent_id), cb=on_beat)
    try:
        await asyncio.wait_for(enough.wait(), seconds)
    finally:
        await sub.unsubscribe()
    return seen


async def delivery_latency(settings: Settings, nc: Any, flow_id: str) -> list[dict[str, Any]]:
    """Due-to-agent latency, for runs scheduled ahead and for runs created due now."""
    label = f"bench-latency-{uuid.uuid4().hex[:8]}"
    agent = ReceivingAgent(settings, [label])
    results: list[dict[str, Any]] = []
    # The agent announces itself on stdout, where our JSON goes.
    with contextlib.redirect_stdout(sys.stderr):
        ready = asyncio.create_task(_first_heartbeats(nc, 1, AGENT_START_SECONDS, agent.id))
        await asyncio.sleep(0.1)  # subscribed before the agent can beat
        running = asyncio.create_task(agent.run())
        try:
            done, _ = await asyncio.wait({ready, running}, return_when=asyncio.FIRST_COMPLETED)
            if running in done or ready.exception() is not None:
                raise RuntimeError("the receiving agent did not start") from (
                    running.exception() if running.done() else ready.exception()
                )

            # Scheduled ahead: the scheduler's release loop queues them.
            base = time.time() + FUTURE_LEAD
            starts = [base + i * FUTURE_SPACING for i in range(FUTURE_RUNS)]
            payloads = [
                CreateFlowRun(
                    flow_id=flow_id,
                    labels=[label],
                    scheduled_start_time=datetime.fromtimestamp(start, UTC),
                    idempotency_key=f"bench-future-{i}",
                )
                .model_dump_json()
                .encode()
                for i, start in enumerate(starts)
            ]
            due_at: dict[str, float] = {}
            late = 0

            def create_ahead(payload: bytes, start: float) -> Callable[[], Awaitable[list[float]]]:
                async def go() -> list[float]:
                    nonlocal late
                    data, _ = await _request(nc, subjects.RunCreationCommands.CREATE_FLOW_RUN, payload)
                    if time.time() < start:
                        due_at[data["id"]] = start
                    else:
                        late += 1  # due before it was created: run creation queued it, not the scheduler
                    return []

                return go

            await _drive(16, [create_ahead(p, s) for p, s in zip(payloads, starts, strict=True)])
            await agent.until_received(set(due_at), max(0.0, starts[-1] - time.time()) + RECEIVE_GRACE)
            got = [agent.received[r][0] - due for r, due in due_at.items() if r in agent.received]
            results.append(
                _latency(
                    "delivery_latency_future",
                    got,
                    runs=FUTURE_RUNS,
                    due_every_ms=FUTURE_SPACING * 1000,
                    created_ahead_s=FUTURE_LEAD,
                    not_received=len(due_at) - len(got),
                    created_late=late,
                )
            )

            # Due now: run creation queues each run with its create.
            sent: dict[str, float] = {}
            first = time.perf_counter() + 0.1

            async def create_now(i: int, payload: bytes) -> None:
                await asyncio.sleep(max(0.0, first + i * DUE_NOW_SPACING - time.perf_counter()))
                start = time.perf_counter()
                data, _ = await _request(nc, subjects.RunCreationCommands.CREATE_FLOW_RUN, payload)
                sent[data["id"]] = start

            payloads = [
                CreateFlowRun(flow_id=flow_id, labels=[label], idempotency_key=f"bench-now-{i}")
                .model_dump_json()
                .encode()
                for i in range(DUE_NOW_RUNS)
            ]
            await asyncio.gather(*(create_now(i, p) for i, p in enumerate(payloads)))
            await agent.until_received(set(sent), RECEIVE_GRACE)
            got = [agent.received[r][1] - start for r, start in sent.items() if r in agent.received]
            results.append(
                _latency(
                    "delivery_latency_due_now",
                    got,
                    runs=DUE_NOW_RUNS,
                    created_every_ms=DUE_NOW_SPACING * 1000,
                    not_received=len(sent) - len(got),
                )
            )
        finally:
            ready.cancel()
            agent.stop()
            await running
    return results


def _start_agent(env: dict[str, str], label: str, name: str, log: IO[bytes]) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "flowbus_services.cli", "agent", "local", "start"]
    return subprocess.Popen(
        [*command, "--label", label, "--no-hostname-label", "--name", name],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        # Its own process group: the agent, its fork server and its flow processes.
        start_new_session=True,
    )


def _stop_agents(agents: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM (running flows finish), then SIGKILL whatever is left of each agent's process group."""
    for proc in agents:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + AGENT_STOP_SECONDS
    for proc in agents:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
    for proc in agents:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


async def e2e_noop_flow_runs(settings: Settings, env: dict[str, str], nc: Any) -> dict[str, Any]:
    """No-op flow runs completed per second, end to end, with agent subprocesses."""
    label = f"bench-e2e-{uuid.uuid4().hex[:8]}"
    name = "bench-noop"
    script = settings.home / "bench_noop.py"
    script.write_text(NOOP_FLOW.format(name=name))
    storage = StorageSpec(type="script", path=str(script))
    spec = load_flow(storage, name).serialize()
    spec = spec.model_copy(update={"storage": storage, "run_config": RunConfigSpec(labels=[label])})
    async with AsyncClient(settings) as client:
        flow = await client.register(spec, "bench")
    payloads = [
        CreateFlowRun(flow_id=flow.id, idempotency_key=f"bench-e2e-{i}").model_dump_json().encode()
        for i in range(E2E_RUNS)
    ]

    finished: dict[str, tuple[float, StateType]] = {}
    waiting: dict[str, asyncio.Future[None]] = {}

    async def on_state(msg: Msg) -> None:
        now = time.perf_counter()
        event = StateChanged.model_validate_json(msg.data)
        run_id = event.flow_run_id
        if event.task_run_id is None and is_finished(event.state.type) and run_id not in finished:
            finished[run_id] = (now, event.state.type)
            waiter = waiting.pop(run_id, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    tap = Tap()

    def run_one(payload: bytes) -> Callable[[], Awaitable[list[float]]]:
        async def go() -> list[float]:
            start = time.perf_counter()
            data, _ = await _request(nc, subjects.RunCreationCommands.CREATE_FLOW_RUN, payload)
            run_id = data["id"]
            tap.created[run_id] = start
            if run_id not in finished:
                waiting[run_id] = asyncio.get_running_loop().create_future()
                await waiting[run_id]
            return [finished[run_id][0] - start]

        return go

    states = await nc.subscribe(subjects.flow_run_event("*", subjects.FlowRunFact.STATE), cb=on_state)
    agents: list[subprocess.Popen[bytes]] = []
    logs = [(settings.home / f"agent-{i}.log").open("wb") for i in range(E2E_AGENTS)]
    try:
        ready = asyncio.create_task(_first_heartbeats(nc, E2E_AGENTS, AGENT_START_SECONDS))
        await asyncio.sleep(0.1)  # subscribed before an agent can beat
        for i, log in enumerate(logs):
            agents.append(_start_agent(env, label, f"bench-agent-{i}", log))
        try:
            await ready
        except TimeoutError:
            tails = [(settings.home / f"agent-{i}.log").read_text(errors="replace")[-2000:] for i in range(E2E_AGENTS)]
            codes = [a.poll() for a in agents]
            raise RuntimeError(f"agents not ready in {AGENT_START_SECONDS} s (exit codes {codes}): {tails}") from None
        await tap.start(nc)
        latencies, elapsed = await asyncio.wait_for(_drive(E2E_IN_FLIGHT, [run_one(p) for p in payloads]), E2E_TIMEOUT)
        loaded = tap.steps()
        tap.created.clear()
        idle = [
            CreateFlowRun(flow_id=flow.id, idempotency_key=f"bench-e2e-idle-{i}").model_dump_json().encode()
            for i in range(E2E_TIMELINE_RUNS)
        ]
        for payload in idle:
            await run_one(payload)()
            await asyncio.sleep(0.05)  # the runner's exit and the agent's settling, out of the next run's way
        unloaded = tap.steps()
    finally:
        await tap.stop()
        await states.unsubscribe()
        _stop_agents(agents)
        for log in logs:
            log.close()
    ended = collections.Counter(state.value for _, state in finished.values())
    return {
        **_summary("e2e_noop_flow_runs", E2E_IN_FLIGHT, latencies, elapsed),
        "agents": E2E_AGENTS,
        "agent_limit": settings.agent.max_concurrent_runs,
        "final_states": dict(ended),
        # Each step's median ms from sending the create (tests/bench/timeline.py), under the load and idle.
        "timeline_loaded_ms": summarize(loaded),
        "timeline_idle_ms": summarize(unloaded),
    }


async def bench(settings: Settings, env: dict[str, str]) -> list[dict[str, Any]]:
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
    nc = await connect(settings, "bench", BusRole.SERVICE)
    results: list[dict[str, Any]] = []
    try:
        # First, while the only due runs are their own (see the module docstring).
        if "delivery" in ONLY:
            results.extend(await delivery_latency(settings, nc, flow.id))
        if "e2e" in ONLY:
            results.append(await e2e_noop_flow_runs(settings, env, nc))

        for concurrency, count in CREATES.items() if "create" in ONLY else ():
            created: list[str] = []
            payloads = [
                (
                    CreateFlowRun(flow_id=flow.id, idempotency_key=f"bench-{concurrency}-{i}")
                    .model_dump_json()
                    .encode(),
                    _trace_headers(),
                )
                for i in range(count)
            ]

            def create(
                prepared: tuple[bytes, dict[str, str] | None], created: list[str] = created
            ) -> Callable[[], Awaitable[list[float]]]:
                async def go() -> list[float]:
                    data, took = await _request(nc, subjects.RunCreationCommands.CREATE_FLOW_RUN, *prepared)
                    created.append(data["id"])
                    return [took]

                return go

            latencies, elapsed = await _drive(concurrency, [create(p) for p in payloads])
            results.append(_summary("create_flow_run", concurrency, latencies, elapsed))

        async with AsyncClient(settings) as client:
            for concurrency, count in WALKS.items() if "set_state" in ONLY else ():
                runs = [await client.create_flow_run_out(flow.id) for _ in range(count)]

                def walk(run_id: str) -> Callable[[], Awaitable[list[float]]]:
                    headers = _trace_headers()  # one trace per run, as a traced runner's writes

                    async def go() -> list[float]:
                        version, took_all = 1, []
                        for target in WALK:
                            cmd = SetFlowRunState(flow_run_id=run_id, version=version, state=StateSpec(type=target))
                            data, took = await _request(
                                nc, subjects.StateCommands.SET_FLOW_RUN_STATE, cmd.model_dump_json().encode(), headers
                            )
                            version = data["version"]
                            took_all.append(took)
                        return took_all

                    return go

                latencies, elapsed = await _drive(concurrency, [walk(r.id) for r in runs])
                results.append(_summary("set_flow_run_state", concurrency, latencies, elapsed))
        if "gateway" in ONLY:
            results.extend(await gateway_bench(settings, flow.id, GATEWAY_CREATES, GATEWAY_WALKS, _drive, _summary))
    finally:
        await nc.close()
    return results


BENCH_DATABASE = os.environ.get("BENCH_DATABASE", "sqlite")
PG_SERVER = "127.0.0.1:5432"


async def _pg_admin(statement: str) -> None:
    import asyncpg

    host, port = PG_SERVER.split(":")
    conn = await asyncpg.connect(host=host, port=int(port), user="postgres", database="postgres")
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


@contextlib.contextmanager
def _database() -> Iterator[tuple[str | None, str]]:
    """The stack's database URL (None: the home's SQLite file) and how the JSON names it."""
    if BENCH_DATABASE == "sqlite":
        yield None, "SQLite WAL"
    elif BENCH_DATABASE == "postgres":
        name = f"flowbus_bench_{uuid.uuid4().hex[:12]}"
        asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
        try:
            yield f"postgresql+asyncpg://postgres@{PG_SERVER}/{name}", f"PostgreSQL at {PG_SERVER} (fresh database)"
        finally:
            asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    elif "://" in BENCH_DATABASE:
        yield BENCH_DATABASE, BENCH_DATABASE.split("://", 1)[0].split("+", 1)[0]
    else:
        raise SystemExit(f"BENCH_DATABASE must be sqlite, postgres or a database URL, not {BENCH_DATABASE!r}")


@contextlib.contextmanager
def _serving(
    database_url: str | None, extra_env: dict[str, str] | None = None
) -> Iterator[tuple[Settings, dict[str, str], str]]:
    """A fresh ``flowbus up`` in a temporary home: its settings, environment and process layout."""
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        env = {**os.environ, "FLOWBUS_HOME": str(home), **(extra_env or {})}
        for var in ("FLOWBUS_NATS_URL", "FLOWBUS_DATABASE_URL", "FLOWBUS_AUTH_DIR", "FLOWBUS_NATS_CREDS"):
            env.pop(var, None)
        if database_url:
            env["FLOWBUS_DATABASE_URL"] = database_url
        up = subprocess.Popen(
            [sys.executable, "-m", "flowbus_services.cli", "up", *(["--traces"] if TRACES else [])],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            assert up.stdout is not None
            layout = "?"
            for line in up.stdout:
                if line.strip().startswith("services:"):
                    layout = line.split(":", 1)[1].strip()
                if line.startswith("Press Ctrl-C"):
                    break
            else:
                raise SystemExit(f"flowbus up exited with {up.wait()}")
            # Keep reading its output, so that a full pipe never blocks it; the tail goes with a failure.
            tail: collections.deque[str] = collections.deque(maxlen=40)
            threading.Thread(target=tail.extend, args=(up.stdout,), daemon=True).start()
            try:
                yield Settings(home=home, database_url=database_url), env, layout
            except BaseException:
                print("".join(tail), file=sys.stderr)
                raise
        finally:
            up.terminate()
            up.wait(timeout=30)


def main() -> None:
    results: list[dict[str, Any]] = []
    layout = "?"
    database = "?"
    if ONLY & set(PARTS) - {"schedules", "startup"}:
        with _database() as (url, database), _serving(url) as (settings, env, layout):
            results.extend(asyncio.run(bench(settings, env)))
    # Last, each on a stack (and database) of its own: the schedules leave thousands of due runs behind.
    for count in SCHEDULE_COUNTS if "schedules" in ONLY else ():
        with (
            _database() as (url, database),
            _serving(url, {"FLOWBUS_SCHEDULER__PLAN_RUNS": "false"}) as (settings, env, layout),
        ):
            results.append(scheduler_cost(settings, env, count))
    if "startup" in ONLY:
        results.extend(startup_bench())
    print(
        json.dumps(
            {
                "stack": f"flowbus up (embedded nats-server, {database}; service processes: {layout})",
                "database": database,
                "traces": TRACES,
                "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                "results": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
