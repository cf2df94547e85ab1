"""Real processes for the chaos suite: `flowbus up`, agents, a load generator, and the faults.

``ChaosStack`` is one `flowbus up` with its own ``FLOWBUS_HOME`` and a
fixed NATS port (``FLOWBUS_EMBEDDED_NATS__PORT``, so a restart by hand comes
back where the agents reconnect), in a process group of its own; its output
is read as it comes (``OutputLog``), so that a probe awaits what the
supervisor says ("... is ready again"). ``ChaosAgent`` is a `flowbus agent
local start` in a process group of its own (the agent, its fork server and
its flow processes), which a probe can kill whole. ``generate_load`` creates
runs at a steady rate, each with its own idempotency key, resending with the
same key after any error. Only processes started here are ever signalled.

Talks to NATS through the client only (``flowbus.cmd.run_creation.*`` and
queries, with the home's credentials); reads the home's files.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from flowbus.client import CLIENT_ERRORS, AsyncClient
from flowbus.settings import NatsTuning, Settings
from flowbus_services.up import free_port
from tests.helpers.chaos import LEDGER_FLOW, Load, chaos_scale
from tests.helpers.processes import FLOWBUS, UP_READY, children_of, process_group_members, start
from tests.helpers.scripts import register_script, write_script

# Heartbeat settings short enough for a probe to see the Zombie Killer, the
# stuck-claims check and Lazarus act within seconds; long enough that a busy
# 2-core machine never misses a beat by that much (a beat every 1.5 s, judged
# after 4 missed: 6 s). Claims stuck 8 s are requeued: far more than a live
# agent takes from its claim to Running here (well under a second).
HEARTBEAT_INTERVAL = 1.5
ZOMBIE_MISSED_BEATS = 4
ZOMBIE_THRESHOLD = HEARTBEAT_INTERVAL * ZOMBIE_MISSED_BEATS
SUBMITTED_TIMEOUT = 8.0
CHAOS_ENV = {
    "FLOWBUS_HEARTBEAT_INTERVAL": str(HEARTBEAT_INTERVAL),
    "FLOWBUS_HEARTBEAT__ZOMBIE_MISSED_BEATS": str(ZOMBIE_MISSED_BEATS),
    "FLOWBUS_HEARTBEAT__ZOMBIE_CHECK_INTERVAL_SECONDS": "1",
    "FLOWBUS_HEARTBEAT__SUBMITTED_TIMEOUT_SECONDS": str(SUBMITTED_TIMEOUT),
    "FLOWBUS_LAZARUS__INTERVAL_SECONDS": "1",
    "FLOWBUS_LAZARUS__STALE_AFTER_SECONDS": str(SUBMITTED_TIMEOUT),
    # A probe kills one process many times at larger scales: that is not the
    # crash loop the burst limit stops (each restart still backs off).
    "FLOWBUS_UP__RESTART_BURST": "1000",
    # No key to make: the gateway is not what these probes look at.
    "FLOWBUS_GATEWAY__AUTH": "off",
}
RESTARTED = re.compile(r"(service process \S+|nats-server) restarted \(pid (\d+)\)")
SHARED = "shared"  # what probes call the process running every service but run_creation and state


def is_dead(pid: int) -> bool:
    """Whether ``pid`` has ended: gone, or a zombie no one has reaped yet (an orphan's parent may never)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def wait_dead(pids: Sequence[int], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not all(is_dead(pid) for pid in pids):
        if time.monotonic() > deadline:
            raise AssertionError(f"still alive after {timeout:g} s: {[p for p in pids if not is_dead(p)]}")
        time.sleep(0.02)


class OutputLog:
    """A process's output (stdout and stderr merged), read by a thread as it comes:
    each line with the monotonic time it arrived, also appended to ``path``."""

    def __init__(self, proc: subprocess.Popen[str], path: Path) -> None:
        self.proc = proc
        self.path = path
        self.lines: list[tuple[float, str]] = []
        self.closed = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, name=f"output-{proc.pid}", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with self.path.open("a") as out:
            for line in self.proc.stdout:
                now = time.monotonic()
                out.write(line)
                out.flush()
                with self._cond:
                    self.lines.append((now, line))
                    self._cond.notify_all()
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    def mark(self) -> int:
        with self._cond:
            return len(self.lines)

    def wait_for(self, needle: str, start: int = 0, timeout: float = 60) -> tuple[int, float, str]:
        """The first line from index ``start`` on that contains ``needle``: its index, arrival time and text."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for index in range(start, len(self.lines)):
                    at, line = self.lines[index]
                    if needle in line:
                        return index, at, line
                start = len(self.lines)
                left = deadline - time.monotonic()
                if self.closed or left <= 0:
                    tail = "".join(line for _, line in self.lines[-40:])
                    why = "the process ended" if self.closed else f"not within {timeout:g} s"
                    raise AssertionError(f"{needle!r} never appeared ({why}); last lines:\n{tail}")
                self._cond.wait(left)

    def text(self) -> str:
        with self._cond:
            return "".join(line for _, line in self.lines)

    def join(self, timeout: float = 10) -> None:
        self._thread.join(timeout)


class ChaosStack:
    """One `flowbus up` on ``root/home``, started, killed and restarted by hand at will."""

    def __init__(self, root: Path, env: Mapping[str, str] | None = None) -> None:
        self.root = root
        self.home = root / "home"
        self.work = root / "work"
        self.work.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.env = {
            **CHAOS_ENV,
            "FLOWBUS_EMBEDDED_NATS__PORT": str(self.port),
            # Not 4200, which every other `flowbus up` on the machine tries first.
            "FLOWBUS_GATEWAY__PORT": str(free_port()),
            **(env or {}),
        }
        self.up: subprocess.Popen[str] | None = None
        self.log: OutputLog | None = None
        self.starts = 0
        self._labels: list[str] = []
        self._first_pids: dict[str, int] = {}

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def db_path(self) -> Path:
        return self.home / "flowbus.db"

    @property
    def db_url(self) -> str:
        return f"sqlite+aiosqlite:///{self.db_path}"

    def settings(self, request_timeout: float | None = None) -> Settings:
        """A client's settings for this stack: its URL and its home's credentials."""
        settings = Settings(home=self.home, auth_dir=self.home / "auth", nats_url=self.url)
        if request_timeout is not None:
            tuning: NatsTuning = settings.nats.model_copy(update={"request_timeout": request_timeout})
            settings = settings.model_copy(update={"nats": tuning})
        return settings

    def alive(self) -> bool:
        return self.up is not None and self.up.poll() is None

    def start(self) -> float:
        """Start `flowbus up`; the seconds until it said it serves."""
        self.starts += 1
        began = time.monotonic()
        self.up = start([FLOWBUS, "up"], self.home, self.work, self.env, new_session=True)
        self.log = OutputLog(self.up, self.root / f"up-{self.starts}.log")
        _, ready, _ = self.log.wait_for(UP_READY, timeout=180)
        services = next(line for _, line in self.log.lines if "services:" in line)
        self._labels = [label.strip() for label in services.split("services:", 1)[1].split(",")]
        workers = sorted(pid for pid, cmd in children_of(self.up.pid).items() if "nats-server" not in cmd)
        assert len(workers) == len(self._labels), (workers, self._labels)
        self._first_pids = dict(zip(self._labels, workers, strict=True))
        return ready - began

    def label(self, service: str) -> str:
        """The process label `flowbus up` uses: run_creation, state, or SHARED's (registration+...)."""
        if service == SHARED:
            return next(label for label in self._labels if "+" in label)
        return service

    def service_pid(self, service: str) -> int:
        """The live pid of a service process, following the restarts `flowbus up` reported."""
        label = self.label(service)
        pid = self._first_pids[label]
        assert self.log is not None
        for _, line in self.log.lines:
            match = RESTARTED.search(line)
            if match and match.group(1) == f"service process {label}":
                pid = int(match.group(2))
        return pid

    def nats_pid(self) -> int:
        assert self.up is not None
        (pid,) = [pid for pid, cmd in children_of(self.up.pid).items() if "nats-server" in cmd]
        return pid

    def kill_service(self, service: str) -> tuple[str, int]:
        """SIGKILL a service process (or the nats-server: ``"nats-server"``); the name
        `flowbus up` reports it by, and the log mark to await its restart from."""
        assert self.log is not None
        mark = self.log.mark()
        if service == "nats-server":
            os.kill(self.nats_pid(), signal.SIGKILL)
            return "nats-server", mark
        os.kill(self.service_pid(service), signal.SIGKILL)
        return f"service process {self.label(service)}", mark

    def await_restart(self, name: str, mark: int, timeout: float = 120) -> float:
        """When (monotonic) `flowbus up` said ``name`` is ready again, after ``mark``."""
        assert self.log is not None
        _, at, _ = self.log.wait_for(f"{name} is ready again", start=mark, timeout=timeout)
        return at

    def kill_everything(self) -> None:
        """SIGKILL `flowbus up`'s process group (up and its service processes) and its
        nats-server (a session of its own) at once, as a power cut would; wait until all are dead."""
        assert self.up is not None
        pgid = self.up.pid
        members = process_group_members(pgid)
        nats = self.nats_pid()
        os.killpg(pgid, signal.SIGKILL)
        os.kill(nats, signal.SIGKILL)
        self.up.wait(timeout=30)
        wait_dead([*members, nats])
        if self.log is not None:
            self.log.join()

    def stop(self) -> None:
        """SIGTERM `flowbus up` (it stops its services, then NATS); SIGKILL what is left after 60 s."""
        if self.up is None:
            return
        nats = [pid for pid, cmd in children_of(self.up.pid).items() if "nats-server" in cmd]
        if self.up.poll() is None:
            self.up.send_signal(signal.SIGTERM)
            try:
                self.up.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.up.pid, signal.SIGKILL)
                self.up.wait()
        for pid in nats:
            if not is_dead(pid):
                os.kill(pid, signal.SIGKILL)
        if self.log is not None:
            self.log.join()

    def output(self) -> str:
        return "".join(path.read_text() for path in sorted(self.root.glob("up-*.log")))


