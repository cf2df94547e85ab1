"""The browser tier's shared pieces: where Chromium is and how it starts, the
flows the tier registers, a running stack to ask things of, and logging in."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from playwright.sync_api import Page

from tests.helpers.processes import flowbus, run

CHROMIUM = os.environ.get("FLOWBUS_CHROMIUM", "/usr/bin/chromium")
# Headless, as root, on a machine whose network is closed: without the
# background-networking flags Chromium keeps trying to reach Google's hosts.
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# How long a page may take to show what a test waits for: a run's whole life
# on a loaded 2-core machine, with room to spare. Only an upper bound.
UI_TIMEOUT_MS = 30_000

# The tutorial flow, held in Running until the test creates its gate file, so a
# page can watch it move. The wait is the flow's own behaviour, bounded.
FLOWS = """
import contextlib
import os
import signal
import time

import flowbus
from flowbus import CronClock, Flow, Parameter, Schedule, task


@task
def wait_for_gate(gate):
    deadline = time.monotonic() + 120
    while gate and not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.02)
    return gate


@task
def say_hello(name, _gate):
    flowbus.context.get("logger").info("Hello, %s!", name)


@task
def explode():
    raise RuntimeError("kaboom: the flow failed on purpose")


with Flow("hello-flow") as hello:
    name = Parameter("name", default="World")
    gate = Parameter("gate", default="")
    say_hello(name, wait_for_gate(gate))

with Flow("failing-flow") as failing:
    explode()

with Flow("nightly", schedule=Schedule([CronClock("0 3 * * *")])) as nightly:
    wait_for_gate(Parameter("gate", default=""))

hello.register(project_name="tutorial")
failing.register(project_name="tutorial")
nightly.register(project_name="tutorial")
"""


def drain(proc: subprocess.Popen[str], lines: list[str]) -> None:
    """Keep reading a child's output so that it never blocks on a full pipe."""
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)


@dataclass
class Stack:
    """`flowbus up` with the tutorial project, its flows and a local agent."""

    base: str  # the web UI, e.g. http://127.0.0.1:PORT
    home: Path
    work: Path
    key: str  # the first admin key
    outputs: dict[str, list[str]] = field(default_factory=dict)

    def graphql(self, query: str, variables: dict[str, Any] | None = None, key: str | None = None) -> dict[str, Any]:
        """One GraphQL request; the whole JSON answer (data and errors)."""
        headers = {"Authorization": f"Bearer {key or self.key}"}
        response = httpx.post(f"{self.base}/graphql", json={"query": query, "variables": variables}, headers=headers)
        body: dict[str, Any] = response.json()
        return body

    def data(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        body = self.graphql(query, variables)
        assert "errors" not in body, body
        result: dict[str, Any] = body["data"]
        return result

    def flow_id(self, name: str) -> str:
        flows = self.data(
            "query($n: String!) { flow(where: {name: {_eq: $n}, archived: {_eq: false}}) { id } }", {"n": name}
        )
        return str(flows["flow"][0]["id"])

    def register(self, source: str, file_name: str) -> subprocess.CompletedProcess[str]:
        (self.work / file_name).write_text(textwrap.dedent(source))
        result = run([sys.executable, file_name], self.home, self.work)
        assert result.returncode == 0, result.stdout + result.stderr
        return result

    def create_key(self, name: str, role: str) -> str:
        return flowbus(self.home, self.work, "create", "api-key", name, "--role", role).stdout.strip()


def login(page: Page, key: str, path: str = "/") -> None:
    """Open ``path``, which asks for a key first, and log in with ``key``."""
    page.goto(path)
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Log in").click()
