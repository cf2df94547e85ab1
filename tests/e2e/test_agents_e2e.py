"""Agents as real processes, driven through the CLI and the SDK.

One `flowbus up` and four `flowbus agent local start` processes for the
module: ``bare`` (no labels), ``a`` (e2e-a), ``ab`` (e2e-a, e2e-b) and
``ac`` (e2e-a, e2e-c), so a run labelled e2e-a has three agents competing
for it. Covers the routing table, exactly-once execution, retries, a failing
task, cancelling a running flow, and a parent flow with a child.
"""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from flowbus.client import Client
from flowbus.states import StateType, is_finished
from tests.helpers.processes import FLOWBUS, flowbus, home_settings, run, serving_scripts, start, stop, wait_for_line
from tests.helpers.scripts import BLOCKING_MESSAGE, blocking_flow

pytestmark = pytest.mark.e2e

FLOWS = {
    "record_flow.py": """
        import os
        import flowbus
        from flowbus import Flow, task

        LEDGER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ledger.txt")

        @task
        def record():
            fd = os.open(LEDGER, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
            os.write(fd, (flowbus.context.get("flow_run_id") + "\\n").encode())
            os.close(fd)

        with Flow("record-flow") as flow:
            record()
    """,
    "retry_flow.py": """
        from datetime import timedelta
        import flowbus
        from flowbus import Flow, task

        @task(max_retries=2, retry_delay=timedelta(milliseconds=100))
        def flaky():
            attempt = flowbus.context.get("task_run_count")
            if attempt < 3:
                raise RuntimeError(f"attempt {attempt} fails")
            flowbus.context.get("logger").info("third time lucky")

        @task
        def broken():
            raise ValueError("always broken")

        @task
        def after(x):
            flowbus.context.get("logger").info("never printed")

        with Flow("retry-flow") as flow:
            flaky()
            after(broken())
    """,
    "blocking_flow.py": blocking_flow("blocking-flow"),
    "family_flow.py": """
        import flowbus
        from flowbus import Flow, Parameter, task
        from flowbus.child_runs import create_flow_run, wait_for_flow_run

        @task
        def grow(n):
            flowbus.context.get("logger").info("child grew %s", n)

        with Flow("child-flow") as child:
            grow(Parameter("n", default=1))

        with Flow("parent-flow") as parent:
            child_id = create_flow_run(
                flow_name="child-flow", project_name="e2e-agents", parameters={"n": 7}, labels=["e2e-a"]
            )
            wait_for_flow_run(child_id, stream_logs=True, raise_final_state=True)
    """,
}

AGENTS = {"bare": [], "a": ["e2e-a"], "ab": ["e2e-a", "e2e-b"], "ac": ["e2e-a", "e2e-c"]}


@dataclass
class System:
    home: Path
    work: Path
    client: Client
    agent_ids: dict[str, str]  # agent name -> id

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return flowbus(self.home, self.work, *args)

    def flow_id(self, name: str) -> str:
        flows = self.client.get_flows(project_name="e2e-agents", name=name)
        return flows[0].id

    def wait_finished(self, run_id: str) -> StateType:
        for item in self.client.watch_flow_run(run_id):
            state = getattr(item, "state", None)
            if state is not None and getattr(item, "task_run_id", None) is None and is_finished(state.type):
                return StateType(state.type)
        raise AssertionError(f"watch of {run_id} ended without a finished state")


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    agents: list[subprocess.Popen[str]] = []
    with serving_scripts(tmp_path_factory.mktemp("agents-e2e"), "e2e-agents", FLOWS) as (home, work):
        try:
            for name, labels in AGENTS.items():
                args = [FLOWBUS, "agent", "local", "start", "--name", name, "--no-hostname-label"]
                for label in labels:
                    args += ["--label", label]
                agents.append(start(args, home, work))
                wait_for_line(agents[-1], "waiting for flow runs")
            with Client(home_settings(home)) as client:
                ids = {a.name: a.id for a in client.get_agents().agents}
                yield System(home, work, client, ids)
        finally:
            for agent in agents:
                stop(agent, signal.SIGTERM)


