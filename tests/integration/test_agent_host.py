"""The agent's host against the real stack: flow roots and the run environment
deny-list (docs/security.md), with a real agent running real flow processes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import sqlalchemy as sa
from nats.aio.client import Client
from sqlalchemy.ext.asyncio import create_async_engine

from flowbus import subjects
from flowbus.agent.local import LocalAgent
from flowbus.client import AsyncClient
from flowbus.db.tables import FlowRun
from flowbus.schemas.common import ValidationFailed
from flowbus.schemas.flows import RunConfigSpec, StorageSpec
from flowbus.settings import Settings
from flowbus.states import StateType
from tests.helpers import serialized_flow, unique
from tests.helpers.agents import running_agents
from tests.helpers.commands import send
from tests.helpers.runs import watch_until_finished

# Marks the file {marker} when it is loaded; its task logs each of {names} as the process sees it.
ENV_FLOW = """
import os
import flowbus
from flowbus import Flow, task

with open({marker!r}, "a") as marker:
    marker.write("loaded\\n")

@task
def show_env():
    for name in {names!r}:
        flowbus.context.get("logger").info("env %s=%s", name, os.environ.get(name))

with Flow({flow!r}) as flow:
    show_env()
"""


async def register_env_flow(client: AsyncClient, script: Path, marker: Path, names: list[str]) -> str:
    """Register a flow stored at ``script``, written where ``script`` resolves to (it may be a symlink); its id."""
    from flowbus.sdk.flow import Flow
    from flowbus.sdk.tasks import Task

    name = unique("host")
    real = script.resolve()
    real.write_text(ENV_FLOW.format(marker=str(marker), names=names, flow=name))
    flow = Flow(name)
    flow.bind(Task(lambda: None, name="show_env"), (), {})
    spec = flow.serialize().model_copy(update={"storage": StorageSpec(type="script", path=str(script))})
    await client.create_project("host", skip_if_exists=True)
    return (await client.register(spec, "host", labels=["itest"])).id


def agent(stack: Settings, roots: list[Path] | None = None) -> LocalAgent:
    return LocalAgent(stack, labels=["itest"], hostname_label=False, flow_roots=roots)


# ---- flow roots --------------------------------------------------------------


async def test_scripts_outside_the_roots_end_failed_unloaded(
    stack: Settings, client: AsyncClient, root: Path, outside: Path
) -> None:
    marker = outside / "marker"
    outside_id = await register_env_flow(client, outside / "evil.py", marker, [])
    # A symlink inside the root that points out of it.
    (outside / "linked.py").touch()
    (root / "linked.py").symlink_to(outside / "linked.py")
    linked_id = await register_env_flow(client, root / "linked.py", marker, [])
    async with running_agents(agent(stack, [root])):
        for flow_id, script in [(outside_id, outside / "evil.py"), (linked_id, root / "linked.py")]:
            run_id = await client.create_flow_run(flow_id)
            watched = await watch_until_finished(client, run_id)
            assert watched.types == [StateType.SCHEDULED, StateType.SUBMITTED, StateType.FAILED], watched.messages
            message = watched.states[-1].state.message or ""
            assert f"its script {script}" in message
            assert "outside the flow roots; this agent runs only flows stored inside its flow roots" in message
            assert str(root.resolve()) in message
            assert message in watched.messages, "the refusal is in the run's logs too"
            assert not any(m.startswith("Submitted for execution: PID") for m in watched.messages)
    assert not marker.exists(), "the refused script was never loaded"


async def test_a_script_inside_the_roots_runs(stack: Settings, client: AsyncClient, root: Path) -> None:
    marker = root / "marker"
    (root / "flows").mkdir()
    flow_id = await register_env_flow(client, root / "flows" / ".." / "flows" / "good.py", marker, [])
    async with running_agents(agent(stack, [root])):
        run_id = await client.create_flow_run(flow_id)
        watched = await watch_until_finished(client, run_id)
    assert watched.types[-1] is StateType.SUCCESS, watched.messages
    assert marker.read_text() == "loaded\n"


async def test_the_runner_checks_the_roots_itself(
    stack: Settings, client: AsyncClient, root: Path, outside: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defence in depth: with the agent's own check switched off (in this
    process only), the runner it starts refuses the script before loading it."""
    marker = outside / "marker"
    flow_id = await register_env_flow(client, outside / "evil.py", marker, [])
    monkeypatch.setattr("flowbus.agent.local.check_storage", lambda storage, roots: None)
    async with running_agents(agent(stack, [root])):
        run_id = await client.create_flow_run(flow_id)
        watched = await watch_until_finished(client, run_id)
    assert watched.types == [StateType.SCHEDULED, StateType.SUBMITTED, StateType.FAILED], watched.messages
    assert any(m.startswith("Submitted for execution: PID") for m in watched.messages), "a runner did start"
    assert "outside the flow roots" in (watched.states[-1].state.message or "")
    assert not marker.exists()


