"""A fuzz of every command subject: each reply a valid envelope, never INTERNAL, no time-out, no crash.

For each subject of contracts/subjects.json, payloads built from its
contract (tests.helpers.chaos_fuzz): random bytes, scraps, random JSON,
JSON nested 10,000 deep, a valid instance with real ids, a duplicate key,
mutated instances, and one payload past 2 MiB (which must get
VALIDATION_ERROR). The commands that destroy (delete, archive, rename) go
last, so the ids the others use still exist. The heartbeat subjects get the
same payloads, fire and forget. Then: no service process died or logged a
traceback, and a normal run on a fresh flow succeeds.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import random
import time
from typing import Any

import pytest
from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from pydantic import ValidationError
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from flowbus import subjects
from flowbus.client import AsyncClient
from flowbus.schemas.common import ErrorCode, FlowbusError, Reply
from flowbus.states import StateType
from tests.helpers import unique
from tests.helpers.chaos import Inputs, Load, analyse, chaos_scale, record_and_check, summarize
from tests.helpers.chaos_fuzz import command_schemas, fuzz_payloads, heartbeat_schema, two_mib
from tests.helpers.chaos_stack import SHARED, ChaosStack, Probe, register_ledger_flow

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(240 * chaos_scale())]

PER_SUBJECT = 40  # payloads per subject at CHAOS_SCALE=1 (and one past 2 MiB)
IN_FLIGHT = 8
REPLY_TIMEOUT = 10.0  # the client's own request timeout
# CHAOS_SEED varies the payloads (the summary records the seed, which reproduces them).
SEED = int(os.environ.get("CHAOS_SEED", "20261207"))
DESTRUCTIVE = ("delete", "archive", "rename")
FUZZ_FIGURES = ("invalid_envelopes", "internal", "timeouts", "no_responders", "two_mib_not_validation_error")


async def _task_id(engine: AsyncEngine, flow_id: str, slug: str) -> str:
    """The id of one of the flow's tasks (no reply carries it; ensure_task_run takes it)."""
    query = text("SELECT id FROM task WHERE flow_id = :flow AND slug = :slug")
    async with engine.connect() as conn:
        return str((await conn.execute(query, {"flow": flow_id, "slug": slug})).scalar_one())


def _destructive_last(subject: str) -> tuple[bool, str]:
    return any(word in subject.rsplit(".", 1)[-1] for word in DESTRUCTIVE), subject


class Fuzzer:
    """Sends the payloads, a few at a time, and counts the replies by code and what was wrong."""

    def __init__(self, nc: Client) -> None:
        self.nc = nc
        self.codes: collections.Counter[str] = collections.Counter()
        self.kinds: collections.Counter[str] = collections.Counter()
        self.bad: collections.Counter[str] = collections.Counter()
        self.examples: dict[str, str] = {}
        self._gate = asyncio.Semaphore(IN_FLIGHT)

    def _wrong(self, what: str, example: str) -> None:
        self.bad[what] += 1
        self.examples.setdefault(what, example[:300])

    async def send(self, subject: str, kind: str, payload: bytes) -> None:
        self.kinds[kind.split(":")[0]] += 1
        async with self._gate:
            try:
                reply = await self.nc.request(subject, payload, timeout=REPLY_TIMEOUT)
            except NatsTimeout:
                return self._wrong("timeouts", f"{subject} {kind}")
            except NoRespondersError:
                return self._wrong("no_responders", f"{subject} {kind}")
        try:
            envelope = Reply[object].model_validate_json(reply.data)
        except ValidationError:
            return self._wrong("invalid_envelopes", f"{subject} {kind}: {reply.data[:200]!r}")
        if envelope.ok != (envelope.error is None):
            return self._wrong("invalid_envelopes", f"{subject} {kind}: {reply.data[:200]!r}")
        code = "ok" if envelope.error is None else envelope.error.code.value
        self.codes[code] += 1
        if code == ErrorCode.INTERNAL:
            self._wrong("internal", f"{subject} {kind}: {envelope.error.message if envelope.error else ''}")
        if kind == "two_mib" and code != ErrorCode.VALIDATION_ERROR:
            self._wrong("two_mib_not_validation_error", f"{subject}: {code}")
        return None


