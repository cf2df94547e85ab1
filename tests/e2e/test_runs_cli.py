"""Runs through the CLI, as a user: run options, listing, history, logs, watch, cancel.

One `flowbus up` for the module; every command is a subprocess sharing only
``FLOWBUS_HOME``. Runs meant to stay Scheduled carry a label no agent has.
"""

from __future__ import annotations

import json
import re
import sys
import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.processes import (
    FLOWBUS,
    assert_in_order,
    flowbus,
    run,
    serving_scripts,
    start,
    stop,
    ui_base,
    wait_for_line,
)
from tests.helpers.waiting import wait_until

pytestmark = pytest.mark.e2e

PARAMS_FLOW = """
from flowbus import Flow, Parameter, task

@task
def show(x, y):
    return (x, y)

with Flow("params-flow") as flow:
    show(Parameter("x", required=True), Parameter("y", default="default-y"))
"""

NOISY_FLOW = """
import flowbus
from flowbus import Flow, task

@task
def noisy():
    logger = flowbus.context.get("logger")
    logger.info("quiet remark")
    logger.warning("careful now")
    logger.error("something bad, but carrying on")

with Flow("noisy-flow") as flow:
    noisy()
"""

NOWHERE = "no-agent-has-this-label"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    scripts = {"params_flow.py": PARAMS_FLOW, "noisy_flow.py": NOISY_FLOW}
    with serving_scripts(tmp_path_factory.mktemp("runs-cli"), "runs", scripts) as folders:
        yield folders


def refused(home: Path, work: Path, *args: str, code: int = 1) -> str:
    """A command that must fail with one error line and no traceback: that line."""
    result = run([FLOWBUS, *args], home, work)
    assert result.returncode == code, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def run_json(home: Path, work: Path, run_id: str) -> dict[str, Any]:
    shown: dict[str, Any] = json.loads(flowbus(home, work, "get", "flow-run", run_id, "--json").stdout)["run"]
    return shown


def created_id(output: str) -> str:
    """The id on the first line, ``Flow run NAME created: ID``; a ``Flow run URL:`` line follows it."""
    return output.splitlines()[0].rsplit(": ", 1)[1]


def test_run_options(stack: tuple[Path, Path]) -> None:
    home, work = stack
    (work / "params.json").write_text(json.dumps({"x": 1, "y": "from the file"}))
    args = [
        "run",
        "--name",
        "params-flow",
        "--project",
        "runs",
        "--param-file",
        "params.json",
        "--param",
        "x=[1, 2]",
        "--context",
        "team=data",
        "--context",
        "retries=3",
        "--label",
        NOWHERE,
        "--label",
        "second",
        "--run-name",
        "my-run",
        "--idempotency-key",
        "nightly-1",
        "-q",
    ]
    first = flowbus(home, work, *args).stdout.strip()
    assert len(first) == 36, first  # -q: the id alone
    assert flowbus(home, work, *args).stdout.strip() == first  # same key, same run
    shown = run_json(home, work, first)
    assert shown["parameters"] == {"x": [1, 2], "y": "from the file"}  # --param wins over the file
    assert shown["context"] == {"team": "data", "retries": 3}
    assert shown["labels"] == sorted([NOWHERE, "second"])
    assert shown["name"] == "my-run"
    assert shown["idempotency_key"] == "nightly-1"
    readable = flowbus(home, work, "get", "flow-run", first).stdout
    for needle in ("my-run", "params-flow", "Scheduled", '"team": "data"', "version:", "task runs:", "show-1"):
        assert needle in readable, readable

    later = flowbus(home, work, "run", "--name", "params-flow", "--param", "x=1", "--start-in", "10m").stdout
    assert later.startswith("Flow run ")
    waiting = run_json(home, work, created_id(later))
    assert waiting["state"]["type"] == "Scheduled"
    start_time = datetime.fromisoformat(waiting["scheduled_start_time"])
    assert start_time > datetime.now(UTC) + timedelta(minutes=9)

    one_run = ["run", "--name", "params-flow", "--param", "x=1"]
    assert "timezone" in refused(home, work, *one_run, "--start-at", "2031-01-01T09:00:00", code=2)
    at = flowbus(home, work, *one_run, "--start-at", "2031-01-01T09:00:00+01:00", "-q")
    assert run_json(home, work, at.stdout.strip())["scheduled_start_time"].startswith("2031-01-01T08:00:00")
    assert "Required parameters" in refused(home, work, "run", "--name", "params-flow")
    assert "KEY=VALUE" in refused(home, work, "run", "--name", "params-flow", "--param", "x", code=2)


