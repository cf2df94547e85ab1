"""Each service as its own process (`flowbus service run NAME`), as in production.

A real nats-server and a shared SQLite file; five service processes with
their HTTP health endpoints; the CLI and an agent work against them exactly
as against `flowbus up`.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from flowbus.settings import Settings
from flowbus_services.registry import SERVICE_MODULES
from flowbus_services.up import NatsServer, free_port
from tests.helpers.bus import bus_env
from tests.helpers.processes import FLOWBUS, cli_env, http_get, run, start, stop, wait_for_line, wait_ready
from tests.helpers.scripts import HELLO_FLOW

pytestmark = pytest.mark.e2e


@pytest.fixture
def separate_services(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str], dict[str, int]]]:
    """A nats-server, a migrated SQLite file and one process per service; the
    home, the variables that point at the server and the file, and each service's port."""
    server = NatsServer(tmp_path / "js", Settings().auth_path())
    server.start()
    asyncio.run(server.wait_ready())
    home = tmp_path / "home"
    urls = {
        **bus_env(server.url),
        "FLOWBUS_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}",
    }
    subprocess.run([FLOWBUS, "db", "upgrade"], env=cli_env(home, urls), check=True, capture_output=True, timeout=60)
    procs: list[subprocess.Popen[str]] = []
    ports: dict[str, int] = {}
    try:
        for name in SERVICE_MODULES:
            ports[name] = free_port()
            procs.append(start([FLOWBUS, "service", "run", name, "--port", str(ports[name])], home, tmp_path, urls))
        for name, proc in zip(SERVICE_MODULES, procs, strict=True):
            wait_ready(f"http://127.0.0.1:{ports[name]}/readyz", proc)
        yield home, urls, ports
    finally:
        for proc in procs:
            stop(proc)
        server.stop()


def test_services_run_alone_with_health_and_asyncapi(
    separate_services: tuple[Path, dict[str, str], dict[str, int]], tmp_path: Path
) -> None:
    home, urls, ports = separate_services
    for name, port in ports.items():
        status, body = http_get(f"http://127.0.0.1:{port}/healthz")
        assert status == 200, name
        assert json.loads(body)["status"] == "ok"
        status, body = http_get(f"http://127.0.0.1:{port}/docs/asyncapi")
        assert status == 200, name
        assert b"asyncapi" in body.lower()

    work = tmp_path / "work"
    work.mkdir()
    (work / "hello_flow.py").write_text(textwrap.dedent(HELLO_FLOW))

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return run(list(args), home, work, env=urls)

    assert cli(FLOWBUS, "create", "project", "tutorial").returncode == 0
    registered = cli(str(Path(FLOWBUS).with_name("python")), "hello_flow.py")
    assert registered.returncode == 0, registered.stderr
    agent = start([FLOWBUS, "agent", "local", "start"], home, work, urls)
    try:
        wait_for_line(agent, "waiting for flow runs")
        watched = cli(FLOWBUS, "run", "--name", "hello-flow", "--watch")
        assert watched.returncode == 0, watched.stdout + watched.stderr
        assert "Hello, Cloud!" in watched.stdout
        assert "Entered state Success" in watched.stdout
    finally:
        assert stop(agent) == 0
