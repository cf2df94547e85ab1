"""`flowbus run --execute`: the flow runs in the CLI's own process, no agent.

One `flowbus up` for the module and no agent at all; every command is a
subprocess sharing only ``FLOWBUS_HOME``. A run that this process cannot
finish (a crash of flow code, SIGTERM, Ctrl-C) must end Failed, not stuck.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.processes import FLOWBUS, assert_in_order, flowbus, run, serving_scripts, start, stop, wait_for_line
from tests.helpers.scripts import BLOCKING_MESSAGE, blocking_flow

pytestmark = pytest.mark.e2e

FLOWS = """
import flowbus
from flowbus import Flow, Parameter, task

@task
def greet(name):
    flowbus.context.get("logger").info("Hello, %s! (run %s)", name, flowbus.context.get("flow_run_name"))

with Flow("exec-hello") as hello:
    greet(Parameter("name", default="Cloud"))

@task
def broken():
    raise ValueError("this flow fails")

with Flow("exec-failing") as failing:
    broken()

@task
def interrupted():
    raise KeyboardInterrupt()

with Flow("exec-interrupted") as interrupted_flow:
    interrupted()
"""

FLOWS += blocking_flow("exec-sleepy", variable="sleepy_flow")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    with serving_scripts(tmp_path_factory.mktemp("execute-cli"), "execute", {"exec_flows.py": FLOWS}) as folders:
        yield folders


def created_id(output: str) -> str:
    first = output.splitlines()[0]
    assert first.startswith("Flow run "), output
    return first.rsplit(": ", 1)[1]


def shown(home: Path, work: Path, run_id: str) -> dict[str, Any]:
    detail: dict[str, Any] = json.loads(flowbus(home, work, "get", "flow-run", run_id, "--json").stdout)
    return detail


def execute(*args: str) -> list[str]:
    return [FLOWBUS, "run", "--project", "execute", "--execute", *args]


def test_a_successful_run_exits_0(stack: tuple[Path, Path]) -> None:
    home, work = stack
    result = run(execute("--name", "exec-hello", "--param", "name=Marvin", "--run-name", "here"), home, work)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert_in_order(
        out,
        [
            "Entered state Scheduled",
            "Entered state Submitted: Submitted for execution in this process (flowbus run --execute)",
            "Entered state Running",
            "Hello, Marvin! (run here)",
            "Entered state Success",
        ],
    )
    detail = shown(home, work, created_id(out))
    assert detail["run"]["state"]["type"] == "Success"
    assert detail["run"]["agent_id"] is None
    # The one label no agent has: no agent could have taken this run.
    [label] = detail["run"]["labels"]
    assert label.startswith("flowbus-execute-")
    assert {t["state"]["type"] for t in detail["task_runs"]} == {"Success"}


def test_by_id_and_quiet(stack: tuple[Path, Path]) -> None:
    home, work = stack
    flows = flowbus(home, work, "get", "flows", "--project", "execute").stdout
    flow_id = next(line.split("\t")[-1] for line in flows.splitlines() if line.startswith("exec-hello\t"))
    result = run([FLOWBUS, "run", "--id", flow_id, "--execute", "-q", "--label", "mine"], home, work)
    assert result.returncode == 0, result.stdout + result.stderr
    [run_id] = result.stdout.split()  # -q: the id alone, no state lines
    labels = shown(home, work, run_id)["run"]["labels"]
    assert "mine" in labels
    assert any(label.startswith("flowbus-execute-") for label in labels)
    refused = run([FLOWBUS, "run", "--id", flow_id, "--execute", "--start-in", "1m"], home, work)
    assert refused.returncode == 2
    assert "--execute runs the flow now" in refused.stderr


def test_a_failing_run_exits_1(stack: tuple[Path, Path]) -> None:
    home, work = stack
    result = run(execute("--name", "exec-failing"), home, work)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "this flow fails" in result.stdout
    assert "Entered state Failed" in result.stdout
    assert shown(home, work, created_id(result.stdout))["run"]["state"]["type"] == "Failed"


def test_a_crash_of_flow_code_ends_the_run_failed(stack: tuple[Path, Path]) -> None:
    home, work = stack
    result = run(execute("--name", "exec-interrupted"), home, work)
    assert result.returncode == 1, result.stdout + result.stderr
    detail = shown(home, work, created_id(result.stdout))
    assert detail["run"]["state"]["type"] == "Failed"
    assert "KeyboardInterrupt" in detail["run"]["state"]["message"]
    assert {t["state"]["type"] for t in detail["task_runs"]} == {"Failed"}  # not left Running


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_mid_run_ends_the_run_failed(stack: tuple[Path, Path], sig: signal.Signals) -> None:
    home, work = stack
    proc = start(execute("--name", "exec-sleepy"), home, work)
    try:
        seen = wait_for_line(proc, BLOCKING_MESSAGE)
        proc.send_signal(sig)
        rest, _ = proc.communicate(timeout=30)
    finally:
        stop(proc)
    out = "".join(seen) + rest
    assert proc.returncode == 1, out
    assert f"Entered state Failed: Flow run process {proc.pid} received {sig.name}." in out
    detail = shown(home, work, created_id(out))
    assert detail["run"]["state"]["type"] == "Failed"
    assert sig.name in detail["run"]["state"]["message"]
    assert {t["state"]["type"] for t in detail["task_runs"]} == {"Failed"}


def test_a_cancel_stops_the_flow_and_ends_the_run_cancelled(stack: tuple[Path, Path]) -> None:
    home, work = stack
    proc = start(execute("--name", "exec-sleepy"), home, work)
    try:
        seen = wait_for_line(proc, BLOCKING_MESSAGE)
        run_id = created_id("".join(seen))
        assert "Cancelling" in flowbus(home, work, "cancel", run_id).stdout
        rest, _ = proc.communicate(timeout=30)
    finally:
        stop(proc)
    out = "".join(seen) + rest
    assert proc.returncode == 1, out
    assert "Entered state Cancelled" in out
    detail = shown(home, work, run_id)
    assert detail["run"]["state"]["type"] == "Cancelled"
    assert {t["state"]["type"] for t in detail["task_runs"]} == {"Cancelled"}
