"""Run delivery to real agents: exactly-once claims, label routing, limits, stopping.

Agents run in this process (``LocalAgent``); each flow run still executes in
its own forked process, against the real services and nats-server. Flows
record each execution in a file, so "ran exactly once" is observed from the
flows' side, not only from the states.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import textwrap
from pathlib import Path

import pytest
from nats.aio.client import Client

from flowbus import subjects
from flowbus.agent.local import LocalAgent
from flowbus.client import AsyncClient
from flowbus.schemas.runs import RunQueued
from flowbus.settings import Settings
from flowbus.states import StateType
from tests.helpers import unique
from tests.helpers.agents import running_agents
from tests.helpers.runs import watching
from tests.helpers.scripts import RECORDING_FLOW, register_script

PROJECT = "delivery"

GATED_FLOW = """
import os
import flowbus
from flowbus import Flow, task

@task
def gate():
    flowbus.context.get("logger").info("at the gate")
    # Blocks until the test opens this run's gate.
    with open(os.path.join({gates!r}, flowbus.context.get("flow_run_id"))) as f:
        f.read()

with Flow({name!r}) as flow:
    gate()
"""


@pytest.mark.timeout(300)
async def test_every_run_executes_exactly_once_with_three_agents_and_duplicate_deliveries(
    stack: Settings, client: AsyncClient, nc: Client, tmp_path: Path
) -> None:
    name, label = unique("once"), unique("once")
    ledger = tmp_path / "ledger.txt"
    script = tmp_path / "once.py"
    script.write_text(textwrap.dedent(RECORDING_FLOW.format(ledger=str(ledger), name=name)))
    flow_id = await register_script(client, script, name, PROJECT)
    # Three label sets that all cover the runs' label: three durable consumers, so
    # every run is delivered to every agent, and each delivery is a claim attempt.
    # A few runs each: the services and the agents share this test's one process.
    trio = [LocalAgent(stack, labels=[label, extra], hostname_label=False, limit=4) for extra in ("x", "y", "z")]
    async with watching(client) as states, running_agents(*trio):
        runs = await asyncio.gather(*(client.create_flow_run_out(flow_id, labels=[label]) for _ in range(200)))
        ids = [r.id for r in runs]
        # And more duplicates: publish every run's queue message again, without a
        # message id, as a redelivery after a fail-over would.
        js = nc.jetstream()  # run-queue messages are the services' to publish
        for run in runs[::2]:
            again = RunQueued(
                flow_run_id=run.id,
                flow_id=flow_id,
                version=1,
                labels=[label],
                scheduled_start_time=run.scheduled_start_time,
            )
            await js.publish(subjects.run_queue([label]), again.model_dump_json().encode())
        await states.finished(ids, seconds=240)

    assert {states.last(i) for i in ids} == {StateType.SUCCESS}
    executions = ledger.read_text().split()
    assert sorted(executions) == sorted(ids)  # each run once, none twice, none missing
    for run_id in ids[:20]:
        history = [h.type for h in await client.get_flow_run_history(run_id)]
        assert history == [StateType.SCHEDULED, StateType.SUBMITTED, StateType.RUNNING, StateType.SUCCESS]
    claimed_by = {(await client.get_flow_run(i)).run.agent_id for i in ids[:50]}
    assert claimed_by <= {a.id for a in trio}


async def test_label_routing(stack: Settings, client: AsyncClient, tmp_path: Path) -> None:
    name = unique("routed")
    a, b, c = (unique(x) for x in "abc")
    script = tmp_path / "routed.py"
    script.write_text(textwrap.dedent(RECORDING_FLOW.format(ledger=str(tmp_path / "ledger.txt"), name=name)))
    flow_id = await register_script(client, script, name, PROJECT)
    bare = LocalAgent(stack, labels=[], hostname_label=False)
    only_a = LocalAgent(stack, labels=[a], hostname_label=False)
    a_and_b = LocalAgent(stack, labels=[a, b], hostname_label=False)
    async with watching(client) as states, running_agents(bare, only_a, a_and_b):
        runs = {
            "none": await client.create_flow_run_out(flow_id, labels=[]),
            "a": await client.create_flow_run_out(flow_id, labels=[a]),
            "a,b": await client.create_flow_run_out(flow_id, labels=[a, b]),
            "b": await client.create_flow_run_out(flow_id, labels=[b]),
            "c": await client.create_flow_run_out(flow_id, labels=[c]),
            "a,c": await client.create_flow_run_out(flow_id, labels=[a, c]),
        }
        await states.finished([runs[k].id for k in ("none", "a", "a,b", "b")])
        by = {k: (await client.get_flow_run(r.id)).run for k, r in runs.items()}

    assert by["none"].agent_id == bare.id  # a run without labels: only an agent without labels
    assert by["a"].agent_id in {only_a.id, a_and_b.id}  # a subset of both
    assert by["a,b"].agent_id == a_and_b.id
    assert by["b"].agent_id == a_and_b.id
    for waiting in ("c", "a,c"):  # no agent covers these: they wait, Scheduled
        assert by[waiting].state.type is StateType.SCHEDULED
        assert by[waiting].agent_id is None
        reason = await client.explain_waiting_run(runs[waiting].id)
        assert reason is not None
        assert "No online agent can take this run" in reason


class Gates:
    """A named pipe per run that a gated flow reads: opening it lets that run finish."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir()

    def add(self, run_id: str) -> None:
        os.mkfifo(self.folder / run_id)

    async def open(self, run_id: str) -> None:
        def release() -> None:
            with open(self.folder / run_id, "w") as f:  # blocks until the run is reading
                f.write("go")

        await asyncio.to_thread(release)


