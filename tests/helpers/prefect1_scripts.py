"""The Prefect 1.x scripts of the compatibility tier (tests/compat/), as a user writes them.

They import the real ``prefect`` package, so they live here as text (written
to the user's work folder by the tests) rather than as modules of the test
suite. Registration sits under ``if __name__ == "__main__"``: `prefect
register` and the flow-run subprocess load these files without running it.
"""

from __future__ import annotations

# Prefect 1.x's tutorial flow ("hello-flow"), with a parameter.
HELLO_FLOW = """\
import prefect
from prefect import Flow, Parameter, task


@task
def say_hello(name):
    logger = prefect.context.get("logger")
    logger.info(f"Hello, {name}!")


with Flow("hello-flow") as flow:
    name = Parameter("name", default="Cloud")
    say_hello(name)

if __name__ == "__main__":
    flow.register(project_name="tutorial")
"""

# The same flow, registered with an idempotency key: unchanged, it creates no new version.
HELLO_FLOW_IDEMPOTENT = HELLO_FLOW.replace(
    'flow.register(project_name="tutorial")',
    'flow.register(project_name="tutorial", idempotency_key=flow.serialized_hash())',
)

FAILING_FLOW = """\
from prefect import Flow, task


@task
def broken():
    raise ValueError("this flow fails on purpose")


with Flow("failing-flow") as flow:
    broken()
"""

# A mapped task and a reduce over it.
MAP_FLOW = """\
import prefect
from prefect import Flow, task


@task
def numbers():
    return [1, 2, 3]


@task
def double(x):
    return 2 * x


@task
def total(values):
    prefect.context.get("logger").info(f"Total: {sum(values)}")


with Flow("map-flow") as flow:
    total(double.map(numbers()))
"""

# A task that fails its first attempt and is retried after 1 s.
RETRY_FLOW = """\
from datetime import timedelta

import prefect
from prefect import Flow, task


@task(max_retries=1, retry_delay=timedelta(seconds=1))
def flaky():
    if prefect.context.get("task_run_count", 1) == 1:
        raise RuntimeError("the first attempt fails")
    prefect.context.get("logger").info("The second attempt succeeded")


with Flow("retry-flow") as flow:
    flaky()
"""

# A flow that runs until it is cancelled (or its process is stopped).
SLOW_FLOW = """\
import time

import prefect
from prefect import Flow, task


@task
def wait_a_while():
    prefect.context.get("logger").info("Sleeping until cancelled")
    time.sleep(600)


with Flow("slow-flow") as flow:
    wait_a_while()
"""

# Child flow runs, as Prefect 1.x documents them: the parent creates a run of hello-flow and waits for it.
PARENT_FLOW = """\
from prefect import Flow
from prefect.tasks.prefect import create_flow_run, wait_for_flow_run

with Flow("parent-flow") as flow:
    child = create_flow_run(flow_name="hello-flow", project_name="tutorial", parameters={"name": "Child"})
    wait_for_flow_run(child, stream_logs=True, raise_final_state=True)
"""

# `flow.run_agent()`: registers, then serves its own runs in-process. Its
# run config carries a label only that agent has, so no other agent takes them.
RUN_AGENT_FLOW = """\
import prefect
from prefect import Flow, task
from prefect.run_configs import LocalRun


@task
def report():
    prefect.context.get("logger").info("Run by the flow's own agent")


with Flow("own-agent-flow", run_config=LocalRun(labels=["own-agent"])) as flow:
    report()

if __name__ == "__main__":
    flow.register(project_name="tutorial")
    flow.run_agent()
"""

# The Client calls of Prefect 1.x's flow-run docs: create a run (later), read it, set its state with
# its version; then cancel another run before it starts. Prints what it saw as JSON.
CLIENT_API = """\
import json
import sys

import pendulum
from prefect import Client
from prefect.engine.state import Success


def seen(info):
    return {
        "id": info.id,
        "name": info.name,
        "flow_id": info.flow_id,
        "version": info.version,
        "state": type(info.state).__name__,
        "message": info.state.message,
        "parameters": info.parameters,
        "context": info.context,
        "scheduled_start_time": info.scheduled_start_time.isoformat(),
        "project": info.project.name,
        "task_runs": sorted(
            [
                {"slug": t.task_slug, "version": t.version, "state": type(t.state).__name__}
                for t in info.task_runs
            ],
            key=lambda t: t["slug"],
        ),
    }


flow_id = sys.argv[1]
client = Client()
later = pendulum.now("UTC").add(hours=1)
run_id = client.create_flow_run(
    flow_id=flow_id, parameters={"name": "Client"}, run_name="client-api-run", scheduled_start_time=later
)
created = client.get_flow_run_info(run_id)
returned = client.set_flow_run_state(flow_run_id=run_id, version=created.version, state=Success("It worked!"))
after = client.get_flow_run_info(run_id)

other = client.create_flow_run(flow_id=flow_id, scheduled_start_time=later)
cancelled = client.cancel_flow_run(flow_run_id=other)

print(
    json.dumps(
        {
            "run_id": run_id,
            "requested_start": later.isoformat(),
            "created": seen(created),
            "returned": type(returned).__name__,
            "after": seen(after),
            "other": other,
            "cancel_flow_run": cancelled,
        }
    )
)
"""

# A run created by the Client to start a few seconds from now (`prefect run` has no start-time option).
START_LATER = """\
import sys

import pendulum
from prefect import Client

start = pendulum.now("UTC").add(seconds=float(sys.argv[2]))
run_id = Client().create_flow_run(flow_id=sys.argv[1], run_name="start-later", scheduled_start_time=start)
print(run_id, start.isoformat())
"""

# The gateway's cancel_flow_run, through the Client: prints the state it returned.
CANCEL_RUN = """\
import sys

from prefect import Client

print(Client().cancel_flow_run(flow_run_id=sys.argv[1]))
"""
