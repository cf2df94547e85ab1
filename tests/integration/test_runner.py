"""The flow runner under a real agent: retries, trigger failures, context keys,
task-run heartbeats, load failures and SIGTERM.

Flows are scripts in ``tmp_path``, registered with their script storage; an
in-process ``LocalAgent`` runs each run in a ``python -m flowbus.agent.runner``
subprocess, as in production.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from flowbus import subjects
from flowbus.agent.local import LocalAgent
from flowbus.client import AsyncClient
from flowbus.schemas.agents import RunHeartbeat
from flowbus.schemas.runs import FlowRunDetail, LogRecord, StateChanged, TaskRunOut
from flowbus.settings import Settings
from flowbus.states import StateType
from tests.helpers import register, unique
from tests.helpers.agents import running_agents
from tests.helpers.runs import WhenBlocking, watch_until_finished
from tests.helpers.scripts import blocking_flow, register_script, write_script
from tests.helpers.waiting import eventually

LABEL = "itest-runner"
PROJECT = "runner"


@pytest.fixture
async def agent(stack: Settings) -> AsyncIterator[LocalAgent]:
    agent = LocalAgent(stack, labels=[LABEL], hostname_label=False)
    async with running_agents(agent):
        yield agent


async def register_source(client: AsyncClient, tmp_path: Path, source: str) -> tuple[str, str]:
    """Write a flow script (``{flow_name}`` filled in) and register it from its path; the flow's id and name."""
    name = unique("flow")
    path = write_script(tmp_path / f"{name.replace('-', '_')}.py", source.replace("{flow_name}", name))
    return await register_script(client, path, name, PROJECT, labels=[LABEL]), name


async def run_to_the_end(client: AsyncClient, flow_id: str, **kwargs: Any) -> tuple[FlowRunDetail, list[str]]:
    """Create a run for the agent and watch it to its final state: the run's detail and the log messages."""
    run_id = await client.create_flow_run(flow_id, labels=[LABEL], **kwargs)
    return await watch_to_the_end(client, run_id)


async def watch_to_the_end(client: AsyncClient, run_id: str) -> tuple[FlowRunDetail, list[str]]:
    messages = (await watch_until_finished(client, run_id)).messages
    return await client.get_flow_run(run_id), messages


def task_run(detail: FlowRunDetail, name: str) -> TaskRunOut:
    return next(t for t in detail.task_runs if t.task_name == name)


async def task_history(client: AsyncClient, run_id: str, task_run_id: str) -> list[StateType]:
    entries = await client.get_flow_run_history(run_id, include_task_runs=True)
    return [e.type for e in entries if e.task_run_id == task_run_id]


async def stored_logs(client: AsyncClient, run_id: str, last: str) -> list[LogRecord]:
    """The run's stored logs, once the state service has written the record ``last``."""
    return await eventually(
        lambda: client.get_flow_run_logs(run_id),
        f"the log record {last!r} is stored",
        until=lambda records: any(r.message == last for r in records),
    )


RETRY_SCRIPT = """
from datetime import timedelta
from flowbus import Flow, task

attempts = 0

@task(max_retries=2, retry_delay=timedelta(milliseconds=50))
def flaky():
    global attempts
    attempts += 1
    if attempts < 3:
        raise RuntimeError(f"attempt {attempts} fails")
    return attempts

with Flow("{flow_name}") as flow:
    flaky()
"""


async def test_a_task_is_retried_until_it_succeeds(
    stack: Settings, client: AsyncClient, agent: LocalAgent, tmp_path: Path
) -> None:
    flow_id, _ = await register_source(client, tmp_path, RETRY_SCRIPT)
    detail, messages = await run_to_the_end(client, flow_id)
    assert detail.run.state.type is StateType.SUCCESS, detail.run.state
    flaky = task_run(detail, "flaky")
    assert flaky.state.type is StateType.SUCCESS
    assert await task_history(client, detail.run.id, flaky.id) == [
        StateType.RUNNING,
        StateType.RETRYING,
        StateType.RUNNING,
        StateType.RETRYING,
        StateType.RUNNING,
        StateType.SUCCESS,
    ]
    assert sum("attempt 1 fails" in m for m in messages) == 1
    assert sum("attempt 2 fails" in m for m in messages) == 1
    entries = await client.get_flow_run_history(detail.run.id, include_task_runs=True)
    retries = [e.message for e in entries if e.type is StateType.RETRYING]
    assert retries == ["Retry 1 of 2 in 0.05s.", "Retry 2 of 2 in 0.05s."]


