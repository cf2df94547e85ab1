"""A schedule through the `flowbus` command, as a user runs it: runs from a clock, executed as they come due.

`flowbus up`, a flow registered with a 2-second interval clock, `flowbus get
schedule`, an agent, a restart of the whole stack, `flowbus flow schedule
--off`. Each execution appends its run id to a ledger, so "each clock time
ran once" is seen from the flow's side.
"""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest

from flowbus.client import Client
from flowbus.schemas.runs import FlowRunOut
from flowbus.states import StateType
from tests.helpers.processes import FLOWBUS, UP_READY, flowbus, home_settings, start, stop, wait_for_line
from tests.helpers.waiting import wait_until

pytestmark = pytest.mark.e2e

EVERY_TWO_SECONDS = """
import os
from datetime import timedelta

import flowbus
from flowbus import Flow, task
from flowbus.sdk.schedules import IntervalClock, Schedule

LEDGER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ledger.txt")

@task
def record():
    fd = os.open(LEDGER, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, (flowbus.context.get("flow_run_id") + "\\n").encode())
    os.close(fd)

with Flow("every-two-seconds", schedule=Schedule([IntervalClock(timedelta(seconds=2))])) as flow:
    record()
"""


def auto_runs(client: Client, flow_id: str) -> list[FlowRunOut]:
    return [r for r in client.get_flow_runs(flow_id=flow_id, limit=1000) if r.auto_scheduled]


def waiting_ahead(client: Client, flow_id: str) -> list[FlowRunOut]:
    now = datetime.now(UTC)
    return [
        r for r in auto_runs(client, flow_id) if r.state.type is StateType.SCHEDULED and r.scheduled_start_time > now
    ]


def succeeded(client: Client, flow_id: str) -> list[FlowRunOut]:
    return [r for r in auto_runs(client, flow_id) if r.state.type is StateType.SUCCESS]


def test_a_two_second_schedule_runs_each_time_once_across_a_restart_until_turned_off(home: Path, workdir: Path) -> None:
    (workdir / "every_two.py").write_text(textwrap.dedent(EVERY_TWO_SECONDS))
    up = start([FLOWBUS, "up"], home, workdir)
    agent = None
    try:
        wait_for_line(up, UP_READY)
        flowbus(home, workdir, "create", "project", "sched")
        flowbus(home, workdir, "register", "--project", "sched", "-p", str(workdir / "every_two.py"))
        flow_id = flowbus(home, workdir, "get", "flows", "--project", "sched").stdout.split()[-1]

        shown = flowbus(home, workdir, "get", "schedule", flow_id).stdout
        assert "active" in shown, shown
        assert shown.count("{}") == 10, shown  # ten start times, no parameters

        with Client(home_settings(home)) as client:
            wait_until(lambda: waiting_ahead(client, flow_id), "ten runs created ahead", until=lambda r: len(r) >= 9)
            agent = start([FLOWBUS, "agent", "local", "start"], home, workdir)
            wait_until(lambda: succeeded(client, flow_id), "three runs executed", until=lambda r: len(r) >= 3)

        # The whole stack restarts (the agent too); nothing is created twice.
        stop(agent)
        stop(up)
        up = start([FLOWBUS, "up"], home, workdir)
        wait_for_line(up, UP_READY)
        agent = start([FLOWBUS, "agent", "local", "start"], home, workdir)
        with Client(home_settings(home)) as client:
            before = len(succeeded(client, flow_id))
            wait_until(
                lambda: succeeded(client, flow_id),
                "runs executed after the restart",
                until=lambda r: len(r) >= before + 3,
            )

            flowbus(home, workdir, "flow", "schedule", flow_id, "--off")
            assert "off" in flowbus(home, workdir, "get", "schedule", flow_id).stdout
            # Runs already due may still run; nothing waits ahead any more.
            wait_until(lambda: waiting_ahead(client, flow_id), "future runs removed", until=lambda r: not r)
            runs = auto_runs(client, flow_id)
        starts = [r.scheduled_start_time for r in runs]
        assert len(starts) == len(set(starts)), "two runs for one clock time"
        assert all((s - starts[0]).total_seconds() % 2 == 0 for s in starts)
        ledger = (workdir / "ledger.txt").read_text().split()
        assert len(ledger) == len(set(ledger)), "a run executed twice"
        assert set(ledger) <= {r.id for r in runs}
    finally:
        if agent is not None:
            stop(agent)
        stop(up)
