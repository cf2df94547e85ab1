"""The `flowbus` command and flow scripts as subprocesses, as a user runs them.

Each process gets a clean environment: no ``FLOWBUS_*`` variable of the
developer's, ``FLOWBUS_HOME`` set to the test's home (where `flowbus up`
writes its endpoint file), plus what the test adds.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from flowbus.settings import Settings
from flowbus_services.up import free_port
from tests.helpers.waiting import wait_until

BIN = Path(sys.executable).parent
FLOWBUS = str(BIN / "flowbus")
UP_READY = "Press Ctrl-C to stop."  # what `flowbus up` prints once it serves


# Each home's gateway and embedded NATS ports, chosen once: left to take 4200 and 4322, two
# `flowbus up` started at once by parallel test workers both find them free and one fails to
# bind them. Kept per home, so a restart comes back on the same ports.
_PORTS: dict[Path, dict[str, str]] = {}


def cli_env(home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWBUS_")}
    env["FLOWBUS_HOME"] = str(home)
    env.update(
        _PORTS.setdefault(
            home, {"FLOWBUS_GATEWAY__PORT": str(free_port()), "FLOWBUS_EMBEDDED_NATS__PORT": str(free_port())}
        )
    )
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def ui_base(home: Path) -> str:
    """The base of the web UI's links for a home's `flowbus up`: the gateway it serves (the
    GraphQL URL it printed and wrote to its endpoint file, less ``/graphql``)."""
    graphql_url = str(json.loads((home / "endpoint.json").read_text())["graphql_url"])
    assert graphql_url.startswith("http://"), graphql_url
    assert graphql_url.endswith("/graphql"), graphql_url
    return graphql_url.removesuffix("/graphql")


def home_settings(home: Path) -> Settings:
    """The settings of a process started with only ``FLOWBUS_HOME=home`` (``cli_env``): its
    credentials are the home's, not the session's that this test process has (tests/conftest.py)."""
    return Settings(home=home, auth_dir=home / "auth")


def run(
    args: list[str], home: Path, cwd: Path, timeout: float = 120, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, env=cli_env(home, env), cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )


def flowbus(home: Path, work: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`flowbus ARGS`, which must succeed."""
    result = run([FLOWBUS, *args], home, work)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def start(
    args: list[str], home: Path, cwd: Path, env: Mapping[str, str] | None = None, *, new_session: bool = False
) -> subprocess.Popen[str]:
    """``new_session``: the process leads a process group of its own, which
    its children (an agent's fork server and flow processes) join, so a test
    can signal exactly what it started with ``os.killpg(proc.pid, ...)``."""
    return subprocess.Popen(
        args,
        env=cli_env(home, env),
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=new_session,
    )


def process_group_members(pgid: int) -> list[int]:
    """The live (not zombie) processes of a process group, from /proc."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # ended meanwhile
        # Fields after the parenthesised command name: state, ppid, pgrp, ...
        state, _ppid, pgrp = stat.rsplit(")", 1)[1].split()[:3]
        if int(pgrp) == pgid and state != "Z":
            members.append(int(entry.name))
    return members


def children_of(pid: int) -> dict[int, str]:
    """The live (not zombie) child processes of ``pid`` and their command lines, from /proc."""
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue  # ended meanwhile
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if int(ppid) == pid and state != "Z":
            found[int(entry.name)] = cmdline
    return found


def is_gone(pid: int) -> bool:
    """Whether ``pid`` has ended and been reaped by its parent (no zombie left)."""
    return not Path(f"/proc/{pid}").exists()


def nats_is_listening(url: str) -> bool:
    host, port = url.removeprefix("nats://").split(":")
    try:
        with socket.create_connection((host, int(port)), timeout=0.5):
            return True
    except OSError:
        return False


def stop(proc: subprocess.Popen[str], sig: int = signal.SIGINT) -> int:
    """Signal the process (Ctrl-C by default) unless it has ended; its exit code."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            return proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
    return proc.returncode


def wait_for_line(proc: subprocess.Popen[str], needle: str, timeout: float = 60) -> list[str]:
    """Read the process's output until a line contains ``needle`` (the event we wait for); the lines read."""
    assert proc.stdout is not None
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                break
            continue
        seen.append(line)
        if needle in line:
            return seen
    raise AssertionError(f"{needle!r} never appeared; output so far:\n{''.join(seen)}")


def assert_in_order(output: str, needles: Sequence[str]) -> None:
    """Each needle appears in ``output``, each after the one before."""
    positions = [output.index(needle) for needle in needles]
    assert positions == sorted(positions), output


@contextmanager
def serving(
    home: Path, work: Path, project: str, scripts: Sequence[str] = (), env: Mapping[str, str] | None = None
) -> Iterator[subprocess.Popen[str]]:
    """`flowbus up` on ``home``, with ``project`` created and each script in ``work`` registered into it."""
    proc = start([FLOWBUS, "up"], home, work, env)
    try:
        wait_for_line(proc, UP_READY)
        commands = [["create", "project", project]]
        commands += [["register", "--project", project, "-p", str(work / script)] for script in scripts]
        for command in commands:
            result = run([FLOWBUS, *command], home, work, env=env)
            assert result.returncode == 0, result.stdout + result.stderr
        yield proc
    finally:
        stop(proc)


@contextmanager
def serving_scripts(
    root: Path, project: str, scripts: Mapping[str, str], env: Mapping[str, str] | None = None
) -> Iterator[tuple[Path, Path]]:
    """`flowbus up` on ``root/home``, with each script (by file name) written to
    ``root/work`` and registered into ``project``; the home and work folders."""
    home, work = root / "home", root / "work"
    work.mkdir()
    for name, source in scripts.items():
        (work / name).write_text(textwrap.dedent(source))
    with serving(home, work, project, list(scripts), env):
        yield home, work


def http_get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_ready(url: str, proc: subprocess.Popen[str], timeout: float = 60) -> None:
    """Until ``url`` (a service's /readyz) answers 200; fails at once if the process exits."""

    def status() -> int:
        if proc.poll() is not None:
            raise AssertionError(f"service exited early:\n{proc.stdout.read() if proc.stdout else ''}")
        return http_get(url)[0]

    wait_until(status, f"{url} answers 200", until=lambda code: code == 200, timeout=timeout, ignoring=(OSError,))