TRIGGER_SCRIPT = """
from flowbus import Flow, task

@task
def explode():
    raise RuntimeError("kaboom")

@task
def downstream(value):
    return value

with Flow("{flow_name}") as flow:
    downstream(explode())
"""


async def test_a_failed_task_trigger_fails_its_downstream_and_the_flow(
    stack: Settings, client: AsyncClient, agent: LocalAgent, tmp_path: Path
) -> None:
    flow_id, _ = await register_source(client, tmp_path, TRIGGER_SCRIPT)
    detail, messages = await run_to_the_end(client, flow_id)
    assert detail.run.state.type is StateType.FAILED
    assert detail.run.state.message == "Some reference tasks failed."
    explode, downstream = task_run(detail, "explode"), task_run(detail, "downstream")
    assert explode.state.type is StateType.FAILED
    assert "kaboom" in (explode.state.message or "")
    assert downstream.state.type is StateType.TRIGGER_FAILED
    assert await task_history(client, detail.run.id, downstream.id) == [StateType.TRIGGER_FAILED]
    assert any("kaboom" in m for m in messages)


CONTEXT_SCRIPT = """
import json
import flowbus
from flowbus import Flow, Parameter, task

KEYS = ["flow_run_id", "flow_run_name", "flow_id", "flow_name", "project_name", "task_run_id",
        "task_name", "task_slug", "task_run_count", "parameters", "running_with_backend", "today"]

@task
def report(who):
    logger = flowbus.context.get("logger")
    for key in KEYS:
        logger.info("%s=%s", key, json.dumps(flowbus.context.get(key)))
    start = flowbus.context.get("scheduled_start_time")
    logger.info("scheduled_start_time=%s", start.isoformat())
    logger.info("aware=%s", start.tzinfo is not None)
    logger.info("logger=%s", logger.name)
    logger.info("done")

with Flow("{flow_name}") as flow:
    report(Parameter("who", default="nobody"))
"""


async def test_tasks_see_the_context_keys(
    stack: Settings, client: AsyncClient, agent: LocalAgent, tmp_path: Path
) -> None:
    flow_id, flow_name = await register_source(client, tmp_path, CONTEXT_SCRIPT)
    due = (datetime.now(UTC) - timedelta(minutes=1)).replace(microsecond=0)
    detail, _ = await run_to_the_end(
        client, flow_id, parameters={"who": "Marvin"}, run_name="context-run", scheduled_start_time=due
    )
    run = detail.run
    assert run.state.type is StateType.SUCCESS, run.state
    report = task_run(detail, "report")
    records = await stored_logs(client, run.id, "done")
    mine = [r for r in records if r.name == "flowbus.task.report"]
    assert {r.task_run_id for r in mine} == {report.id}  # each record carries its task run
    logged = dict(r.message.split("=", 1) for r in mine if "=" in r.message)
    values = {k: json.loads(v) for k, v in logged.items() if k not in {"scheduled_start_time", "aware", "logger"}}
    assert values == {
        "flow_run_id": run.id,
        "flow_run_name": "context-run",
        "flow_id": flow_id,
        "flow_name": flow_name,
        "project_name": PROJECT,
        "task_run_id": report.id,
        "task_name": "report",
        "task_slug": "report-1",
        "task_run_count": 1,
        "parameters": {"who": "Marvin"},
        "running_with_backend": True,
        "today": due.strftime("%Y-%m-%d"),
    }
    assert datetime.fromisoformat(logged["scheduled_start_time"]) == due
    assert logged["scheduled_start_time"].endswith("+00:00")
    assert logged["aware"] == "True"
    assert logged["logger"] == "flowbus.task.report"