class Where(Protocol):
    """Where an agent runs: its home, its working folder, the variables that point it at the stack."""

    home: Path
    work: Path
    env: dict[str, str]


class ChaosAgent:
    """`flowbus agent local start` leading a process group of its own."""

    def __init__(self, stack: Where, root: Path, name: str, labels: Sequence[str], limit: int = 16) -> None:
        self.stack = stack
        self.name = name
        args = [FLOWBUS, "agent", "local", "start", "--no-hostname-label", "--name", name, "--limit", str(limit)]
        for label in labels:
            args += ["--label", label]
        # FLOWBUS_HOME only: the agent finds the stack through its endpoint file, as a user's does.
        self.proc = start(args, stack.home, stack.work, stack.env, new_session=True)
        self.log = OutputLog(self.proc, root / f"agent-{name}.log")
        self.log.wait_for("waiting for flow runs", timeout=120)
        _, _, line = self.log.wait_for(f"Agent {name} (")
        self.id = line.split(f"Agent {name} (", 1)[1].split(")", 1)[0]  # what its claims record as agent_id

    def kill(self) -> None:
        """SIGKILL the whole group (agent, fork server, flow processes), as a lost host; wait until all are dead."""
        members = process_group_members(self.proc.pid)
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        wait_dead(members)

    def stop(self) -> None:
        """SIGTERM: running flows finish, then it stops; anything of its group left after 60 s is killed."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=60)
        if process_group_members(self.proc.pid):
            os.killpg(self.proc.pid, signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.wait(timeout=30)
        self.log.join()


async def register_ledger_flow(client: AsyncClient, root: Path, name: str, ledger: Path, hold: Path) -> str:
    """The probe's one-task flow (tests.helpers.chaos.LEDGER_FLOW), written to ``root`` and registered; its id."""
    path = write_script(
        root / f"{name.replace('-', '_')}.py", LEDGER_FLOW.format(name=name, ledger=str(ledger), hold=str(hold))
    )
    return await register_script(client, path, name, "chaos")


