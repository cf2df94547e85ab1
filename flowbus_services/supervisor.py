"""The processes of ``flowbus up``: fork the services, wait until each is ready, keep them running.

One Python process runs on one core, and under load the hot paths (run
creation, state transitions) are CPU-bound. So ``flowbus up`` gives each
service named in ``up.processes`` that many processes of its own, and runs
the others together in one more. Instances of one service share its command
subjects through their queue groups, exactly like standalone instances, and
their writes to the one SQLite file queue on its cross-process write lock
(``flowbus.db.engine.SqliteWriteLock``).

The parent imports every service before forking (the children start at
once and share those pages), forks with no event loop running and no
thread alive, then waits for each child to report ready over a pipe. It
writes nothing to NATS or the database itself. It restarts a service
process or the embedded nats-server that dies, with a backoff, and stops
everything with an error when one dies too often; SIGINT or SIGTERM stops
the children (they finish what they hold). docs/architecture.md,
"Supervision", says why this loop is ours.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import gc
import logging
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol

import uvloop

from flowbus.runtime.log_format import current_service
from flowbus.runtime.service import serve_metrics

log = logging.getLogger(__name__)

READY_TIMEOUT_SECONDS = 120.0
STOP_TIMEOUT_SECONDS = 30.0
READY_POLL_SECONDS = 0.05  # how often a restarted process is looked at until it serves
_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}
_WAITED_SIGNALS = _STOP_SIGNALS | {signal.SIGCHLD}


def can_fork() -> bool:
    return hasattr(os, "fork") and sys.platform != "win32"


def layout(services: Sequence[str], processes: dict[str, int]) -> list[tuple[str, ...]]:
    """Which services each process runs: ``processes[name]`` processes each, the rest in one."""
    unknown = sorted(set(processes) - set(services))
    if unknown:
        raise ValueError(f"up.processes names unknown services: {', '.join(unknown)}")
    own = [(name,) for name in services for _ in range(max(0, processes.get(name, 0)))]
    shared = tuple(name for name in services if processes.get(name, 0) <= 0)
    return own + ([shared] if shared else [])


class Supervised(Protocol):
    """A process that ``supervise`` keeps running: a service process, or the embedded nats-server."""

    @property
    def name(self) -> str: ...

    @property
    def pid(self) -> int | None: ...

    def start(self) -> None: ...

    def reap(self) -> int | None:
        """Its exit code (negative: the signal that ended it) once it has exited, reaping it; else None."""

    def poll_ready(self) -> bool:
        """Whether it serves since its last start, without blocking."""

    def kill(self) -> None: ...


class ServiceProcess:
    """A forked process that calls ``run(services, ready)``; ``ready()`` tells the parent it serves."""

    def __init__(self, services: tuple[str, ...], run: Callable[[tuple[str, ...], Callable[[], None]], None]) -> None:
        self.services = services
        self.run = run
        self.pid: int | None = None  # None once reaped: its number may already be another process's
        self.ready_fd: int | None = None
        self.ready = False

    @property
    def label(self) -> str:
        return "+".join(self.services)

    @property
    def name(self) -> str:
        return f"service process {self.label}"

    def start(self) -> None:
        read_fd, write_fd = os.pipe()
        # Whatever sits in the parent's buffers would otherwise be written twice.
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            self._child(write_fd)
        os.close(write_fd)
        self.pid, self.ready_fd, self.ready = pid, read_fd, False

    def _child(self, write_fd: int) -> NoReturn:
        code = 0
        try:
            child_setup()

            def ready() -> None:
                os.write(write_fd, b"1")
                os.close(write_fd)

            self.run(self.services, ready)
        except BaseException:
            log.exception("%s failed", self.name)
            code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)

    def reap(self) -> int | None:
        if self.pid is None:
            return None
        pid, status = os.waitpid(self.pid, os.WNOHANG)
        if not pid:
            return None
        self.pid = None
        self._close_ready_fd()
        return os.waitstatus_to_exitcode(status)

    def poll_ready(self) -> bool:
        if self.ready_fd is not None and select.select([self.ready_fd], [], [], 0)[0]:
            self.ready = os.read(self.ready_fd, 1) == b"1"  # nothing: it exited first
            self._close_ready_fd()
        return self.ready

    def send_signal(self, signo: int) -> None:
        if self.pid is not None:
            _signal(self.pid, signo)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def wait(self) -> None:
        """Block until it has exited, and reap it."""
        if self.pid is not None:
            os.waitpid(self.pid, 0)
            self.pid = None
            self._close_ready_fd()

    def _close_ready_fd(self) -> None:
        if self.ready_fd is not None:
            os.close(self.ready_fd)
            self.ready_fd = None


def child_setup() -> None:
    """In a new child of ``flowbus up``: take the signals the parent blocks, and die with the parent."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _WAITED_SIGNALS)
    die_with_parent()


