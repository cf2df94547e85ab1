"""Child flow runs (flowbus.child_runs): a parent flow's tasks
``create_flow_run`` (another flow's run) and ``wait_for_flow_run`` (its end,
with its logs), under a real agent.

Both flows are scripts in tmp_path, registered as the runner will load them;
one in-process LocalAgent (a label of its own per test) runs parent and child.
"""

from __future__ import annotations

from pathlib import Path

from flowbus.agent.local import LocalAgent
from flowbus.client import AsyncClient
from flowbus.schemas.runs import FlowRunOut
from flowbus.settings import Settings
from flowbus.states import StateType
from tests.helpers import unique
from tests.helpers.agents import running_agents
from tests.helpers.runs import watch_until_finished
from tests.helpers.scripts import register_script, write_script

PROJECT = "children"

CHILD = """
import flowbus
from flowbus import Flow, Parameter, task

@task
def work(x):
    flowbus.context.get("logger").info("child got x=%s", x)
    if x == "fail":
        raise RuntimeError("child kaboom")
    return x

with Flow("{name}") as flow:
    work(Parameter("x", default=0))
"""

PARENT = """
from flowbus import Flow
from flowbus.child_runs import create_flow_run, wait_for_flow_run

with Flow("{name}") as flow:
    child_id = create_flow_run(flow_name="{child}", project_name="{project}", parameters={{"x": {x!r}}})
    wait_for_flow_run(child_id, stream_logs=True, raise_final_state=True)
"""

# The task that creates the child fails once after creating it, then is retried.
RETRYING_PARENT = """
from datetime import timedelta
from pathlib import Path
from flowbus import Flow, task
from flowbus.child_runs import create_flow_run, wait_for_flow_run

MARKER = Path({marker!r})

@task(max_retries=1, retry_delay=timedelta(0))
def spawn():
    child_id = create_flow_run.run(flow_name="{child}", project_name="{project}")
    if not MARKER.exists():
        MARKER.write_text(child_id)
        raise RuntimeError("first attempt fails after creating the child")
    return child_id

with Flow("{name}") as flow:
    wait_for_flow_run(spawn(), raise_final_state=True)
"""


async def finish(client: AsyncClient, run_id: str) -> tuple[StateType, list[str]]:
    """The run's final state and every log message of it, once it has finished."""
    watched = await watch_until_finished(client, run_id, timeout=90)
    return watched.types[-1], watched.messages


async def run_parent(
    stack: Settings, client: AsyncClient, tmp_path: Path, child_x: object = 1, retrying: bool = False
) -> tuple[FlowRunOut, StateType, list[str], list[FlowRunOut]]:
    """Register a child and a parent flow, run the parent; returns it, its end and the child runs."""
    label, child, parent = unique("child-flows"), unique("child"), unique("parent")
    child_path = write_script(tmp_path / f"{child}.py", CHILD.format(name=child))
    child_flow_id = await register_script(client, child_path, child, PROJECT, labels=[label])
    source = (
        RETRYING_PARENT.format(name=parent, child=child, project=PROJECT, marker=str(tmp_path / "attempted"))
        if retrying
        else PARENT.format(name=parent, child=child, project=PROJECT, x=child_x)
    )
    parent_path = write_script(tmp_path / f"{parent}.py", source)
    parent_flow_id = await register_script(client, parent_path, parent, PROJECT, labels=[label])
    # Script flows carry the hostname label (only an agent on this machine can load them).
    async with running_agents(LocalAgent(stack, labels=[label], hostname_label=True)):
        run = await client.create_flow_run_out(parent_flow_id)
        state, messages = await finish(client, run.id)
        children = await client.get_flow_runs(flow_id=child_flow_id)
        for child_run in children:  # let the agent see its children end before it stops
            await finish(client, child_run.id)
    return run, state, messages, children


async def test_parent_creates_and_waits_for_a_child(stack: Settings, client: AsyncClient, tmp_path: Path) -> None:
    run, state, messages, children = await run_parent(stack, client, tmp_path, child_x=1)
    assert state is StateType.SUCCESS, messages
    assert len(children) == 1
    child = (await client.get_flow_run(children[0].id)).run
    assert child.state.type is StateType.SUCCESS
    assert child.name == f"{run.name}-{child.flow_name}"
    assert child.parameters == {"x": 1}
    assert f"Created flow run {child.name} ({child.id})" in messages
    # stream_logs: the child's own log line, re-logged in the parent.
    assert f"{child.name}: child got x=1" in messages


async def test_retried_parent_task_creates_one_child(stack: Settings, client: AsyncClient, tmp_path: Path) -> None:
    _, state, messages, children = await run_parent(stack, client, tmp_path, retrying=True)
    assert state is StateType.SUCCESS, messages
    # Both attempts ran create_flow_run with the same task-run id as the key.
    assert [c.id for c in children] == [(tmp_path / "attempted").read_text()]
    assert sum(m.startswith("Created flow run ") for m in messages) == 2


async def test_failing_child_fails_the_parent(stack: Settings, client: AsyncClient, tmp_path: Path) -> None:
    _, state, messages, children = await run_parent(stack, client, tmp_path, child_x="fail")
    assert state is StateType.FAILED, messages
    assert [(await client.get_flow_run(c.id)).run.state.type for c in children] == [StateType.FAILED]
    assert any("ended Failed" in m for m in messages), messages