async def generate_load(
    settings: Settings,
    flow_id: str,
    prefix: str,
    count: int,
    rate: float,
    labels: Sequence[str],
    parameters: Mapping[str, Any] | None = None,
    give_up_after: float = 120,
    until: asyncio.Event | None = None,
) -> Load:
    """Create ``count`` runs, ``rate`` per second (more, until ``until`` is set, when
    given), keys ``<prefix>-00000``...; each is resent with its key after any
    error, every 0.25 s, for ``give_up_after`` seconds."""
    load = Load()
    async with AsyncClient(settings, outage_seconds=1.0) as client:

        async def one(key: str) -> None:
            load.acked[key] = None
            deadline = time.monotonic() + give_up_after
            attempts = 0
            while True:
                attempts += 1
                sent = time.monotonic()
                try:
                    run_id = await client.create_flow_run(
                        flow_id, labels=list(labels), idempotency_key=key, parameters=dict(parameters or {})
                    )
                except CLIENT_ERRORS as exc:
                    load.errors[type(exc).__name__] += 1
                    if time.monotonic() >= deadline:
                        break
                    await asyncio.sleep(0.25)
                    continue
                load.acked[key] = run_id
                load.ack_times.append((sent, time.monotonic()))
                break
            load.attempts[key] = attempts

        tasks: list[asyncio.Task[None]] = []
        # Bounded: a probe whose `until` never comes still stops, at 100 times ``count``.
        while len(tasks) < count or (until is not None and not until.is_set() and len(tasks) < 100 * count):
            tasks.append(asyncio.create_task(one(f"{prefix}-{len(tasks):05d}")))
            await asyncio.sleep(1 / rate)
        await asyncio.gather(*tasks)
    return load


