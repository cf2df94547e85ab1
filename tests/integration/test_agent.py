"""The local agent against the real services: push delivery, claim, run, logs."""

from __future__ import annotations

import asyncio
import os
import signal
import textwrap
from pathlib import Path

import pytest

from flowbus.agent.local import LocalAgent
from flowbus.client import AsyncClient
from flowbus.schemas.flows import StorageSpec
from flowbus.schemas.runs import LogRecord, StateChanged
from flowbus.settings import Settings
from flowbus.states import StateType
from tests.conftest import unique

FLOW_SCRIPT = """
import flowbus
from flowbus import Flow, Parameter, task

@task
def greet(name):
    flowbus.context.get("logger").info("Hello, %s!", name)
    return name

@task
def explode():
    raise RuntimeError("kaboom")

with Flow("{flow_name}") as flow:
    greet(Parameter("name", default="Cloud"))
    {extra}

flow.register(project_name="never-used-while-loading")
"""


def write_flow(tmp_path: Path, flow_name: str, fail: bool = False) -> Path:
    path = tmp_path / f"{flow_name}.py"
    extra = "explode()" if fail else "pass"
    path.write_text(textwrap.dedent(FLOW_SCRIPT.format(flow_name=flow_name, extra=extra)))
    return path


async def watch_until_finished(client: AsyncClient, run_id: str) -> tuple[list[StateType], list[str]]:
    states: list[StateType] = []
    messages: list[str] = []
    async with asyncio.timeout(60):
        async for item in client.watch_flow_run(run_id):
            if isinstance(item, StateChanged):
                states.append(item.state.type)
            elif isinstance(item, LogRecord):
                messages.append(item.message)
    return states, messages


async def _registered(client: AsyncClient, tmp_path: Path, fail: bool = False) -> str:
    from flowbus.sdk.flow import Flow
    from flowbus.sdk.tasks import Parameter, Task

    name = unique("flow")
    path = write_flow(tmp_path, name, fail)
    flow = Flow(name)
    flow.add_task(Parameter("name", default="Cloud"))
    flow.bind(Task(lambda n: n, name="greet"), (), {})
    if fail:
        flow.bind(Task(lambda: None, name="explode"), (), {})
    spec = flow.serialize().model_copy(update={"storage": StorageSpec(type="script", path=str(path))})
    await client.create_project("agents", skip_if_exists=True)
    out = await client.register(spec, "agents", labels=["itest"])
    return out.id


async def test_agent_runs_a_flow_to_success_and_ships_logs(
    stack: Settings, client: AsyncClient, tmp_path: Path
) -> None:
    flow_id = await _registered(client, tmp_path)
    agent = LocalAgent(stack, labels=["itest"], hostname_label=True)
    task = asyncio.create_task(agent.run())
    try:
        run = await client.create_flow_run(flow_id, labels=["itest"], parameters={"name": "Cloud"})
        states, messages = await watch_until_finished(client, run.id)
        assert states == [StateType.SCHEDULED, StateType.SUBMITTED, StateType.RUNNING, StateType.SUCCESS], messages
        assert "Hello, Cloud!" in messages
        assert any(m.startswith("Submitted for execution: PID: ") for m in messages)
        detail = await client.get_flow_run(run.id)
        assert detail.run.agent_id == agent.id
        assert {t.state.type for t in detail.task_runs} == {StateType.SUCCESS}
        # The state service persists the same logs from the LOGS stream.
        async with asyncio.timeout(30):
            while "Hello, Cloud!" not in [r.message for r in await client.get_flow_run_logs(run.id)]:
                await asyncio.sleep(0.05)
        agents = (await client.get_agents()).agents
        assert agent.id in [a.id for a in agents]
    finally:
        agent.stop()
        await task


async def test_failing_flow_ends_failed(stack: Settings, client: AsyncClient, tmp_path: Path) -> None:
    flow_id = await _registered(client, tmp_path, fail=True)
    agent = LocalAgent(stack, labels=["itest"], hostname_label=False)
    task = asyncio.create_task(agent.run())
    try:
        run = await client.create_flow_run(flow_id, labels=["itest"])
        states, _ = await watch_until_finished(client, run.id)
        assert states[-1] is StateType.FAILED
    finally:
        agent.stop()
        await task


async def test_run_waits_for_an_agent_with_matching_labels(
    stack: Settings, client: AsyncClient, tmp_path: Path
) -> None:
    flow_id = await _registered(client, tmp_path)
    # Created before any agent exists; a non-matching agent must not take it.
    run = await client.create_flow_run(flow_id, labels=["itest", "gpu"])
    wrong = LocalAgent(stack, labels=["itest"], hostname_label=False)
    right = LocalAgent(stack, labels=["itest", "gpu"], hostname_label=False)
    tasks = [asyncio.create_task(wrong.run())]
    try:
        tasks.append(asyncio.create_task(right.run()))
        states, _ = await watch_until_finished(client, run.id)
        assert states[-1] is StateType.SUCCESS
        assert (await client.get_flow_run(run.id)).run.agent_id == right.id
    finally:
        wrong.stop()
        right.stop()
        await asyncio.gather(*tasks)