def die_with_parent() -> None:
    """Linux: when the parent dies, even by SIGKILL, this process gets SIGTERM."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def share_heap() -> None:
    """Call once before forking the service processes: keep the heap they inherit shared.

    A child's first full garbage collection would otherwise write to the
    header of every object the parent made (its imports), copying each page
    of that heap into the child; frozen objects are never collected, so those
    pages stay shared with the parent and the other children (CPython's
    ``gc.freeze`` documentation describes this use)."""
    gc.collect()
    gc.freeze()


def spawn(services: tuple[str, ...], run: Callable[[tuple[str, ...], Callable[[], None]], None]) -> ServiceProcess:
    """Fork a service process running ``services`` (see ``ServiceProcess``)."""
    process = ServiceProcess(services, run)
    process.start()
    return process


def wait_ready(children: Sequence[ServiceProcess], timeout: float = READY_TIMEOUT_SECONDS) -> None:
    """Return once every child reported ready; raise if one exits or the time runs out."""
    waiting = list(children)
    deadline = time.monotonic() + timeout
    while waiting:
        left = deadline - time.monotonic()
        if left <= 0:
            names = ", ".join(child.label for child in waiting)
            raise RuntimeError(f"service processes not ready after {timeout:.0f} s: {names}")
        select.select([child.ready_fd for child in waiting if child.ready_fd is not None], [], [], left)
        for child in list(waiting):
            if child.poll_ready():
                waiting.remove(child)
            elif child.ready_fd is None:
                raise RuntimeError(f"{child.name} exited while starting")


@dataclass(frozen=True)
class RestartPolicy:
    """When a process that died starts again, and how many deaths stop everything instead.

    The delay doubles with each death still inside the window, as in systemd's
    ``StartLimitBurst``/``StartLimitIntervalSec`` and supervisord's ``startretries``."""

    burst: int = 5
    window_seconds: float = 60.0
    first_delay_seconds: float = 0.5
    max_delay_seconds: float = 10.0

    def delay(self, recent_deaths: int) -> float:
        return float(min(self.first_delay_seconds * 2 ** (recent_deaths - 1), self.max_delay_seconds))


def supervise(
    members: Sequence[Supervised],
    policy: RestartPolicy,
    restarted: Callable[[Supervised], None] = lambda member: None,
) -> str | None:
    """Keep ``members`` running until a stop signal (return None) or until one dies too often (what failed).

    Call with the stop signals and SIGCHLD blocked, so that they wait here: a
    stop signal that arrives while a member restarts is taken once that start
    returns, and ``stop`` then ends the new process with the others. Every
    member that exits is reaped here, whether it is restarted or not.
    """
    deaths: dict[Supervised, collections.deque[float]] = {member: collections.deque() for member in members}
    due: dict[Supervised, float] = {}  # dead members and when they start again
    starting: dict[Supervised, float] = {}  # restarted members not ready yet, and until when they may take
    while True:
        if _next_signal(due, starting) in _STOP_SIGNALS:
            return None
        now = time.monotonic()
        for member in members:
            if member in due or (code := member.reap()) is None:
                continue
            starting.pop(member, None)
            failure = _count_death(member, code, deaths[member], policy, now)
            if failure is not None:
                return failure
            due[member] = now + policy.delay(len(deaths[member]))
        for member in [member for member, at in due.items() if at <= now]:
            del due[member]
            try:
                member.start()
            except OSError as exc:
                return f"{member.name} could not be restarted: {exc}"
            restarted(member)
            starting[member] = now + READY_TIMEOUT_SECONDS
            log.warning("%s restarted (pid %s)", member.name, member.pid)
        for member, deadline in list(starting.items()):
            if member.poll_ready():
                del starting[member]
                log.warning("%s is ready again", member.name)
            elif now > deadline:
                log.error("%s not ready after %.0f s: killing it", member.name, READY_TIMEOUT_SECONDS)
                del starting[member]
                member.kill()  # reaped and counted as a death like any other


