"""The compatibility tier's harness (tests/compat/): `flowbus up`, and a Prefect 1.x user's shell pointed at it.

Every Prefect command runs as a subprocess exactly as a user types it
(``prefect run --name hello-flow --watch``, ``python hello_flow.py``), from
the pinned environment in ``.tools/prefect1`` (``make compat`` builds it from
tests/compat/prefect1-requirements.txt). Its environment holds only what a
Prefect 1.x user sets to switch backends: ``PREFECT__BACKEND=server``,
``PREFECT__SERVER__ENDPOINT`` (the gateway's GraphQL URL) and
``PREFECT__CLOUD__API_KEY`` (the admin key `flowbus up` wrote), plus a home
folder of its own and that environment first on ``PATH``; no ``FLOWBUS_*``
variable, no ``PYTHONPATH``.

Each command leads a process group of its own, has a time limit, and writes
to a file (never a pipe nobody reads, which would block a long-lived agent);
when it ends or times out, what is left of its group is killed. What flowbus
stored is read back through the flowbus client, the `flowbus` command, or the
gateway's GraphQL with the admin key.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx

from flowbus.client import Client
from flowbus.schemas.runs import FlowRunDetail
from flowbus.settings import API_KEY_FILE, ENDPOINT_FILE
from flowbus_services.up import free_port
from tests.helpers.processes import FLOWBUS, UP_READY, cli_env, home_settings

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[2]
PREFECT1_ENV = REPO / ".tools" / "prefect1"
PREFECT1_BIN = PREFECT1_ENV / "bin"
# Prefect's Local storage and its local agent both label with the host's name.
HOSTNAME = socket.gethostname()
# What `prefect agent local start` logs once it polls for runs.
AGENT_READY = "Waiting for flow runs..."
# How much of a process's output an assertion message shows (its end).
SHOWN_CHARS = 6000

# Variables of the developer's shell a Prefect user's shell would not have.
_DROPPED = {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP"}


def _tail(text: str) -> str:
    return (
        text
        if len(text) <= SHOWN_CHARS
        else f"[... {len(text) - SHOWN_CHARS} characters before]\n" + text[-SHOWN_CHARS:]
    )


@dataclass
class Finished:
    """A command that ended: what it printed and its exit code. ``str()`` is
    the whole story, for assertion messages."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str = ""

    @property
    def output(self) -> str:
        """Everything it printed, stdout then stderr."""
        return self.stdout + self.stderr

    def __str__(self) -> str:
        return (
            f"$ {' '.join(self.args)}  (exit {self.returncode})\n"
            f"--- stdout ---\n{_tail(self.stdout)}\n--- stderr ---\n{_tail(self.stderr)}"
        )


def _kill_group(pgid: int) -> None:
    """SIGKILL what is left of a process group this harness started (nothing if it is gone)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def run_command(args: Sequence[str], env: Mapping[str, str], cwd: Path, timeout: float) -> Finished:
    """Run a command to its end (at most ``timeout`` seconds) in a process group of its own."""
    proc = subprocess.Popen(
        list(args),
        env=dict(env),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc.pid)
        stdout, stderr = proc.communicate()
        raise AssertionError(f"did not end within {timeout:g} s:\n{Finished(list(args), -9, stdout, stderr)}") from None
    finally:
        _kill_group(proc.pid)  # e.g. a flow-run subprocess left behind
    return Finished(list(args), proc.returncode, stdout, stderr)


def poll(
    probe: Callable[[], T | None], what: str, timeout: float, context: Callable[[], str], interval: float = 0.2
) -> T:
    """Call ``probe`` every ``interval`` seconds until it returns something other
    than None (returned); after ``timeout`` seconds fail, naming ``what`` and
    showing ``context()`` (the output or state that tells why)."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not so after {timeout:g} s\n{context()}")
        time.sleep(interval)