async def test_future_run_is_released_by_the_scheduler(stack: Settings, client: AsyncClient, tmp_path: Path) -> None:
    from datetime import UTC, datetime, timedelta

    flow_id = await _registered(client, tmp_path)
    agent = LocalAgent(stack, labels=["itest"], hostname_label=False)
    task = asyncio.create_task(agent.run())
    try:
        start = datetime.now(UTC) + timedelta(seconds=1)
        run = await client.create_flow_run(flow_id, labels=["itest"], scheduled_start_time=start)
        states, _ = await watch_until_finished(client, run.id)
        assert states[-1] is StateType.SUCCESS
        detail = await client.get_flow_run(run.id)
        assert detail.run.start_time is not None
        assert detail.run.start_time >= start
    finally:
        agent.stop()
        await task


async def test_a_waiting_run_is_explained(stack: Settings, client: AsyncClient, tmp_path: Path) -> None:
    flow_id = await _registered(client, tmp_path)
    run = await client.create_flow_run(flow_id, labels=["itest", "explain-gpu"])
    # Each test has its own database, so no agent is registered yet.
    assert await client.explain_waiting_run(run.id) == (
        "No agent is online: start one with `flowbus agent local start`."
    )
    wrong = LocalAgent(stack, labels=["itest"], hostname_label=False)
    task = asyncio.create_task(wrong.run())
    try:
        async with asyncio.timeout(30):
            while wrong.id not in [a.id for a in (await client.get_agents()).agents]:
                await asyncio.sleep(0.05)
        reason = await client.explain_waiting_run(run.id)
        assert reason is not None
        assert "No online agent can take this run" in reason
        assert "['explain-gpu', 'itest']" in reason
    finally:
        wrong.stop()
        await task


BLOCKING_SCRIPT = """
import time
import flowbus
from flowbus import Flow, task

@task
def block():
    flowbus.context.get("logger").info("blocking")
    time.sleep(600)  # until cancelled

with Flow("{flow_name}") as flow:
    block()
"""


async def _registered_blocking(client: AsyncClient, tmp_path: Path) -> str:
    from flowbus.sdk.flow import Flow
    from flowbus.sdk.tasks import Task

    name = unique("blocking")
    path = tmp_path / f"{name}.py"
    path.write_text(BLOCKING_SCRIPT.format(flow_name=name))
    flow = Flow(name)
    flow.bind(Task(lambda: None, name="block"), (), {})
    spec = flow.serialize().model_copy(update={"storage": StorageSpec(type="script", path=str(path))})
    await client.create_project("agents", skip_if_exists=True)
    return (await client.register(spec, "agents", labels=["itest"])).id


async def test_cancelling_a_running_flow_stops_its_process_and_ends_cancelled(
    stack: Settings, client: AsyncClient, tmp_path: Path
) -> None:
    flow_id = await _registered_blocking(client, tmp_path)
    agent = LocalAgent(stack, labels=["itest"], hostname_label=False)
    agent_task = asyncio.create_task(agent.run())
    try:
        run = await client.create_flow_run(flow_id, labels=["itest"])
        states: list[StateType] = []
        pid = None
        async with asyncio.timeout(60):
            async for item in client.watch_flow_run(run.id):
                if isinstance(item, LogRecord) and item.message.startswith("Submitted for execution: PID: "):
                    pid = int(item.message.rsplit(" ", 1)[1])
                if isinstance(item, LogRecord) and item.message == "blocking":
                    cancel = await client.cancel_flow_run(run.id)
                    assert cancel.state.type is StateType.CANCELLING
                if isinstance(item, StateChanged):
                    states.append(item.state.type)
        assert states[-2:] == [StateType.CANCELLING, StateType.CANCELLED], states
        assert pid is not None
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # the flow's process is gone (reaped by the agent)
        detail = await client.get_flow_run(run.id)
        assert {t.state.type for t in detail.task_runs} == {StateType.CANCELLED}
    finally:
        agent.stop()
        await agent_task


async def test_a_killed_flow_process_ends_the_run_failed_with_its_running_task_run(
    stack: Settings, client: AsyncClient, tmp_path: Path
) -> None:
    flow_id = await _registered_blocking(client, tmp_path)
    agent = LocalAgent(stack, labels=["itest"], hostname_label=False)
    agent_task = asyncio.create_task(agent.run())
    try:
        run = await client.create_flow_run(flow_id, labels=["itest"])
        last: StateChanged | None = None
        pid = None
        async with asyncio.timeout(60):
            async for item in client.watch_flow_run(run.id):
                if isinstance(item, LogRecord) and item.message.startswith("Submitted for execution: PID: "):
                    pid = int(item.message.rsplit(" ", 1)[1])
                if isinstance(item, LogRecord) and item.message == "blocking":
                    assert pid is not None
                    os.kill(pid, signal.SIGKILL)
                if isinstance(item, StateChanged):
                    last = item
        assert last is not None
        assert (last.state.type, last.state.message) == (StateType.FAILED, "Flow run process was killed by signal 9.")
        # The agent sent the flow run's Failed alone; the state service failed the task run.
        [block] = (await client.get_flow_run(run.id)).task_runs
        assert (block.state.type, block.state.message) == (StateType.FAILED, "Flow run failed.")
    finally:
        agent.stop()
        await agent_task