async def gated_flow(client: AsyncClient, tmp_path: Path) -> tuple[Gates, str]:
    name = unique("gated")
    gates = Gates(tmp_path / "gates")
    script = tmp_path / "gated.py"
    script.write_text(textwrap.dedent(GATED_FLOW.format(gates=str(gates.folder), name=name)))
    return gates, await register_script(client, script, name, PROJECT)


async def test_limit_keeps_further_runs_in_the_queue(
    stack: Settings, client: AsyncClient, nc: Client, tmp_path: Path
) -> None:
    label = unique("limit")
    gates, flow_id = await gated_flow(client, tmp_path)
    agent = LocalAgent(stack, labels=[label], hostname_label=False, limit=1)
    async with watching(client) as states:
        ids = [await client.create_flow_run(flow_id, labels=[label]) for _ in range(3)]
        for run_id in ids:
            gates.add(run_id)
        released: list[str] = []

        def running_now() -> list[str]:
            return [i for i in ids if StateType.RUNNING in states.seen.get(i, []) and i not in released]

        async with running_agents(agent):
            await states.until(lambda: bool(running_now()))
            # One runs; the other two are still in the stream, not fetched by the agent.
            assert agent.running == 1
            consumer = await nc.jetstream().consumer_info(subjects.RUNQ_STREAM, subjects.agent_durable([label]))
            assert consumer.num_pending == 2
            assert consumer.num_ack_pending == 0
            waiting = [i for i in ids if (await client.get_flow_run(i)).run.state.type is StateType.SCHEDULED]
            assert len(waiting) == 2
            for _ in ids:
                await states.until(lambda: bool(running_now()))
                assert len(running_now()) == 1
                assert agent.running == 1
                released.append(running_now()[0])
                await gates.open(released[-1])
            await states.finished(ids)
    assert {states.last(i) for i in ids} == {StateType.SUCCESS}
    # One at a time: each run was submitted only after the previous one ended.
    runs = sorted([(await client.get_flow_run(i)).run for i in ids], key=lambda r: r.start_time or r.created)
    for earlier, later in itertools.pairwise(runs):
        submitted = [h.timestamp for h in await client.get_flow_run_history(later.id) if h.type is StateType.SUBMITTED]
        assert earlier.end_time is not None
        assert submitted[0] >= earlier.end_time


async def test_stopping_agent_finishes_its_run_and_takes_no_more(
    stack: Settings, client: AsyncClient, tmp_path: Path
) -> None:
    label = unique("stop")
    gates, flow_id = await gated_flow(client, tmp_path)
    first = LocalAgent(stack, labels=[label], hostname_label=False, limit=4)
    async with watching(client) as states:
        running = await client.create_flow_run(flow_id, labels=[label])
        gates.add(running)
        first_task = asyncio.create_task(first.run())
        await states.reached(running, StateType.RUNNING)
        first.stop()  # what SIGTERM does
        later = await client.create_flow_run(flow_id, labels=[label])
        gates.add(later)
        await gates.open(running)
        await first_task  # returns once its running flow has finished
        assert states.last(running) is StateType.SUCCESS
        assert (await client.get_flow_run(later)).run.state.type is StateType.SCHEDULED
        second = LocalAgent(stack, labels=[label], hostname_label=False)
        async with running_agents(second):
            await states.reached(later, StateType.RUNNING)
            await gates.open(later)
            await states.finished([later])
    assert states.last(later) is StateType.SUCCESS
    assert (await client.get_flow_run(later)).run.agent_id == second.id