async def _fuzz_target(client: AsyncClient, engine: AsyncEngine, probe: Probe) -> dict[str, Any]:
    """A project, a flow, a run and an agent of the fuzz's own: the real ids its
    valid instances carry. Runs it creates get a label no agent has."""
    project = unique("fuzz")
    await client.create_project(project)
    nobody = f"{probe.label}-nobody"
    target = probe.root / "target"
    target_id = await register_ledger_flow(client, probe.root, unique("fuzz-target"), target / "ledger", probe.hold)
    flow = await client.get_flow(target_id)
    await client.set_flow_group_labels(flow.flow_group_id, [nobody])
    run_id = await client.create_flow_run(target_id, labels=[nobody])
    detail = await client.get_flow_run(run_id)
    agent = await client.register_agent(f"{probe.name}-fake", labels=[nobody])
    return {
        "flow_run_id": run_id,
        "flow_id": target_id,
        "project_id": (await client.get_project(project)).id,
        "flow_group_id": flow.flow_group_id,
        "version_group_id": flow.flow_group_id,
        "task_run_id": detail.task_runs[0].id,
        "task_id": await _task_id(engine, target_id, detail.task_runs[0].task_slug),
        "agent_id": agent.id,
        "project_name": project,
        "project": project,
        "flow_name": flow.name,
        "labels": [nobody],
    }


def _plan(real: dict[str, Any], rng: random.Random, count: int) -> list[tuple[str, str, bytes]]:
    plan: list[tuple[str, str, bytes]] = []
    for subject, (schema, doc) in sorted(command_schemas().items(), key=lambda item: _destructive_last(item[0])):
        plan += [(subject, kind, payload) for kind, payload in fuzz_payloads(schema, doc, real, rng, count)]
        plan.append((subject, "two_mib", two_mib(schema, doc, real, rng)))
    return plan


async def _publish_heartbeats(nc: Client, real: dict[str, Any], rng: random.Random, count: int) -> int:
    """The fire-and-forget subjects get the same kinds of payloads; how many were published."""
    beats = 0
    for name, subject in (
        ("RunHeartbeat", subjects.flow_run_heartbeat(real["flow_run_id"])),
        ("AgentHeartbeat", subjects.agent_heartbeat(real["agent_id"])),
    ):
        schema, doc = heartbeat_schema(name)
        for _, payload in [*fuzz_payloads(schema, doc, real, rng, count), ("two_mib", two_mib(schema, doc, real, rng))]:
            await nc.publish(subject, payload)
            beats += 1
    await nc.flush()
    return beats


async def test_fuzz_every_command_subject(
    chaos_stack: ChaosStack, probe: Probe, client: AsyncClient, service_nc: Client, engine: AsyncEngine
) -> None:
    real = await _fuzz_target(client, engine, probe)
    rng = random.Random(SEED)
    count = PER_SUBJECT * chaos_scale()
    plan = _plan(real, rng, count)
    pids = {name: chaos_stack.service_pid(name) for name in ("run_creation", "state", SHARED)}
    nats_pid = chaos_stack.nats_pid()
    assert chaos_stack.log is not None
    mark = chaos_stack.log.mark()

    began = time.monotonic()
    fuzzer = Fuzzer(service_nc)
    await asyncio.gather(*(fuzzer.send(*item) for item in plan))
    beats = await _publish_heartbeats(service_nc, real, rng, count)
    fuzz_seconds = time.monotonic() - began

    # A schedule a valid instance gave the target would keep the scheduler
    # busy for the probes after this one (the flow may be gone already).
    with contextlib.suppress(FlowbusError):
        await client.set_flow_schedule_state(real["flow_id"], False)

    # Every process still answers, and none died or was restarted meanwhile.
    await asyncio.gather(client.get_projects(), client.get_agents(), client.get_flow_runs(flow_id=real["flow_id"]))
    output = "".join(line for _, line in chaos_stack.log.lines[mark:])
    restarted = sum(1 for name, pid in pids.items() if chaos_stack.service_pid(name) != pid)
    crashes = len(probe.deaths()) + restarted + int(chaos_stack.nats_pid() != nats_pid)

    # A normal run, on a fresh flow, after all that.
    flow_id = await probe.register_flow(client)
    probe.agent(f"{probe.name}-after")
    after = await client.create_flow_run(flow_id, labels=[probe.label])
    figures, runs = await analyse(
        engine, service_nc, Inputs([flow_id], Load(), probe.ledger, direct_runs=[after]), wait_seconds=60
    )
    summary = summarize(
        probe.name,
        figures,
        runs,
        None,
        kills=0,
        recovery=[],
        seconds=time.monotonic() - probe.began,
        direct=1,
        requests=len(plan),
        subjects=len(command_schemas()),
        heartbeat_publishes=beats,
        fuzz_s=round(fuzz_seconds, 1),
        seed=SEED,
        payload_kinds=dict(fuzzer.kinds),
        codes=dict(fuzzer.codes),
        **{what: fuzzer.bad[what] for what in FUZZ_FIGURES},
        crashes=crashes,
        tracebacks=output.count("Traceback (most recent call last)"),
        normal_run_failed=int([r.state for r in runs] != [StateType.SUCCESS]),
        examples=fuzzer.examples,
    )
    record_and_check(summary, checked=(*FUZZ_FIGURES, "crashes", "tracebacks", "normal_run_failed"))