def test_list_history_and_cancel(stack: tuple[Path, Path]) -> None:
    home, work = stack
    flows = flowbus(home, work, "get", "flows", "--project", "runs").stdout
    flow_id = next(line.split("\t")[-1] for line in flows.splitlines() if line.startswith("params-flow\t"))
    start_at = "2032-06-01T00:00:00Z"
    base = ["run", "--id", flow_id, "--param", "x=1", "--label", NOWHERE, "-q"]
    keep = flowbus(home, work, *base, "--start-at", start_at, "--run-name", "keep-me").stdout.strip()
    drop = flowbus(home, work, *base, "--start-in", "1d", "--run-name", "drop-me").stdout.strip()

    table = flowbus(home, work, "get", "flow-runs", "--flow", flow_id).stdout.splitlines()
    assert table[0].split()[:4] == ["NAME", "ID", "FLOW", "STATE"]
    assert table[1].startswith("keep-me")  # newest scheduled first
    assert any(line.startswith("drop-me") for line in table)
    assert flowbus(home, work, "get", "flow-runs", "--flow", flow_id, "--limit", "1").stdout.count("\n") == 2

    cancelled = flowbus(home, work, "cancel", drop).stdout
    assert "Cancelled" in cancelled
    assert "already finished" in flowbus(home, work, "cancel", drop).stdout
    only_cancelled = flowbus(home, work, "get", "flow-runs", "--project", "runs", "--state", "cancelled").stdout
    assert drop in only_cancelled
    assert keep not in only_cancelled
    scheduled = flowbus(home, work, "get", "flow-runs", "--project", "runs", "--state", "Scheduled").stdout
    assert keep in scheduled
    assert drop not in scheduled
    assert "NOT_FOUND" in refused(home, work, "get", "flow-runs", "--project", "no-such-project")
    assert "--state takes one of" in refused(home, work, "get", "flow-runs", "--state", "Sleeping", code=2)

    history = flowbus(home, work, "get", "history", drop).stdout.splitlines()
    assert history[0].split() == ["TIME", "RUN", "VERSION", "STATE", "MESSAGE"]
    assert re.search(r"flow run\s+1\s+Scheduled\s+Flow run scheduled\.", history[1]), history
    assert re.search(r"flow run\s+2\s+Cancelled", history[2]), history
    assert len(history) == 3
    with_tasks = flowbus(home, work, "get", "history", drop, "--tasks").stdout
    assert "task show-1" in with_tasks
    assert "NOT_FOUND" in refused(home, work, "get", "history", "no-such-run")
    assert "NOT_FOUND" in refused(home, work, "cancel", "no-such-run")


def test_a_real_run_its_logs_history_and_watch(stack: tuple[Path, Path]) -> None:
    home, work = stack
    agent = start([FLOWBUS, "agent", "local", "start"], home, work)
    try:
        wait_for_line(agent, "waiting for flow runs")
        watched = run([FLOWBUS, "run", "--name", "noisy-flow", "--project", "runs", "--watch"], home, work)
    finally:
        assert stop(agent) == 0
    assert watched.returncode == 0, watched.stdout + watched.stderr
    assert "careful now" in watched.stdout
    run_id = created_id(watched.stdout)
    # The run's page first, then the watch.
    assert watched.stdout.splitlines()[1] == f"Flow run URL: {ui_base(home)}/flow-run/{run_id}", watched.stdout

    # The log writer stores what the watch streamed; wait until it has all of it.
    wait_until(
        lambda: flowbus(home, work, "logs", run_id).stdout,
        "the run's last log line is stored",
        until=lambda logs: "something bad" in logs,
    )
    everything = flowbus(home, work, "logs", run_id).stdout
    assert "quiet remark" in everything
    warnings = flowbus(home, work, "logs", run_id, "--level", "warning").stdout
    assert "careful now" in warnings
    assert "something bad" in warnings
    assert "quiet remark" not in warnings
    assert "Submitted for execution" not in warnings  # the agent's INFO line
    assert flowbus(home, work, "logs", run_id, "--since", "2100-01-01T00:00:00Z").stdout == ""
    assert "quiet remark" in flowbus(home, work, "get", "logs", run_id).stdout  # the older spelling
    assert "timezone" in refused(home, work, "logs", run_id, "--since", "2100-01-01T00:00:00", code=2)
    # A finished run: --follow prints what is stored and returns.
    assert "careful now" in flowbus(home, work, "logs", run_id, "--follow").stdout

    history = flowbus(home, work, "get", "history", run_id, "--tasks").stdout
    for needle in ("Scheduled", "Submitted", "Running", "Success", "task noisy-1"):
        assert needle in history, history

    # `watch` on a finished run replays it in time order and exits as the run ended.
    replay = flowbus(home, work, "watch", run_id).stdout
    states = ["Entered state Scheduled", "Entered state Submitted", "Entered state Running"]
    assert_in_order(replay, [*states, "careful now", "Entered state Success"])
    assert replay.count("Entered state Running") == 1


