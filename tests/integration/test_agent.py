"""The local agent against the real services: push delivery, claim, run, logs."""

from __future__ import annotations

import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest
from nats.aio.client import Client
from prometheus_client.parser import text_string_to_metric_families

from flowbus import subjects
from flowbus.agent.local import LocalAgent
from flowbus.client import AsyncClient
from flowbus.schemas.flows import SerializedFlow, StorageSpec, TaskSpec
from flowbus.settings import Settings
from flowbus.states import StateType
from tests.helpers import unique
from tests.helpers.agents import running_agents
from tests.helpers.runs import Watched, WhenBlocking, watch_until_finished
from tests.helpers.scripts import blocking_flow, register_greeting_flow
from tests.helpers.waiting import eventually


async def test_agent_runs_a_flow_to_success_and_ships_logs(
    stack: Settings, client: AsyncClient, tmp_path: Path
) -> None:
    flow_id = await register_greeting_flow(client, tmp_path)
    with_metrics = stack.model_copy(update={"agent": stack.agent.model_copy(update={"metrics_port": 0})})
    agent = LocalAgent(with_metrics, labels=["itest"], hostname_label=True)
    async with running_agents(agent):
        run_id = await client.create_flow_run(flow_id, labels=["itest"], parameters={"name": "Cloud"})
        watched = await watch_until_finished(client, run_id)
        states, messages = watched.types, watched.messages
        assert states == [StateType.SCHEDULED, StateType.SUBMITTED, StateType.RUNNING, StateType.SUCCESS], messages
        assert "Hello, Cloud!" in messages
        assert any(m.startswith(WhenBlocking.SUBMITTED) for m in messages)
        detail = await client.get_flow_run(run_id)
        assert detail.run.agent_id == agent.id
        assert {t.state.type for t in detail.task_runs} == {StateType.SUCCESS}
        # The state service persists the same logs from the LOGS stream.
        await eventually(
            lambda: client.get_flow_run_logs(run_id),
            "the run's log line is stored",
            until=lambda records: "Hello, Cloud!" in [r.message for r in records],
        )
        agents = (await client.get_agents()).agents
        assert agent.id in [a.id for a in agents]

        # The agent's own /metrics: one run claimed, started and ended with exit code 0.
        async def scrape() -> dict[str, float]:
            assert agent.metrics_url is not None
            async with httpx.AsyncClient() as http:
                text = (await http.get(agent.metrics_url)).text
            return {
                s.name: s.value
                for f in text_string_to_metric_families(text)
                for s in f.samples
                if s.name != "flowbus_agent_runs_finished_total" or s.labels["exit"] == "zero"
            }

        seen = await eventually(
            scrape, "the agent counted its run's end", until=lambda m: m["flowbus_agent_runs_finished_total"] == 1
        )
        assert seen["flowbus_agent_runs_claimed_total"] == 1
        assert seen["flowbus_agent_runs_started_total"] == 1
        assert seen["flowbus_agent_runs_executing"] == 0
        assert seen["flowbus_agent_claims_lost_total"] == 0


async def test_failing_flow_ends_failed(stack: Settings, client: AsyncClient, tmp_path: Path) -> None:
    flow_id = await register_greeting_flow(client, tmp_path, fail=True)
    async with running_agents(LocalAgent(stack, labels=["itest"], hostname_label=False)):
        run_id = await client.create_flow_run(flow_id, labels=["itest"])
        watched = await watch_until_finished(client, run_id)
        assert watched.types[-1] is StateType.FAILED


async def test_run_waits_for_an_agent_with_matching_labels(
    stack: Settings, client: AsyncClient, tmp_path: Path
) -> None:
    flow_id = await register_greeting_flow(client, tmp_path)
    # Created before any agent exists; a non-matching agent must not take it.
    run_id = await client.create_flow_run(flow_id, labels=["itest", "gpu"])
    wrong = LocalAgent(stack, labels=["itest"], hostname_label=False)
    right = LocalAgent(stack, labels=["itest", "gpu"], hostname_label=False)
    async with running_agents(wrong, right):
        watched = await watch_until_finished(client, run_id)
        assert watched.types[-1] is StateType.SUCCESS
        assert (await client.get_flow_run(run_id)).run.agent_id == right.id


async def test_runs_of_prefect_flows_are_left_to_prefect_agents(
    stack: Settings, client: AsyncClient, nc: Client, tmp_path: Path
) -> None:
    """A flow Prefect 1.x registered keeps its code where only a Prefect agent can
    load it: its run stays Scheduled for one (which polls for it), while the
    flowbus agent that matches its labels takes the flowbus flow's run beside it."""
    label = unique("mixed")
    storage = StorageSpec(
        type="prefect", prefect={"type": "Local", "flows": {"hello": "/nowhere"}, "__version__": "1.4.1"}
    )
    spec = SerializedFlow(name=unique("prefect-flow"), tasks=[TaskSpec(slug="say-1", name="say")], storage=storage)
    await client.create_project("agents", skip_if_exists=True)
    prefect_flow = await client.register(spec, "agents")
    prefect_run = await client.create_flow_run_out(prefect_flow.id, labels=[label])
    own_run = await client.create_flow_run_out(await register_greeting_flow(client, tmp_path), labels=[label])

    async with running_agents(LocalAgent(stack, labels=[label], hostname_label=False)):
        watched = await watch_until_finished(client, own_run.id)
        assert watched.types[-1] is StateType.SUCCESS
        # Both runs were delivered to the agent and settled there (the Prefect flow's first).
        js = nc.jetstream()
        durable = subjects.agent_durable([label])
        await eventually(
            lambda: js.consumer_info(subjects.RUNQ_STREAM, durable),
            "both queued runs settled",
            until=lambda info: info.delivered.consumer_seq >= 2 and info.num_pending == 0 and info.num_ack_pending == 0,
        )

    left = (await client.get_flow_run(prefect_run.id)).run
    assert (left.state.type, left.version, left.agent_id) == (StateType.SCHEDULED, 1, None)
    assert [e.type for e in await client.get_flow_run_history(prefect_run.id)] == [StateType.SCHEDULED]


