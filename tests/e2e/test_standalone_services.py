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
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from flowbus_services.registry import SERVICE_MODULES
from flowbus_services.up import NatsServer, free_port
from tests.e2e.test_tutorial import FLOWBUS, HELLO_FLOW, _env, stop, wait_for_line

pytestmark = pytest.mark.e2e


def http_get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_ready(url: str, proc: subprocess.Popen[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"service exited early:\n{proc.stdout.read() if proc.stdout else ''}")
        try:
            if http_get(url)[0] == 200:
                return
        except OSError:
            pass  # not listening yet
        time.sleep(0.1)
    raise AssertionError(f"{url} never became ready")


@pytest.fixture
def separate_services(tmp_path: Path) -> Iterator[tuple[dict[str, str], dict[str, int]]]:
    server = NatsServer(tmp_path / "js")
    server.start()
    asyncio.run(server.wait_ready())
    env = {
        **_env(tmp_path / "home"),
        "FLOWBUS_NATS_URL": server.url,
        "FLOWBUS_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}",
    }
    subprocess.run([FLOWBUS, "db", "upgrade"], env=env, check=True, capture_output=True, timeout=60)
    procs: list[subprocess.Popen[str]] = []
    ports: dict[str, int] = {}
    try:
        for name in SERVICE_MODULES:
            ports[name] = free_port()
            procs.append(
                subprocess.Popen(
                    [FLOWBUS, "service", "run", name, "--port", str(ports[name])],
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
            )
        for name, proc in zip(SERVICE_MODULES, procs, strict=True):
            wait_ready(f"http://127.0.0.1:{ports[name]}/readyz", proc)
        yield env, ports
    finally:
        for proc in procs:
            stop(proc)
        server.stop()


def test_services_run_alone_with_health_and_asyncapi(
    separate_services: tuple[dict[str, str], dict[str, int]], tmp_path: Path
) -> None:
    env, ports = separate_services
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
        return subprocess.run(list(args), env=env, cwd=work, capture_output=True, text=True, timeout=120, check=False)

    assert cli(FLOWBUS, "create", "project", "tutorial").returncode == 0
    registered = cli(str(Path(FLOWBUS).with_name("python")), "hello_flow.py")
    assert registered.returncode == 0, registered.stderr
    agent = subprocess.Popen(
        [FLOWBUS, "agent", "local", "start"],
        env=env,
        cwd=work,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for_line(agent, "waiting for flow runs")
        watched = cli(FLOWBUS, "run", "--name", "hello-flow", "--watch")
        assert watched.returncode == 0, watched.stdout + watched.stderr
        assert "Hello, Cloud!" in watched.stdout
        assert "Entered state Success" in watched.stdout
    finally:
        assert stop(agent) == 0