def test_label_routing_table(system: System) -> None:
    record = system.flow_id("record-flow")
    cases = {  # run labels -> the agents allowed to take it
        (): {"bare"},
        ("e2e-a",): {"a", "ab", "ac"},
        ("e2e-a", "e2e-b"): {"ab"},
        ("e2e-b",): {"ab"},
        ("e2e-c", "e2e-a"): {"ac"},
    }
    runs = {labels: system.client.create_flow_run(record, labels=list(labels)) for labels in cases}
    stranded = system.client.create_flow_run(record, labels=["e2e-b", "e2e-c"])  # no agent has both
    for labels, run_id in runs.items():
        assert system.wait_finished(run_id) is StateType.SUCCESS
        agent_id = system.client.get_flow_run(run_id).run.agent_id
        assert agent_id in {system.agent_ids[name] for name in cases[labels]}, labels
    still = system.client.get_flow_run(stranded).run
    assert still.state.type is StateType.SCHEDULED
    assert still.agent_id is None


def test_every_run_executes_exactly_once_across_three_agents(system: System) -> None:
    record = system.flow_id("record-flow")
    ids = [system.client.create_flow_run(record, labels=["e2e-a"]) for _ in range(60)]
    for run_id in ids:
        assert system.wait_finished(run_id) is StateType.SUCCESS
    ledger = (system.work / "ledger.txt").read_text().split()
    for run_id in ids:
        assert ledger.count(run_id) == 1
    takers = {system.client.get_flow_run(i).run.agent_id for i in ids}
    assert takers <= {system.agent_ids[n] for n in ("a", "ab", "ac")}


def test_retries_and_a_failing_task_through_the_cli(system: System) -> None:
    result = run(
        [FLOWBUS, "run", "--name", "retry-flow", "--project", "e2e-agents", "--label", "e2e-a", "--watch"],
        system.home,
        system.work,
    )
    assert result.returncode == 1, result.stdout + result.stderr  # `broken` fails the flow
    assert "third time lucky" in result.stdout
    assert "never printed" not in result.stdout
    run_id = result.stdout.splitlines()[0].rsplit(": ", 1)[1]
    history = json.loads(system.cli("get", "flow-run", run_id, "--json").stdout)
    by_task = {t["task_slug"]: t["state"]["type"] for t in history["task_runs"]}
    assert by_task == {"flaky-1": "Success", "broken-1": "Failed", "after-1": "TriggerFailed"}
    tasks = system.cli("get", "history", run_id, "--tasks").stdout
    assert tasks.count("Retrying") == 2


def test_cancelling_a_running_flow_through_the_cli(system: System) -> None:
    created = system.cli("run", "--name", "blocking-flow", "--project", "e2e-agents", "--label", "e2e-a", "-q")
    run_id = created.stdout.strip()
    watch = start([FLOWBUS, "watch", run_id], system.home, system.work)
    try:
        wait_for_line(watch, BLOCKING_MESSAGE)
        assert "Cancelling" in system.cli("cancel", run_id).stdout
        assert watch.wait(timeout=60) == 1
    finally:
        stop(watch, signal.SIGKILL)
    detail = system.client.get_flow_run(run_id)
    assert detail.run.state.type is StateType.CANCELLED
    assert {t.state.type for t in detail.task_runs} == {StateType.CANCELLED}


def test_a_parent_flow_runs_a_child_and_waits_for_it(system: System) -> None:
    result = run(
        [FLOWBUS, "run", "--name", "parent-flow", "--project", "e2e-agents", "--label", "e2e-a", "--watch"],
        system.home,
        system.work,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "child grew 7" in result.stdout  # the child's log, streamed into the parent's
    parent_id = result.stdout.splitlines()[0].rsplit(": ", 1)[1]
    parent = system.client.get_flow_run(parent_id).run
    children = system.client.get_flow_runs(flow_id=system.flow_id("child-flow"))
    assert [c.name for c in children] == [f"{parent.name}-child-flow"]
    assert children[0].state.type is StateType.SUCCESS