async def test_future_run_is_released_by_the_scheduler(stack: Settings, client: AsyncClient, tmp_path: Path) -> None:
    from datetime import UTC, datetime, timedelta

    flow_id = await register_greeting_flow(client, tmp_path)
    async with running_agents(LocalAgent(stack, labels=["itest"], hostname_label=False)):
        start = datetime.now(UTC) + timedelta(seconds=1)
        run_id = await client.create_flow_run(flow_id, labels=["itest"], scheduled_start_time=start)
        watched = await watch_until_finished(client, run_id)
        assert watched.types[-1] is StateType.SUCCESS
        detail = await client.get_flow_run(run_id)
        assert detail.run.start_time is not None
        assert detail.run.start_time >= start


async def test_a_waiting_run_is_explained(stack: Settings, client: AsyncClient, tmp_path: Path) -> None:
    flow_id = await register_greeting_flow(client, tmp_path)
    run_id = await client.create_flow_run(flow_id, labels=["itest", "explain-gpu"])
    # Each test has its own database, so no agent is registered yet.
    assert await client.explain_waiting_run(run_id) == (
        "No agent is online: start one with `flowbus agent local start`."
    )
    wrong = LocalAgent(stack, labels=["itest"], hostname_label=False)
    async with running_agents(wrong):
        await eventually(
            client.get_agents,
            "the agent is registered",
            until=lambda listed: wrong.id in [a.id for a in listed.agents],
        )
        reason = await client.explain_waiting_run(run_id)
        assert reason is not None
        assert "No online agent can take this run" in reason
        assert "['explain-gpu', 'itest']" in reason


async def _registered_blocking(client: AsyncClient, tmp_path: Path) -> str:
    from flowbus.sdk.flow import Flow
    from flowbus.sdk.tasks import Task

    name = unique("blocking")
    path = tmp_path / f"{name}.py"
    path.write_text(blocking_flow(name))
    flow = Flow(name)
    flow.bind(Task(lambda: None, name="block"), (), {})
    spec = flow.serialize().model_copy(update={"storage": StorageSpec(type="script", path=str(path))})
    await client.create_project("agents", skip_if_exists=True)
    return (await client.register(spec, "agents", labels=["itest"])).id


async def _run_until_finished(
    stack: Settings, client: AsyncClient, tmp_path: Path, act: Callable[[str, int], Awaitable[None]]
) -> tuple[str, Watched, WhenBlocking]:
    """Run the blocking flow on a real agent; ``act(run_id, pid)`` once its task blocks; watch it finish."""
    flow_id = await _registered_blocking(client, tmp_path)
    async with running_agents(LocalAgent(stack, labels=["itest"], hostname_label=False)):
        run_id = await client.create_flow_run(flow_id, labels=["itest"])
        flow_process = WhenBlocking(lambda pid: act(run_id, pid))
        watched = await watch_until_finished(client, run_id, on_item=flow_process)
    return run_id, watched, flow_process


async def test_cancelling_a_running_flow_stops_its_process_and_ends_cancelled(
    stack: Settings, client: AsyncClient, tmp_path: Path
) -> None:
    async def cancel(run_id: str, _pid: int) -> None:
        cancel = await client.cancel_flow_run(run_id)
        assert cancel.state.type is StateType.CANCELLING

    run_id, watched, flow_process = await _run_until_finished(stack, client, tmp_path, cancel)
    states = watched.types
    assert states[-2:] == [StateType.CANCELLING, StateType.CANCELLED], states
    assert flow_process.pid is not None
    with pytest.raises(ProcessLookupError):
        os.kill(flow_process.pid, 0)  # the flow's process is gone (reaped by the agent)
    detail = await client.get_flow_run(run_id)
    assert {t.state.type for t in detail.task_runs} == {StateType.CANCELLED}


async def test_a_killed_flow_process_ends_the_run_failed_with_its_running_task_run(
    stack: Settings, client: AsyncClient, tmp_path: Path
) -> None:
    async def kill(_run_id: str, pid: int) -> None:
        os.kill(pid, signal.SIGKILL)

    run_id, watched, _ = await _run_until_finished(stack, client, tmp_path, kill)
    last = watched.states[-1]
    assert (last.state.type, last.state.message) == (StateType.FAILED, "Flow run process was killed by signal 9.")
    # The agent sent the flow run's Failed alone; the state service failed the task run.
    [block] = (await client.get_flow_run(run_id)).task_runs
    assert (block.state.type, block.state.message) == (StateType.FAILED, "Flow run failed.")
