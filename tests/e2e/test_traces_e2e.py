"""One trace per flow run, across processes: `flowbus up --traces`, an agent, `flowbus run --watch`.

Every process shares only ``FLOWBUS_HOME``: the services learn tracing is on
from `flowbus up --traces`, the CLI, the agent and its runner from the
endpoint file. Each writes its spans under ``$FLOWBUS_HOME/traces``; once
all have stopped (so every span is written), the test reads those files and
`flowbus trace` prints the run's tree.
"""

from __future__ import annotations

import json
import signal
import textwrap
from pathlib import Path

import pytest

from flowbus.cli.traces import Span, read_spans, run_traces
from tests.helpers.processes import FLOWBUS, UP_READY, run, start, stop, wait_for_line

pytestmark = pytest.mark.e2e

FLOW = """
import flowbus
from flowbus import Flow, task

@task
def greet():
    flowbus.context.get("logger").info("hello from the traced flow")

with Flow("traced-flow") as flow:
    greet()
"""


def _path_to_root(span: Span, by_id: dict[str, Span]) -> list[Span]:
    path = [span]
    while path[-1].parent_id in by_id:
        path.append(by_id[str(path[-1].parent_id)])
    return path


def test_a_run_through_cli_agent_and_runner_is_one_trace(tmp_path: Path) -> None:
    home, work = tmp_path / "home", tmp_path / "work"
    work.mkdir()
    (work / "traced_flow.py").write_text(textwrap.dedent(FLOW))
    up = start([FLOWBUS, "up", "--traces"], home, work)
    agent = None
    try:
        wait_for_line(up, UP_READY)
        assert json.loads((home / "endpoint.json").read_text())["traces"] is True
        for command in (["create", "project", "traces"], ["register", "--project", "traces", "-p", "traced_flow.py"]):
            result = run([FLOWBUS, *command], home, work)
            assert result.returncode == 0, result.stdout + result.stderr
        agent = start([FLOWBUS, "agent", "local", "start", "--label", "traced", "--no-hostname-label"], home, work)
        wait_for_line(agent, "waiting for flow runs")
        args = [FLOWBUS, "run", "--name", "traced-flow", "--project", "traces", "--label", "traced", "--watch"]
        result = run(args, home, work)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "hello from the traced flow" in result.stdout
        run_id = result.stdout.splitlines()[0].rsplit(": ", 1)[1]
    finally:
        if agent is not None:
            stop(agent, signal.SIGTERM)
        stop(up)

    trees = run_traces(read_spans(home / "traces"), run_id)
    assert len(trees) == 1, trees  # one trace for the run
    spans = list(read_spans(home / "traces"))
    trace_id = trees[0][0].trace_id
    mine = [s for s in spans if s.trace_id == trace_id]
    by_id = {s.span_id: s for s in mine}

    def one(name: str, service: str) -> Span:
        found = [s for s in mine if s.name == name and s.service == service]
        assert found, f"no {name} span of {service}: {sorted((s.name, s.service) for s in mine)}"
        return found[0]

    running = one("set_flow_run_state Running", "state")
    chain = [(s.name, s.service) for s in _path_to_root(running, by_id)]
    # From the state write back to the CLI, each step the child of the one before it.
    assert chain == [
        ("set_flow_run_state Running", "state"),
        ("flow_run", "runner"),
        ("take_flow_run", "agent"),
        ("queue_flow_run", "run_creation"),
        ("create_flow_run", "run_creation"),
        ("create_flow_run", "cli"),
        ("flowbus run", "cli"),
    ]
    claim = one("set_flow_run_state Submitted", "state")
    assert by_id[str(claim.parent_id)].name == "claim"
    task = one("set_task_run_state Running", "state")
    assert by_id[str(task.parent_id)].name == "task_run Running"
    assert by_id[str(task.parent_id)].service == "runner"
    assert one("set_flow_run_state Success", "state").attributes["flowbus.flow_run_id"] == run_id
    assert one("store_logs", "state")

    shown = run([FLOWBUS, "trace", run_id], home, work)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0] == f"trace {trace_id}"
    assert lines[1].startswith("flowbus run  [cli]  ")
    assert any("set_flow_run_state Running  [state]" in line for line in lines)

    unknown = run([FLOWBUS, "trace", "no-such-run"], home, work)
    assert unknown.returncode == 1
    assert "no span of flow run no-such-run" in unknown.stderr
