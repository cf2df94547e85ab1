"""The Zombie Killer end to end: a `flowbus run --execute` process killed with
SIGKILL (no chance to report anything) leaves its run Running; the heartbeat
service notices the silence and fails it.

Its own `flowbus up`, since the heartbeat interval and the killer's pass
interval are settings of both the server and the runner process.
"""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.processes import FLOWBUS, run, serving_scripts, start, stop, wait_for_line
from tests.helpers.scripts import BLOCKING_MESSAGE, blocking_flow

pytestmark = pytest.mark.e2e

FLOWS = blocking_flow("zombie-sleepy")

# A zombie after 4 missed beats of 0.5 s; the killer passes every 0.2 s.
TIGHT = {"FLOWBUS_HEARTBEAT_INTERVAL": "0.5", "FLOWBUS_HEARTBEAT__ZOMBIE_CHECK_INTERVAL_SECONDS": "0.2"}
MESSAGE = "No heartbeat detected from the flow run; marking the run as failed."


def _popen(args: list[str], home: Path, cwd: Path) -> subprocess.Popen[str]:
    return start(args, home, cwd, TIGHT)


def _run(
    args: list[str], home: Path, cwd: Path, timeout: float = 120, expect: int = 0
) -> subprocess.CompletedProcess[str]:
    result = run(args, home, cwd, timeout, TIGHT)
    assert result.returncode == expect, result.stdout + result.stderr
    return result


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    with serving_scripts(tmp_path, "zombies", {"zombie_flows.py": FLOWS}, TIGHT) as folders:
        yield folders


def test_a_sigkilled_execute_process_leaves_a_zombie_that_is_failed(stack: tuple[Path, Path]) -> None:
    home, work = stack
    proc = _popen([FLOWBUS, "run", "--project", "zombies", "--execute", "--name", "zombie-sleepy"], home, work)
    try:
        seen = wait_for_line(proc, BLOCKING_MESSAGE)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        stop(proc)
    first = seen[0]
    assert first.startswith("Flow run "), "".join(seen)
    run_id = first.strip().rsplit(": ", 1)[1]
    # `watch` returns once the run has finished (exit 1: it failed): the killer's Failed, awaited.
    watched = _run([FLOWBUS, "watch", run_id], home, work, timeout=60, expect=1).stdout
    assert f"Entered state Failed: {MESSAGE}" in watched
    assert "ERROR   | flowbus.zombie_killer | No heartbeat detected from the remote task" in watched
    detail = json.loads(_run([FLOWBUS, "get", "flow-run", run_id, "--json"], home, work).stdout)
    assert detail["run"]["state"]["type"] == "Failed"
    assert detail["run"]["state"]["message"] == MESSAGE
    assert {t["state"]["type"] for t in detail["task_runs"]} == {"Failed"}