def test_watch_explains_a_waiting_run_and_ends_when_it_is_cancelled(stack: tuple[Path, Path]) -> None:
    home, work = stack
    run_id = flowbus(home, work, "run", "--name", "params-flow", "--param", "x=1", "--label", NOWHERE, "-q").stdout
    watcher = start([FLOWBUS, "watch", run_id.strip()], home, work, {"FLOWBUS_WATCH_EXPLAIN_AFTER": "0.2"})
    try:
        seen = wait_for_line(watcher, "Waiting:")
        assert "Entered state Scheduled" in "".join(seen)
        assert NOWHERE in seen[-1] or "No agent is online" in seen[-1]
        assert "Cancelled" in flowbus(home, work, "cancel", run_id.strip(), "-m", "given up").stdout
        wait_for_line(watcher, "Entered state Cancelled: given up")
        assert watcher.wait(timeout=30) == 1
    finally:
        stop(watcher)


def test_the_python_client_sets_states_and_reads_runs(stack: tuple[Path, Path]) -> None:
    home, work = stack
    script = f"""
        from flowbus import Client
        from flowbus.states import Running, StateType, Success

        client = Client()
        run_id = client.create_flow_run(
            flow_name="params-flow", project_name="runs", parameters={{"x": 1}}, labels=[{NOWHERE!r}]
        )
        assert isinstance(run_id, str)
        info = client.get_flow_run_info(run_id)
        v = client.set_flow_run_state(run_id, info.version, StateType.SUBMITTED, "by type").version
        v = client.set_flow_run_state(run_id, v, {{"type": "Running", "message": "by dict"}}).version
        done = client.set_flow_run_state(run_id, v, Success(message="It worked!"))
        print(done.state.type.value, done.version)
        print([e.type.value for e in client.get_flow_run_history(run_id)])
        print(run_id in [r.id for r in client.get_flow_runs(project_name="runs", states=["Success"])])
        print(client.cancel_flow_run(run_id).changed)
        print(client.get_flow_run_logs(run_id, level="ERROR"))
        client.close()
    """
    result = run([sys.executable, "-c", textwrap.dedent(script)], home, work)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == [
        "Success 4",
        "['Scheduled', 'Submitted', 'Running', 'Success']",
        "True",
        "False",
        "[]",
    ]


def test_status_shows_the_stack_at_a_glance(stack: tuple[Path, Path]) -> None:
    home, work = stack
    label = f"status-{datetime.now(UTC).strftime('%H%M%S%f')}"
    flowbus(home, work, "run", "--name", "params-flow", "--param", "x=1", "--label", label, "-q")

    shown = flowbus(home, work, "status").stdout
    lines = {line.split(":", 1)[0]: line for line in shown.splitlines() if not line.startswith(" ")}
    services = "gateway, heartbeat, registration, run_creation, scheduler, state"
    assert lines["Services"] == f"Services:     6 up: {services}", shown
    # The module's stack may have an agent an earlier test started, still within the online window.
    assert re.fullmatch(r"Agents:       \d+ online", lines["Agents"]), shown
    assert re.search(r"Scheduled [1-9]", lines["Runs"]), shown
    # Due at once and no agent has its label: waiting, and said so.
    assert f"{label} (1)" in lines["Due, waiting"], shown
    assert re.fullmatch(r"Late runs:    \d+", lines["Late runs"]), shown
    assert re.fullmatch(r"Outbox:       \d+ rows waiting.*", lines["Outbox"]), shown

    summary = json.loads(flowbus(home, work, "status", "--json").stdout)
    assert summary["services"]["up"] == services.split(", ")
    assert summary["services"]["down"] == []
    assert summary["due"]["no_agent_for"][label] == 1
    assert isinstance(summary["agents_online"], int)

    # A process that does not answer is named, with exit code 1.
    from flowbus_services.up import free_port

    nowhere = f"http://127.0.0.1:{free_port()}/metrics"
    gone = run([FLOWBUS, "status", "--metrics-url", nowhere], home, work)
    assert gone.returncode == 1
    assert f"DOWN: services ({nowhere}: " in gone.stdout, gone.stdout
