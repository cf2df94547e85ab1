"""The service processes of ``flowbus up``: fork them, wait until each is ready, supervise.

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
writes nothing to NATS or the database itself. SIGINT or SIGTERM stops the
children (they finish what they hold), and a child that dies on its own
stops the whole system with an error, as a crash in the single process
would.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import select
import signal
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import uvloop

log = logging.getLogger(__name__)

READY_TIMEOUT_SECONDS = 120.0
STOP_TIMEOUT_SECONDS = 30.0
_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


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


@dataclass
class Child:
    services: tuple[str, ...]
    pid: int
    ready_fd: int

    @property
    def label(self) -> str:
        return "+".join(self.services)


def die_with_parent() -> None:
    """Linux: when the parent dies, even by SIGKILL, this process gets SIGTERM."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def spawn(services: tuple[str, ...], run: Callable[[tuple[str, ...], Callable[[], None]], None]) -> Child:
    """Fork a child that calls ``run(services, ready)``; ``ready()`` tells the parent it serves."""
    read_fd, write_fd = os.pipe()
    # Whatever sits in the parent's buffers would otherwise be written twice.
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child
        code = 0
        try:
            os.close(read_fd)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS | {signal.SIGCHLD})
            die_with_parent()

            def ready() -> None:
                os.write(write_fd, b"1")
                os.close(write_fd)

            run(services, ready)
        except BaseException:
            log.exception("service process %s failed", "+".join(services))
            code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    os.close(write_fd)
    return Child(services, pid, read_fd)


def wait_ready(children: list[Child], timeout: float = READY_TIMEOUT_SECONDS) -> None:
    """Return once every child reported ready; raise if one exits or the time runs out."""
    waiting = {child.ready_fd: child for child in children}
    deadline = time.monotonic() + timeout
    while waiting:
        left = deadline - time.monotonic()
        if left <= 0:
            names = ", ".join(child.label for child in waiting.values())
            raise RuntimeError(f"service processes not ready after {timeout:.0f} s: {names}")
        readable, _, _ = select.select(list(waiting), [], [], left)
        for fd in readable:
            child = waiting.pop(fd)
            got = os.read(fd, 1)
            os.close(fd)
            if got != b"1":
                raise RuntimeError(f"service process {child.label} exited while starting")


def supervise(children: list[Child]) -> str | None:
    """Block until a stop signal or a child's exit; return what failed, or None.

    Call with the stop signals and SIGCHLD blocked, so that they wait here.
    A child that exits with code 0 was stopped on purpose: the system stops too.
    """
    while True:
        signo = signal.sigwait(_STOP_SIGNALS | {signal.SIGCHLD})
        if signo in _STOP_SIGNALS:
            return None
        for child in list(children):
            pid, status = os.waitpid(child.pid, os.WNOHANG)
            if pid:
                children.remove(child)
                code = os.waitstatus_to_exitcode(status)
                return None if code == 0 else f"service process {child.label} exited with code {code}"


def stop(children: list[Child], timeout: float = STOP_TIMEOUT_SECONDS) -> None:
    """SIGTERM every child and reap them; SIGKILL what is left after ``timeout``.

    Call with SIGCHLD blocked (as ``supervise`` needs): each exit is awaited as that signal.
    """
    for child in children:
        _signal(child.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    left = list(children)
    while left:
        for child in list(left):
            pid, _status = os.waitpid(child.pid, os.WNOHANG)
            if pid:
                left.remove(child)
        remaining = deadline - time.monotonic()
        if not left or remaining <= 0:
            break
        signal.sigtimedwait({signal.SIGCHLD}, remaining)
    for child in left:
        _signal(child.pid, signal.SIGKILL)
        os.waitpid(child.pid, 0)


def _signal(pid: int, signo: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signo)


def serve_in_child(build: Callable[[str], Any]) -> Callable[[tuple[str, ...], Callable[[], None]], None]:
    """The body of a service process: enter each service's app, report ready, wait for a stop signal."""

    def run(services: tuple[str, ...], ready: Callable[[], None]) -> None:
        run_services(serve_until_stopped(build, services, ready))

    return run


def run_services(main: Coroutine[Any, Any, None]) -> None:
    """Run a service process's event loop: uvloop's (libuv), which serves the
    same NATS and HTTP traffic for less CPU than asyncio's own."""
    uvloop.run(main)


async def serve_until_stopped(
    build: Callable[[str], Any], services: Sequence[str], ready: Callable[[], None] = lambda: None
) -> None:
    """Enter each service's app, call ``ready``, and serve until SIGINT or SIGTERM."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signo in _STOP_SIGNALS:
        loop.add_signal_handler(signo, stopping.set)
    async with AsyncExitStack() as stack:
        for name in services:
            await stack.enter_async_context(build(name))
        ready()
        await stopping.wait()
