"""The README's tutorial, "your first flow", in both of its forms, as a new user runs it.

Everything is a subprocess driven through the `flowbus` command and plain
`python` scripts, sharing only ``FLOWBUS_HOME`` (no URL is configured: the
CLI and SDK find the server through the endpoint file of `flowbus up`).
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.helpers.processes import (
    FLOWBUS,
    assert_in_order,
    cli_env,
    nats_is_listening,
    run,
    start,
    stop,
    ui_base,
    wait_for_line,
)
from tests.helpers.scripts import HELLO_FLOW

pytestmark = pytest.mark.e2e

HELLO_FLOW_V2 = """
import flowbus
from flowbus import task, Flow

@task
def hello_task():
    logger = flowbus.context.get("logger")
    logger.info("Hello, Cloud!")

flow = Flow("hello-flow-2", tasks=[hello_task])
flow.register(project_name="tutorial", idempotency_key=flow.serialized_hash())
flow.run_agent()
"""

FAILING_FLOW = """
from flowbus import task, Flow

@task
def broken():
    raise ValueError("this flow fails")

flow = Flow("failing-flow", tasks=[broken])
flow.register(project_name="tutorial", no_url=True)
"""


@pytest.fixture
def workdir(workdir: Path) -> Path:
    """The tutorial's three scripts in the work folder."""
    (workdir / "hello_flow.py").write_text(textwrap.dedent(HELLO_FLOW))
    (workdir / "hello_flow_2.py").write_text(textwrap.dedent(HELLO_FLOW_V2))
    (workdir / "failing_flow.py").write_text(textwrap.dedent(FAILING_FLOW))
    return workdir


