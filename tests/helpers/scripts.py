"""Flow scripts the tests write to files and register, as a user's would be.

A script is registered "as the runner will load it": ``register_script``
loads it the way the runner does, so the task slugs agree.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

from flowbus.agent.runner import load_flow
from flowbus.client import AsyncClient
from flowbus.schemas.flows import StorageSpec
from tests.helpers.builders import unique

# The README's tutorial flow.
HELLO_FLOW = """
import flowbus
from flowbus import task, Flow

@task
def say_hello():
    logger = flowbus.context.get("logger")
    logger.info("Hello, Cloud!")

with Flow("hello-flow") as flow:
    say_hello()

# Register the flow under the "tutorial" project
flow.register(project_name="tutorial")
"""

# Records each execution in a ledger file, so that "ran exactly once" is seen from the flow's side.
RECORDING_FLOW = """
import os
import flowbus
from flowbus import Flow, task

@task
def record():
    # One line per execution; O_APPEND keeps concurrent lines whole.
    fd = os.open({ledger!r}, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, (flowbus.context.get("flow_run_id") + "\\n").encode())
    os.close(fd)

with Flow({name!r}) as flow:
    record()
"""

# What the blocking task logs once it blocks: a test waits for it before it cancels, kills or signals.
BLOCKING_MESSAGE = "blocking until stopped"


def blocking_flow(name: str, variable: str = "flow") -> str:
    """A flow script (or a part of one) whose one task, ``block``, logs
    BLOCKING_MESSAGE and then sleeps until its process is stopped."""
    return f"""
import time
import flowbus
from flowbus import Flow, task

@task
def block():
    flowbus.context.get("logger").info({BLOCKING_MESSAGE!r})
    time.sleep(600)  # far longer than any test: the test ends it

with Flow({name!r}) as {variable}:
    block()
"""


async def register_script(
    client: AsyncClient, path: Path, name: str, project: str, labels: list[str] | None = None
) -> str:
    """Register the flow ``name`` of the script at ``path``, loaded as the runner loads it; its id."""
    spec = load_flow(StorageSpec(type="script", path=str(path)), name).serialize()
    assert spec.storage.path == str(path.resolve()), "a script flow is registered with its path"
    await client.create_project(project, skip_if_exists=True)
    return (await client.register(spec, project, labels=labels)).id


def write_script(path: Path, source: str) -> Path:
    path.write_text(textwrap.dedent(source))
    return path


# Greets by the "name" parameter; with ``explode()`` as the extra task, the run fails.
GREETING_FLOW = """
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


def write_greeting_flow(tmp_path: Path, flow_name: str, fail: bool = False) -> Path:
    path = tmp_path / f"{flow_name}.py"
    extra = "explode()" if fail else "pass"
    path.write_text(textwrap.dedent(GREETING_FLOW.format(flow_name=flow_name, extra=extra)))
    return path


async def register_greeting_flow(client: AsyncClient, tmp_path: Path, fail: bool = False) -> str:
    """The greeting flow, written to ``tmp_path`` and registered in project "agents" with the label "itest"."""
    from flowbus.sdk.flow import Flow
    from flowbus.sdk.tasks import Parameter, Task

    name = unique("flow")
    path = write_greeting_flow(tmp_path, name, fail)
    flow = Flow(name)
    flow.add_task(Parameter("name", default="Cloud"))
    flow.bind(Task(lambda n: n, name="greet"), (), {})
    if fail:
        flow.bind(Task(lambda: None, name="explode"), (), {})
    spec = flow.serialize().model_copy(update={"storage": StorageSpec(type="script", path=str(path))})
    await client.create_project("agents", skip_if_exists=True)
    out = await client.register(spec, "agents", labels=["itest"])
    return out.id