def _next_signal(due: dict[Supervised, float], starting: dict[Supervised, float]) -> int | None:
    """The next stop signal or SIGCHLD; None when the next restart is due, or to look at who is starting."""
    waits = [at - time.monotonic() for at in due.values()]
    if starting:
        waits.append(READY_POLL_SECONDS)
    if not waits:
        return signal.sigwait(_WAITED_SIGNALS)
    info = signal.sigtimedwait(_WAITED_SIGNALS, max(0.0, min(waits)))
    return None if info is None else info.si_signo


def _count_death(
    member: Supervised, code: int, deaths: collections.deque[float], policy: RestartPolicy, now: float
) -> str | None:
    """Log a death; what failed when it is one too many within the window."""
    deaths.append(now)
    while deaths[0] <= now - policy.window_seconds:
        deaths.popleft()
    how = describe_exit(code)
    if len(deaths) >= policy.burst:
        return (
            f"{member.name} {how}: it died {len(deaths)} times within {policy.window_seconds:g} s "
            f"(up.restart_burst is {policy.burst}), so flowbus stops instead of restarting it"
        )
    log.warning("%s %s; restarting it in %.1f s", member.name, how, policy.delay(len(deaths)))
    return None


def describe_exit(code: int) -> str:
    """``exited with code 1``, or ``was killed by SIGKILL`` for a negative (signal) code."""
    if code >= 0:
        return f"exited with code {code}"
    try:
        return f"was killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"was killed by signal {-code}"


def stop(children: Sequence[ServiceProcess], timeout: float = STOP_TIMEOUT_SECONDS) -> None:
    """SIGTERM every running child and reap them; SIGKILL what is left after ``timeout``.

    Call with SIGCHLD blocked (as ``supervise`` needs): each exit is awaited as that signal.
    """
    left = [child for child in children if child.pid is not None]
    for child in left:
        child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while left:
        left = [child for child in left if child.reap() is None]
        remaining = deadline - time.monotonic()
        if not left or remaining <= 0:
            break
        signal.sigtimedwait({signal.SIGCHLD}, remaining)
    for child in left:
        child.kill()
        child.wait()


def _signal(pid: int, signo: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signo)


def serve_in_child(
    build: Callable[[str], Any], metrics_socket: socket.socket | None = None
) -> Callable[[tuple[str, ...], Callable[[], None]], None]:
    """The body of a service process: enter each service's app, report ready, wait for a stop signal;
    with ``metrics_socket`` (bound by the parent, so a restarted process serves the same port),
    serve the services' /metrics, /healthz and /readyz on it."""

    def run(services: tuple[str, ...], ready: Callable[[], None]) -> None:
        run_services(serve_until_stopped(build, services, ready, metrics_socket))

    return run


def run_services(main: Coroutine[Any, Any, None]) -> None:
    """Run a service process's event loop: uvloop's (libuv), which serves the
    same NATS and HTTP traffic for less CPU than asyncio's own."""
    uvloop.run(main)


async def serve_until_stopped(
    build: Callable[[str], Any],
    services: Sequence[str],
    ready: Callable[[], None] = lambda: None,
    metrics_socket: socket.socket | None = None,
) -> None:
    """Enter each service's app, call ``ready``, and serve until SIGINT or SIGTERM
    (and their /metrics on ``metrics_socket``, when given)."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signo in _STOP_SIGNALS:
        loop.add_signal_handler(signo, stopping.set)
    async with AsyncExitStack() as stack:
        apps = [await stack.enter_async_context(build(name)) for name in services]
        current_service.set(None)  # each service's tasks keep theirs; what follows here is no service's
        metrics = None
        if metrics_socket is not None:
            metrics = asyncio.create_task(serve_metrics(apps, metrics_socket), name="metrics-http")
        ready()
        try:
            await stopping.wait()
        finally:
            if metrics is not None:
                metrics.cancel()
                await asyncio.gather(metrics, return_exceptions=True)
