"""Agents through the CLI, as real processes: durable waiting, get agents, stopping.

A run created while no agent can take it must survive a restart of the whole
system (nats-server and every service) and run once a matching agent starts.
"""

from __future__ import annotations

import signal
import textwrap
from pathlib import Path

import pytest

from tests.helpers.processes import FLOWBUS, flowbus, run, start, stop, wait_for_line

pytestmark = pytest.mark.e2e

WAITING_FLOW = """
import flowbus
from flowbus import Flow, task

@task
def hello():
    flowbus.context.get("logger").info("ran after the restart")

with Flow("waiting-flow") as flow:
    hello()
"""

LABEL = "e2e-late-agent"


def test_runs_wait_through_a_restart_until_a_matching_agent_starts(tmp_path: Path) -> None:
    home, work = tmp_path / "home", tmp_path / "work"
    work.mkdir()
    (work / "waiting_flow.py").write_text(textwrap.dedent(WAITING_FLOW))
    up = start([FLOWBUS, "up"], home, work)
    try:
        wait_for_line(up, "Press Ctrl-C to stop.")
        flowbus(home, work, "create", "project", "agents")
        flowbus(home, work, "register", "--project", "agents", "-p", str(work / "waiting_flow.py"))
        base = ["run", "--name", "waiting-flow", "--project", "agents", "--label", LABEL, "-q"]
        due_now = flowbus(home, work, *base).stdout.strip()
        due_soon = flowbus(home, work, *base, "--start-in", "2s").stdout.strip()
    finally:
        assert stop(up) == 0
    # Everything restarts: the same data folder, a new nats-server and new services.
    up = start([FLOWBUS, "up"], home, work)
    agent = None
    try:
        wait_for_line(up, "Press Ctrl-C to stop.")
        assert "No agents." in flowbus(home, work, "get", "agents").stdout
        for run_id in (due_now, due_soon):
            assert "Scheduled" in flowbus(home, work, "get", "flow-run", run_id).stdout
        agent = start(
            [
                FLOWBUS,
                "agent",
                "local",
                "start",
                "--label",
                LABEL,
                "--no-hostname-label",
                "--name",
                "late",
                "--limit",
                "2",
            ],
            home,
            work,
        )
        wait_for_line(agent, "waiting for flow runs")
        for run_id in (due_now, due_soon):
            watched = run([FLOWBUS, "watch", run_id], home, work)
            assert watched.returncode == 0, watched.stdout + watched.stderr
            assert "ran after the restart" in watched.stdout
            assert "Success" in watched.stdout
        agents = flowbus(home, work, "get", "agents").stdout
        line = next(row for row in agents.splitlines() if row.startswith("late "))
        assert LABEL in line
        assert line.rstrip().endswith("yes")  # online
        # SIGTERM: the agent stops taking runs and exits cleanly.
        assert stop(agent, signal.SIGTERM) == 0
        assert agent.stdout is not None
        assert "stopped" in agent.stdout.read()
        agent = None
    finally:
        if agent is not None:
            stop(agent, signal.SIGKILL)
        stop(up)


def test_a_flow_root_that_is_not_a_folder_stops_the_agent_at_start(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-folder"
    home = tmp_path / "home"
    by_flag = run([FLOWBUS, "agent", "local", "start", "--flow-root", str(missing)], home, tmp_path)
    by_setting = run(
        [FLOWBUS, "agent", "local", "start"], home, tmp_path, env={"FLOWBUS_AGENT__FLOW_ROOTS": f'["{missing}"]'}
    )
    for result in (by_flag, by_setting):
        assert result.returncode != 0
        assert f"Flow root '{missing}' is not an existing folder." in result.stdout + result.stderr