GATED_SCRIPT = """
import time
from pathlib import Path
import flowbus
from flowbus import Flow, task

@task
def block():
    flowbus.context.get("logger").info("blocking")
    release = Path({release!r})
    while not release.exists():  # until the test has seen what it waits for
        time.sleep(0.02)

with Flow("{flow_name}") as flow:
    block()
"""


async def test_a_running_task_heartbeats_every_interval(
    stack: Settings, client: AsyncClient, nc: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The runner is a subprocess: FLOWBUS_HEARTBEAT_INTERVAL, the flat spelling
    # users type, reaches it through the agent's environment.
    monkeypatch.setenv("FLOWBUS_HEARTBEAT_INTERVAL", "0.1")
    release = tmp_path / "release"
    flow_id, _ = await register_source(client, tmp_path, GATED_SCRIPT.replace("{release!r}", repr(str(release))))
    beats: asyncio.Queue[RunHeartbeat] = asyncio.Queue()

    async def on_beat(msg: Msg) -> None:
        beats.put_nowait(RunHeartbeat.model_validate_json(msg.data))

    sub = await nc.subscribe(subjects.flow_run_heartbeat("*"), cb=on_beat)  # heartbeats are the services' to read
    async with running_agents(LocalAgent(stack, labels=[LABEL], hostname_label=False)):
        try:
            run_id = await client.create_flow_run(flow_id, labels=[LABEL])
            task_beats: list[RunHeartbeat] = []
            async with asyncio.timeout(60):
                # Three beats naming the blocked task run, one interval apart
                # (the first comes one interval after the flow run started).
                while len(task_beats) < 3:
                    beat = await beats.get()
                    if beat.flow_run_id == run_id and beat.task_run_id is not None:
                        task_beats.append(beat)
            release.touch()
            detail, _ = await watch_to_the_end(client, run_id)
            assert detail.run.state.type is StateType.SUCCESS
            assert {b.task_run_id for b in task_beats} == {task_run(detail, "block").id}
            assert task_beats[-1].timestamp - task_beats[1].timestamp >= timedelta(seconds=0.05)
        finally:
            release.touch()  # before the agent stops: it waits for its running flow
            await sub.unsubscribe()


async def test_a_flow_that_cannot_be_loaded_ends_failed_with_the_reason(
    stack: Settings, client: AsyncClient, agent: LocalAgent, tmp_path: Path
) -> None:
    broken = tmp_path / "broken_at_import.py"
    broken.write_text('raise RuntimeError("broken at import")\n')
    missing = tmp_path / "gone.py"
    cases = {
        str(broken): f"Failed to load flow from {broken}: RuntimeError('broken at import')",
        str(missing): f"Flow script not found: {missing}",
    }
    for path, reason in cases.items():
        flow = await register(client, PROJECT, unique("unloadable"), path=path, labels=[LABEL])
        detail, messages = await run_to_the_end(client, flow.id)
        assert detail.run.state.type is StateType.FAILED
        assert detail.run.state.message == reason
        assert reason in messages  # also in the run's logs
        assert {t.state.type for t in detail.task_runs} == {StateType.PENDING}  # nothing ran


async def test_sigterm_ships_the_logs_and_leaves_the_final_state_to_the_agent(
    stack: Settings, client: AsyncClient, agent: LocalAgent, tmp_path: Path
) -> None:
    flow_id, _ = await register_source(client, tmp_path, blocking_flow("{flow_name}"))
    run_id = await client.create_flow_run(flow_id, labels=[LABEL])

    async def sigterm(pid: int) -> None:
        os.kill(pid, signal.SIGTERM)

    flow_process = WhenBlocking(sigterm)
    watched = await watch_until_finished(client, run_id, on_item=flow_process)
    final = watched.final
    assert isinstance(final, StateChanged)
    assert final.state.type is StateType.FAILED
    # The agent's reason: the runner exited 128 + SIGTERM and wrote no state itself.
    assert "143" in (final.state.message or ""), final.state
    # Logged by the runner's SIGTERM handler, shipped before it exited.
    assert f"Flow run process {flow_process.pid} received SIGTERM." in watched.messages
    history = await client.get_flow_run_history(run_id)
    assert [e.type for e in history] == [StateType.SCHEDULED, StateType.SUBMITTED, StateType.RUNNING, StateType.FAILED]