class Background:
    """A long-running command (`flowbus up`, an agent, a watching `prefect run`)
    leading a process group of its own, its stdout and stderr in ``log``."""

    def __init__(
        self, args: Sequence[str], env: Mapping[str, str], cwd: Path, log: Path, stdin: str | None = None
    ) -> None:
        """``stdin``: what the user will type when asked (read from a file, so never blocking)."""
        self.args = list(args)
        self.log = log
        self.started = time.monotonic()
        log.parent.mkdir(parents=True, exist_ok=True)
        typed = log.with_suffix(".stdin")
        typed.write_text(stdin or "")
        with log.open("wb") as out, typed.open("rb") as keyboard:
            self.proc = subprocess.Popen(
                self.args,
                env=dict(env),
                cwd=cwd,
                stdin=keyboard,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def __str__(self) -> str:
        state = "running" if self.proc.poll() is None else f"exit {self.proc.returncode}"
        return f"$ {' '.join(self.args)}  ({state}; stdout and stderr)\n{_tail(self.output())}"

    def wait_for(self, needle: str, timeout: float) -> str:
        """Until ``needle`` appears in the output (fails at once if the process ends first); the output."""

        def probe() -> str | None:
            ended = self.proc.poll() is not None
            text = self.output()
            if needle in text:
                return text
            if ended:
                raise AssertionError(f"ended before printing {needle!r}:\n{self}")
            return None

        return poll(probe, f"{needle!r} printed", timeout, self.__str__, interval=0.1)

    def finish(self, timeout: float) -> Finished:
        """Its end, at most ``timeout`` seconds after it started: exit code and output."""
        try:
            self.proc.wait(max(0.0, self.started + timeout - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.stop(grace=0)
            raise AssertionError(f"did not end within {timeout:g} s of its start:\n{self}") from None
        finally:
            _kill_group(self.proc.pid)
        return Finished(self.args, self.proc.returncode, self.output(), "")

    def stop(self, sig: int = signal.SIGINT, grace: float = 15) -> None:
        """Signal the command (Ctrl-C by default), give it ``grace`` seconds, then
        kill whatever is left of its process group (its flow-run subprocesses)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(grace)
        _kill_group(self.proc.pid)
        self.proc.wait()


def prefect_env(home: Path, graphql_url: str, api_key: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A Prefect 1.x user's shell switched to flowbus: the three settings, its own home, the pinned env first."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLOWBUS_", "PREFECT__")) and k not in _DROPPED}
    env.update(
        {
            "HOME": str(home),
            "PATH": f"{PREFECT1_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "PREFECT__BACKEND": "server",
            "PREFECT__SERVER__ENDPOINT": graphql_url,
            "PREFECT__CLOUD__API_KEY": api_key,
            # Where the links it prints point: flowbus's web UI, at the gateway's root.
            "PREFECT__SERVER__UI__ENDPOINT": graphql_url.removesuffix("/graphql"),
            # Output reaches the log files as it is printed (it changes nothing else).
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra or {})
    return env


@dataclass
class PrefectUser:
    """A shell of a Prefect 1.x user: commands run in ``work`` with ``env``."""

    work: Path
    logs: Path
    env: dict[str, str]
    _started: list[Background] = field(default_factory=list)

    def write(self, name: str, source: str) -> Path:
        """A file in the work folder (a flow script)."""
        path = self.work / name
        path.write_text(source)
        return path

    def run(self, *args: str, timeout: float = 60) -> Finished:
        """``args`` as typed (``"prefect", "get", "flows"``), to its end."""
        return run_command(args, self.env, self.work, timeout)

    def start(self, name: str, *args: str, stdin: str | None = None) -> Background:
        """``args`` in the background, its output in ``logs/<name>.log``; stopped at teardown."""
        process = Background(args, self.env, self.work, self.logs / f"{name}.log", stdin)
        self._started.append(process)
        return process

    def stop_all(self) -> None:
        for process in reversed(self._started):
            process.stop(grace=5)


class Agent:
    """`prefect agent local start` in the background, and its poke endpoint.

    Prefect's agent backs off to one poll every 10 s when it finds nothing;
    ``--agent-address`` serves ``/api/poke``, Prefect's own way to wake it, which
    a thread here calls twice a second once the agent is ready, so that tests
    never wait on the backoff.
    """

    def __init__(self, user: PrefectUser, labels: Sequence[str]) -> None:
        self.address = f"http://127.0.0.1:{free_port()}"
        args = ["prefect", "agent", "local", "start", "--agent-address", self.address]
        for label in labels:
            args += ["--label", label]
        self.process = user.start("agent", *args)
        self.labels = [*labels, HOSTNAME]
        self._stop = threading.Event()
        self._poker = threading.Thread(target=self._poke_until_stopped, name="agent-poker", daemon=True)

    def wait_ready(self, timeout: float = 60) -> str:
        output = self.process.wait_for(AGENT_READY, timeout)
        self._poker.start()
        return output

    def _poke_until_stopped(self) -> None:
        while not self._stop.wait(0.5):
            try:
                with urllib.request.urlopen(f"{self.address}/api/poke", timeout=2):
                    pass
            except OSError:
                pass  # not serving yet, or stopping

    def stop(self) -> None:
        self._stop.set()
        if self._poker.is_alive():
            self._poker.join(timeout=5)
        self.process.stop(grace=10)


class GatewayError(AssertionError):
    """A GraphQL answer with ``errors`` where data was expected."""


@dataclass
class Flowbus:
    """`flowbus up` on ``home``: its gateway URL and admin key, and ways to read what it stored."""

    home: Path
    work: Path
    process: Background
    graphql_url: str
    api_key: str
    client: Client

    def cli(self, *args: str, timeout: float = 60) -> Finished:
        """``flowbus ARGS`` with this ``FLOWBUS_HOME`` (and no other FLOWBUS_ variable)."""
        return run_command([FLOWBUS, *args], cli_env(self.home), self.work, timeout)

    def graphql(self, query: str) -> dict[str, Any]:
        """``data`` of a query through the gateway with the admin key."""
        response = httpx.post(
            self.graphql_url,
            json={"query": query},
            headers={"Authorization": f"Bearer {self.api_key}"},
            timeout=30,
        )
        body: dict[str, Any] = response.json()
        if response.status_code != 200 or "errors" in body:
            raise GatewayError(f"{response.status_code} {json.dumps(body)[:2000]}\nquery: {query}")
        data: dict[str, Any] = body["data"]
        return data

    def flow_run(self, flow_run_id: str) -> FlowRunDetail:
        return self.client.get_flow_run(flow_run_id)

    def history(self, flow_run_id: str) -> str:
        """The run's state history and logs, as text for assertion messages."""
        try:
            entries = self.client.get_flow_run_history(flow_run_id, include_task_runs=True)
            logs = self.client.get_flow_run_logs(flow_run_id)
        except Exception as exc:  # only ever shown in a failure message
            return f"(no history of {flow_run_id}: {exc})"
        states = "\n".join(
            f"  {e.timestamp:%H:%M:%S.%f} {'flow' if e.task_run_id is None else e.task_run_id[:8]} "
            f"v{e.version} {e.type.value}: {e.message}"
            for e in entries
        )
        lines = "\n".join(f"  {r.timestamp:%H:%M:%S} {r.level} {r.name}: {r.message[:300]}" for r in logs)
        return f"history of flow run {flow_run_id}:\n{states}\nits logs:\n{lines}"

    def wait_for_state(
        self, flow_run_id: str, *types: str, timeout: float = 60, context: Callable[[], str] | None = None
    ) -> FlowRunDetail:
        """Until the run is in one of ``types`` (e.g. "Success"); its detail then."""

        def probe() -> FlowRunDetail | None:
            detail = self.flow_run(flow_run_id)
            return detail if detail.run.state.type.value in types else None

        def why() -> str:
            return self.history(flow_run_id) + (f"\n{context()}" if context else "")

        return poll(probe, f"flow run {flow_run_id} in {' or '.join(types)}", timeout, why, interval=0.25)

    def wait_for_log(self, flow_run_id: str, text: str, timeout: float = 30) -> list[str]:
        """Until a stored log of the run contains ``text``; the run's log messages then.

        Prefect ships a run's logs in batches (every ``cloud.logging_heartbeat``, and
        when its process exits, after its final state), so they may land after the run ended.
        """

        def probe() -> list[str] | None:
            messages = [r.message for r in self.client.get_flow_run_logs(flow_run_id)]
            return messages if any(text in m for m in messages) else None

        return poll(probe, f"a log of flow run {flow_run_id} with {text!r}", timeout, lambda: self.history(flow_run_id))

    def stop(self) -> None:
        try:
            self.client.close()
        finally:
            self.process.stop(grace=30)


def start_flowbus(home: Path, work: Path, logs: Path, env: Mapping[str, str] | None = None) -> Flowbus:
    """`flowbus up` on ``home`` until it serves; the gateway URL and key from its files.

    The gateway gets a free port of its own: left to take 4200, two `flowbus up`
    started at once on one machine may both bind it (SO_REUSEPORT) and serve each
    other's requests."""
    env = {"FLOWBUS_GATEWAY__PORT": str(free_port()), **(env or {})}
    process = Background([FLOWBUS, "up"], cli_env(home, env), work, logs / "flowbus-up.log")
    try:
        process.wait_for(UP_READY, timeout=90)
        endpoint = json.loads((home / ENDPOINT_FILE).read_text())
        api_key = (home / API_KEY_FILE).read_text().strip()
        client = Client(home_settings(home))
    except BaseException:
        process.stop()
        raise
    return Flowbus(home, work, process, endpoint["graphql_url"], api_key, client)


def assert_in_order(output: str, needles: Sequence[str], context: object) -> None:
    """Each needle appears in ``output``, each after the one before; else fail naming the
    first that is missing or out of place, and showing ``context``."""
    position = 0
    for needle in needles:
        found = output.find(needle, position)
        if found < 0:
            where = "is missing" if needle not in output else "comes too early"
            raise AssertionError(f"{needle!r} {where} (expected in this order: {list(needles)})\n{context}")
        position = found + len(needle)


def uuid_after(label: str, output: str) -> str:
    """The id printed after ``label`` (``└── ID: <id>``, ``└── UUID: <id>``)."""
    for line in output.splitlines():
        head, sep, rest = line.partition(label)
        if sep and head.strip() in {"", "└──"}:
            return rest.strip()
    raise AssertionError(f"no {label!r} line in:\n{_tail(output)}")