def create_project_without_a_server(env: dict[str, str], workdir: Path) -> str:
    """`flowbus create project` where no server answers: it fails at once with one line (stderr)."""
    result = subprocess.run(
        [FLOWBUS, "create", "project", "tutorial"],
        check=False,
        env=env,
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_no_server_fails_at_once_with_the_url(home: Path, workdir: Path) -> None:
    from flowbus_services.up import free_port

    url = f"nats://127.0.0.1:{free_port()}"
    assert url in create_project_without_a_server(cli_env(home, {"FLOWBUS_NATS_URL": url}), workdir)


def test_no_endpoint_file_fails_at_once_saying_no_server_runs(tmp_path: Path, workdir: Path) -> None:
    """No FLOWBUS_NATS_URL and no `flowbus up` in the home: no port is guessed, and no wait
    (an hour's wait allowed for the endpoint file would outlast the command's 30 s timeout)."""
    env = cli_env(tmp_path / "never-started", {"FLOWBUS_NATS__ENDPOINT_WAIT_SECONDS": "3600"})
    line = create_project_without_a_server(env, workdir)
    assert "no flowbus server is running" in line
    assert "`flowbus up`" in line


def test_status_without_a_server_says_so_at_once(tmp_path: Path, workdir: Path) -> None:
    env = cli_env(tmp_path / "never-started", {"FLOWBUS_NATS__ENDPOINT_WAIT_SECONDS": "3600"})
    result = subprocess.run(
        [FLOWBUS, "status"], check=False, env=env, cwd=workdir, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 1
    assert result.stderr.startswith("Error: no flowbus server is running"), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_first_flow_tutorial(server: subprocess.Popen[str], home: Path, workdir: Path) -> None:
    endpoint = json.loads((home / "endpoint.json").read_text())
    assert not endpoint["nats_url"].endswith(":4222"), "must never take the system NATS port"

    # Create the project; a duplicate is an error, --skip-if-exists is not.
    created = run([FLOWBUS, "create", "project", "tutorial"], home, workdir)
    assert created.returncode == 0, created.stderr
    duplicate = run([FLOWBUS, "create", "project", "tutorial"], home, workdir)
    assert duplicate.returncode == 1
    assert "already exists" in duplicate.stderr
    assert run([FLOWBUS, "create", "project", "tutorial", "--skip-if-exists"], home, workdir).returncode == 0

    # Register by running the script.
    registered = run([sys.executable, "hello_flow.py"], home, workdir)
    assert registered.returncode == 0, registered.stderr
    assert "Project: tutorial" in registered.stdout
    assert "Version: 1" in registered.stdout
    assert f"Labels: ['{socket.gethostname()}']" in registered.stdout
    flow_id = next(line.split("ID: ")[1] for line in registered.stdout.splitlines() if "ID: " in line).strip()
    # The flow's page on the gateway `flowbus up` serves, as Prefect's flow.register() prints it.
    assert registered.stdout.splitlines()[-1] == f"Flow URL: {ui_base(home)}/flow/{flow_id}", registered.stdout

    # A local agent waits for runs.
    agent = start([FLOWBUS, "agent", "local", "start"], home, workdir)
    try:
        wait_for_line(agent, "waiting for flow runs")

        # Run and watch: states and the flow's log line, live; exit 0.
        watched = run([FLOWBUS, "run", "--name", "hello-flow", "--project", "tutorial", "--watch"], home, workdir)
        assert watched.returncode == 0, watched.stdout + watched.stderr
        out = watched.stdout
        for needle in (
            "Entered state Scheduled",
            "Entered state Submitted",
            "Entered state Running",
            "Entered state Success",
            "Hello, Cloud!",
            "Submitted for execution: PID:",
        ):
            assert needle in out, out
        assert_in_order(out, ["Entered state Submitted", "Hello, Cloud!", "Entered state Success"])
        assert_in_order(out, [f"Flow run URL: {ui_base(home)}/flow-run/", "Entered state Scheduled"])

        # A failing flow ends with exit code 1.
        failing = run([sys.executable, "failing_flow.py"], home, workdir)
        assert failing.returncode == 0, failing.stderr
        assert "Project: tutorial" in failing.stdout
        assert "URL" not in failing.stdout  # flow.register(no_url=True)
        failed = run([FLOWBUS, "run", "--name", "failing-flow", "--watch"], home, workdir)
        assert failed.returncode == 1, failed.stdout + failed.stderr
        assert "Entered state Failed" in failed.stdout

        # The Python client creates runs too.
        code = f"from flowbus import Client; print(Client().create_flow_run(flow_id={flow_id!r}))"
        by_client = run([sys.executable, "-c", code], home, workdir)
        assert by_client.returncode == 0, by_client.stderr
        assert len(by_client.stdout.strip()) == 36
    finally:
        assert stop(agent) == 0


def test_second_variant_registers_idempotently_and_runs_its_own_agent(
    server: subprocess.Popen[str], home: Path, workdir: Path
) -> None:
    assert run([FLOWBUS, "create", "project", "tutorial", "--skip-if-exists"], home, workdir).returncode == 0
    script_agent = start([sys.executable, "hello_flow_2.py"], home, workdir)
    try:
        first = wait_for_line(script_agent, "waiting for flow runs")
        assert any("Version: 1" in line for line in first)
        watched = run([FLOWBUS, "run", "--name", "hello-flow-2", "--watch"], home, workdir)
        assert watched.returncode == 0, watched.stdout + watched.stderr
        assert "Hello, Cloud!" in watched.stdout
    finally:
        stop(script_agent)
    # Unchanged flow, same key: no new version.
    again = start([sys.executable, "hello_flow_2.py"], home, workdir)
    try:
        lines = wait_for_line(again, "waiting for flow runs")
        assert any("skipped: unchanged" in line for line in lines), lines
        assert any("Version: 1" in line for line in lines), lines
    finally:
        stop(again)


def test_up_stops_cleanly_and_reuses_its_data(home: Path, workdir: Path) -> None:
    first = start([FLOWBUS, "up"], home, workdir)
    wait_for_line(first, "Press Ctrl-C to stop.")
    url = json.loads((home / "endpoint.json").read_text())["nats_url"]
    assert run([FLOWBUS, "create", "project", "kept"], home, workdir).returncode == 0
    assert stop(first, signal.SIGTERM) == 0
    assert not (home / "endpoint.json").exists()
    assert not nats_is_listening(url), "the NATS server must stop with flowbus up"

    second = start([FLOWBUS, "up"], home, workdir)
    try:
        wait_for_line(second, "Press Ctrl-C to stop.")
        projects = run([FLOWBUS, "get", "projects"], home, workdir)
        assert "kept" in projects.stdout
        duplicate = run([FLOWBUS, "up"], home, workdir, timeout=60)
        assert duplicate.returncode == 1
        assert "already running" in duplicate.stderr
    finally:
        assert stop(second) == 0