# ---- run environment ---------------------------------------------------------


async def test_creating_a_run_with_a_denied_env_is_refused(
    stack: Settings, client: AsyncClient, nc: Client, root: Path
) -> None:
    flow_id = await register_env_flow(client, root / "f.py", root / "marker", [])
    with pytest.raises(ValidationFailed, match="LD_PRELOAD"):
        await client.create_flow_run(flow_id, run_config=RunConfigSpec(env={"LD_PRELOAD": "/tmp/evil.so"}))
    # The service refuses it too, from a client that does not check.
    for env in [{"LD_PRELOAD": "/tmp/evil.so"}, {"FLOWBUS_NATS_URL": "nats://elsewhere:4222"}, {"A=B": "c"}]:
        cmd = {"flow_id": flow_id, "run_config": {"env": env}, "idempotency_key": unique("k")}
        reply = await send(nc, subjects.RunCreationCommands.CREATE_FLOW_RUN, cmd)
        assert reply["error"]["code"] == "VALIDATION_ERROR", reply
        assert "run_config" in reply["error"]["message"]
    batch = {"runs": [{"flow_id": flow_id, "run_config": {"env": {"PYTHONPATH": "/tmp"}}}]}
    reply = await send(nc, subjects.RunCreationCommands.CREATE_FLOW_RUNS, batch)
    assert reply["error"]["code"] == "VALIDATION_ERROR", reply
    assert await client.get_flow_runs(flow_id=flow_id) == []


async def test_registering_a_flow_with_a_denied_env_is_refused(stack: Settings, client: AsyncClient) -> None:
    await client.create_project("host", skip_if_exists=True)
    name = unique("denied")
    # model_copy does not validate: the service is what refuses.
    spec = serialized_flow(name).model_copy(update={"run_config": RunConfigSpec(env={"PYTHONSTARTUP": "/tmp/x.py"})})
    with pytest.raises(ValidationFailed, match="PYTHONSTARTUP"):
        await client.register(spec, "host")
    assert await client.get_flows(project_name="host", name=name) == []


async def test_the_flow_process_gets_the_allowed_env_and_not_the_denied(
    stack: Settings, client: AsyncClient, root: Path
) -> None:
    names = ["GREETING", "LD_PRELOAD", "PYTHONINSPECT", "FLOWBUS_FLOW_RUN_ID"]
    flow_id = await register_env_flow(client, root / "env.py", root / "marker", names)
    run_id = await client.create_flow_run(flow_id, run_config=RunConfigSpec(env={"GREETING": "hello"}))
    # A row stored before the rule (or written around it) holds denied names.
    stored = {"env": {"GREETING": "hello", "LD_PRELOAD": "/tmp/evil.so", "PYTHONINSPECT": "1"}}
    stored["env"]["FLOWBUS_FLOW_RUN_ID"] = "someone-else"
    engine = create_async_engine(stack.resolved_database_url())
    try:
        async with engine.begin() as conn:
            table = FlowRun.__table__  # type: ignore[attr-defined]
            await conn.execute(sa.update(table).where(table.c.id == run_id).values(run_config=stored))
    finally:
        await engine.dispose()
    assert (await client.get_flow_run(run_id)).run_config.env == stored["env"]
    async with running_agents(agent(stack)):
        watched = await watch_until_finished(client, run_id)
    assert watched.types[-1] is StateType.SUCCESS, watched.messages
    assert "env GREETING=hello" in watched.messages
    assert f"env LD_PRELOAD={os.environ.get('LD_PRELOAD')}" in watched.messages
    assert f"env PYTHONINSPECT={os.environ.get('PYTHONINSPECT')}" in watched.messages
    assert f"env FLOWBUS_FLOW_RUN_ID={run_id}" in watched.messages
    dropped = [m for m in watched.messages if m.startswith("Not passing run_config.env variables")]
    assert dropped == [
        "Not passing run_config.env variables ['FLOWBUS_FLOW_RUN_ID', 'LD_PRELOAD', 'PYTHONINSPECT']"
        " to the flow: they are denied (docs/security.md)."
    ]
