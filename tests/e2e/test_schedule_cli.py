"""`flowbus flow schedule` (the switch and the group's one-clock schedule),
`flowbus get flow-runs --late` and `flowbus get scheduler`, as a user runs them.

One `flowbus up` for the module; no agent runs, so a due run stays Scheduled.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.processes import FLOWBUS, flowbus, run, serving_scripts

pytestmark = pytest.mark.e2e

FLOWS = """
from flowbus import Flow, Parameter, task

@task
def show(x):
    return x

with Flow("plain") as plain:
    show(Parameter("x", default=1))

with Flow("needy") as needy:
    show(Parameter("x", required=True))
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    with serving_scripts(tmp_path_factory.mktemp("schedule-cli"), "sched", {"flows.py": FLOWS}) as folders:
        yield folders


def flow_id(home: Path, work: Path, name: str) -> str:
    listed = flowbus(home, work, "get", "flows", "--project", "sched", "--name", name).stdout
    return listed.strip().split("\t")[-1]


def flow_json(home: Path, work: Path, fid: str) -> dict[str, Any]:
    shown: dict[str, Any] = json.loads(flowbus(home, work, "get", "flow", fid).stdout)
    return shown


def refused(home: Path, work: Path, *args: str, code: int) -> str:
    result = run([FLOWBUS, *args], home, work)
    assert result.returncode == code, result.stdout + result.stderr
    return result.stderr


def test_flow_schedule_sets_and_clears_the_group_schedule(stack: tuple[Path, Path]) -> None:
    home, work = stack
    plain = flow_id(home, work, "plain")
    schedule = ["flow", "schedule", plain]

    out = flowbus(home, work, *schedule, "--cron", "0 6 * * *", "--timezone", "Europe/Paris", "--on").stdout
    assert out.strip() == "plain: schedule cron '0 6 * * *' in Europe/Paris, on"
    shown = flow_json(home, work, plain)
    assert shown["is_schedule_active"] is True
    [clock] = shown["schedule"]["clocks"]
    assert (clock["type"], clock["cron"], clock["timezone"]) == ("cron", "0 6 * * *", "Europe/Paris")

    out = flowbus(home, work, *schedule, "--interval", "1h", "--start-date", "2030-01-01T00:00:00Z").stdout
    assert out.strip() == "plain: schedule every 3600s from 2030-01-01T00:00:00+00:00, on"
    assert flowbus(home, work, *schedule, "--off").stdout.strip().endswith(", off")
    assert flowbus(home, work, *schedule, "--interval", "2s").stdout.strip() == "plain: schedule every 2s, off"
    assert flowbus(home, work, *schedule, "--clear").stdout.strip() == "plain: schedule none, off"
    assert flow_json(home, work, plain)["schedule"] is None


def test_flow_schedule_refuses_bad_options(stack: tuple[Path, Path]) -> None:
    home, work = stack
    plain = flow_id(home, work, "plain")
    schedule = ["flow", "schedule", plain]
    assert "only one of" in refused(home, work, *schedule, "--cron", "0 6 * * *", "--interval", "1h", code=2)
    assert "only one of" in refused(home, work, *schedule, "--interval", "1h", "--clear", code=2)
    assert "give --on or --off" in refused(home, work, *schedule, code=2)
    assert "not a duration" in refused(home, work, *schedule, "--interval", "often", code=2)
    assert "--timezone goes with --cron" in refused(home, work, *schedule, "--timezone", "UTC", code=2)
    assert "no timezone" in refused(
        home, work, *schedule, "--interval", "1h", "--start-date", "2030-01-01T00:00:00", code=2
    )
    # A required parameter no clock supplies: the schedule is set, the switch refused.
    needy = flow_id(home, work, "needy")
    error = refused(home, work, "flow", "schedule", needy, "--cron", "0 6 * * *", "--on", code=1)
    assert "VALIDATION_ERROR" in error, error
    assert flow_json(home, work, needy)["is_schedule_active"] is False


def test_late_runs_are_listed_and_counted(stack: tuple[Path, Path]) -> None:
    home, work = stack
    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    late = flowbus(home, work, "run", "--name", "plain", "--start-at", past, "-q").stdout.strip()
    future = flowbus(home, work, "run", "--name", "plain", "--start-in", "1h", "-q").stdout.strip()

    listed = flowbus(home, work, "get", "flow-runs", "--late").stdout
    assert late in listed, listed
    assert future not in listed, listed
    assert "Scheduled (LATE)" in listed
    everything = flowbus(home, work, "get", "flow-runs").stdout
    assert future in everything
    assert "late:            yes" in flowbus(home, work, "get", "flow-run", late).stdout
    assert "late:            no" in flowbus(home, work, "get", "flow-run", future).stdout
    assert "late runs:     1" in flowbus(home, work, "get", "scheduler").stdout