async def commands_back(check: Callable[[], Awaitable[object]], since: float, timeout: float = 120) -> float | None:
    """Seconds from ``since`` (monotonic) until ``check()`` first succeeds; None if it never did within ``timeout``."""
    deadline = since + timeout
    while time.monotonic() < deadline:
        try:
            await asyncio.wait_for(check(), timeout=5)
        except (*CLIENT_ERRORS, TimeoutError):
            await asyncio.sleep(0.05)
            continue
        return round(time.monotonic() - since, 2)
    return None


# Copies the database files into a folder of its own and checks the copy.
# It runs in a child process: a process holding SQLite connections that
# copies the files (opening and closing them) drops its own POSIX locks.
_INTEGRITY_CHECK = """
import shutil, sqlite3, sys, tempfile
from pathlib import Path
source = Path(sys.argv[1])
with tempfile.TemporaryDirectory() as folder:
    for suffix in ("", "-wal", "-shm"):
        part = source.with_name(source.name + suffix)
        if part.exists():
            shutil.copy2(part, Path(folder) / part.name)
    conn = sqlite3.connect(Path(folder) / source.name)
    print(conn.execute("PRAGMA integrity_check").fetchone()[0])
    conn.close()
"""


def integrity_check(db: Path) -> str:
    """SQLite's ``PRAGMA integrity_check`` on a copy of the database (``ok`` when sound)."""
    done = subprocess.run(
        [sys.executable, "-c", _INTEGRITY_CHECK, str(db)], capture_output=True, text=True, timeout=120, check=False
    )
    return done.stdout.strip() or done.stderr.strip()


def scaled(value: float) -> int:
    """``value`` times CHAOS_SCALE, as a whole number (at least 1)."""
    return max(1, round(value * chaos_scale()))


class Probe:
    """One probe's own things on the shared stack: a folder, a label no other
    probe's agents have, its executions ledger, its agents (stopped at its end)."""

    def __init__(self, name: str, stack: ChaosStack, root: Path) -> None:
        from tests.helpers.builders import unique

        self.name = name
        self.stack = stack
        self.root = root
        self.label = unique(name)
        self.ledger = root / "executions.txt"
        self.hold = root / "hold"  # while it exists, the probe's flows wait while loading
        self.agents: list[ChaosAgent] = []
        self.began = time.monotonic()
        self.log_mark = stack.log.mark() if stack.log is not None else 0
        self.up_start = stack.starts

    def agent(self, name: str, labels: Sequence[str] | None = None, limit: int = 16) -> ChaosAgent:
        agent = ChaosAgent(self.stack, self.root, name, labels if labels is not None else [self.label], limit)
        self.agents.append(agent)
        return agent

    async def register_flow(self, client: AsyncClient, name: str | None = None) -> str:
        from tests.helpers.builders import unique

        return await register_ledger_flow(client, self.root, unique(name or self.name), self.ledger, self.hold)

    def stop_agents(self) -> None:
        for agent in self.agents:
            agent.stop()

    def deaths(self) -> list[str]:
        """What `flowbus up` said died since the probe began (its current run only)."""
        assert self.stack.log is not None
        start = self.log_mark if self.stack.starts == self.up_start else 0
        return [
            line.strip()
            for _, line in self.stack.log.lines[start:]
            if " was killed by " in line or " exited with code " in line
        ]
