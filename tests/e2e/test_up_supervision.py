"""`flowbus up` keeps its processes running: a service process or its nats-server that dies is restarted.

Real processes only: the test starts `flowbus up`, finds the processes it
forked or started as its children (/proc), and SIGKILLs one of them, as a
crash or the kernel's OOM killer would; then it awaits what `flowbus up`
prints and checks the stack answers commands again. One that dies too often
stops everything with an error (docs/architecture.md, "Supervision").
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

from tests.helpers.processes import (
    FLOWBUS,
    UP_READY,
    children_of,
    flowbus,
    http_get,
    is_gone,
    nats_is_listening,
    start,
    stop,
    wait_for_line,
)

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc"),
]

RESTARTED = re.compile(r"(service process \S+|nats-server) restarted \(pid (\d+)\)")


def service_processes(up: subprocess.Popen[str]) -> list[int]:
    """The service processes `flowbus up` forked, in the order it forked them (their pids rise)."""
    return sorted(pid for pid, cmd in children_of(up.pid).items() if "nats-server" not in cmd)


def nats_pid(up: subprocess.Popen[str]) -> int:
    (pid,) = [pid for pid, cmd in children_of(up.pid).items() if "nats-server" in cmd]
    return pid


def restarted_pid(lines: list[str]) -> int:
    """The pid of the process restarted last, from the lines `flowbus up` printed."""
    found = [match for line in lines if (match := RESTARTED.search(line))]
    assert found, lines
    return int(found[-1].group(2))


def stop_and_check_all_gone(up: subprocess.Popen[str]) -> None:
    """SIGTERM stops `flowbus up` with code 0, and every process it started has ended and been reaped."""
    started = list(children_of(up.pid))
    assert stop(up, signal.SIGTERM) == 0
    assert [pid for pid in started if not is_gone(pid)] == []


def test_up_runs_services_in_processes_and_restarts_one_that_dies(home: Path, workdir: Path) -> None:
    up = start([FLOWBUS, "up"], home, workdir)
    try:
        lines = wait_for_line(up, UP_READY)
        services = next(line for line in lines if "services:" in line)
        assert "run_creation, state, registration+heartbeat+scheduler" in services
        workers = service_processes(up)
        assert len(workers) == 3, workers
        flowbus(home, workdir, "create", "project", "before")
        # Each process's /metrics, on a port `flowbus up` bound for it.
        listed = json.loads((home / "endpoint.json").read_text())["metrics"]
        assert [entry["services"] for entry in listed] == [
            ["run_creation"],
            ["state"],
            ["registration", "heartbeat", "scheduler", "gateway"],
        ]
        metrics_url = listed[0]["url"]
        connected = 'flowbus_service_nats_connected{service="run_creation"} 1.0'
        assert connected in http_get(metrics_url)[1].decode()

        victim = workers[0]  # run_creation's
        os.kill(victim, signal.SIGKILL)
        died = wait_for_line(up, "was killed by SIGKILL")
        assert "service process run_creation was killed by SIGKILL; restarting it in 0.5 s" in died[-1], died
        back = wait_for_line(up, "service process run_creation is ready again")
        replacement = restarted_pid(back)
        assert is_gone(victim), "the dead process is reaped"
        assert service_processes(up) == sorted([*workers[1:], replacement])

        flowbus(home, workdir, "create", "project", "after")  # served by the new run_creation process
        assert up.poll() is None
        # The new process serves /metrics on the same port: a scraper's target does not move.
        status, body = http_get(metrics_url)
        assert status == 200
        assert connected in body.decode()
    finally:
        stop_and_check_all_gone(up)
    assert not (home / "endpoint.json").exists()


def test_up_restarts_its_nats_server_on_the_same_port_with_the_same_data(home: Path, workdir: Path) -> None:
    up = start([FLOWBUS, "up"], home, workdir)
    try:
        wait_for_line(up, UP_READY)
        endpoint = json.loads((home / "endpoint.json").read_text())
        victim = nats_pid(up)
        assert endpoint["nats_pid"] == victim
        flowbus(home, workdir, "create", "project", "kept")

        os.kill(victim, signal.SIGKILL)
        died = wait_for_line(up, "nats-server was killed by SIGKILL")
        assert "restarting it in 0.5 s" in died[-1], died
        back = wait_for_line(up, "nats-server is ready again")
        replacement = restarted_pid(back)
        assert is_gone(victim), "the dead nats-server is reaped"
        assert nats_pid(up) == replacement
        again = json.loads((home / "endpoint.json").read_text())
        assert again["nats_url"] == endpoint["nats_url"]  # the same port: clients keep their URL
        assert again["nats_pid"] == replacement  # `flowbus auth` signals the live server

        # The services reconnect by themselves; the JetStream store and database are the same.
        assert "kept" in flowbus(home, workdir, "get", "projects").stdout
        flowbus(home, workdir, "create", "project", "after")
        assert up.poll() is None
    finally:
        stop_and_check_all_gone(up)
    assert not nats_is_listening(endpoint["nats_url"]), "the NATS server stops with flowbus up"


def test_up_stops_with_an_error_when_a_process_dies_too_often(home: Path, workdir: Path) -> None:
    up = start([FLOWBUS, "up"], home, workdir, env={"FLOWBUS_UP__RESTART_BURST": "3"})
    try:
        wait_for_line(up, UP_READY)
        url = json.loads((home / "endpoint.json").read_text())["nats_url"]
        started = list(children_of(up.pid))
        victim = service_processes(up)[1]  # state's
        seen: list[str] = []
        for death in range(1, 4):
            os.kill(victim, signal.SIGKILL)
            if death < 3:
                seen += wait_for_line(up, "service process state restarted")
                victim = restarted_pid(seen)
        assert up.wait(timeout=60) == 1
        assert up.stdout is not None
        output = "".join(seen) + up.stdout.read()
        assert "restarting it in 1.0 s" in output, output  # the delay doubles
        assert (
            "service process state was killed by SIGKILL: it died 3 times within 60 s "
            "(up.restart_burst is 3), so flowbus stops instead of restarting it"
        ) in output, output
        assert not (home / "endpoint.json").exists()
        assert not nats_is_listening(url), "the NATS server stops with flowbus up"
        assert [pid for pid in [*started, victim] if not is_gone(pid)] == []
    finally:
        stop(up)


def test_a_stop_signal_during_a_restart_stops_everything_cleanly(home: Path, workdir: Path) -> None:
    up = start([FLOWBUS, "up"], home, workdir)
    try:
        wait_for_line(up, UP_READY)
        started = list(children_of(up.pid))
        os.kill(service_processes(up)[2], signal.SIGKILL)  # the shared process
        wait_for_line(up, "scheduler+gateway was killed by SIGKILL; restarting it in")
        up.send_signal(signal.SIGTERM)  # before its restart (due in 0.5 s) or while it starts
        assert up.wait(timeout=60) == 0
        assert up.stdout is not None
        output = up.stdout.read()
        assert "flowbus stopped." in output, output
        if RESTARTED.search(output):  # the restart came first: its process is stopped too
            started.append(restarted_pid(output.splitlines()))
        assert [pid for pid in started if not is_gone(pid)] == []
        assert not (home / "endpoint.json").exists()
    finally:
        stop(up)
