"""Flow-run processes forked ahead of demand and already connected to NATS.

A cold flow process spends its first milliseconds on what no run needs to
wait for: forking, building its settings, probing and connecting to NATS.
The agent keeps ``agent.warm_processes`` such processes per agent, each
started from the launcher's fork server with the agent's environment (no
run's), connected, and blocked on a pipe. A claimed run is handed to the
oldest over that pipe, with its environment and the run's detail as the
agent read it after the claim (so the runner does not read it again);
a new one is started in its place. Each run still gets a process of its
own, used once: a crash or a ``SIGKILL`` on cancel touches only that run.

The child, once assigned, sets the run's environment, builds its settings
again from it and keeps its connection only when the settings lead to the
same NATS URL and credential (else it connects anew); then it runs the same
``run_claimed`` as ``python -m flowbus.agent.runner``. An idle child exits
when the pipe closes (the agent stopped or died) or on SIGTERM/SIGINT.

Touches no subjects itself; the runner it starts does (flowbus.agent.runner).
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import contextlib
import gc
import logging
import os
import sys
import weakref
from collections.abc import Awaitable, Callable
from multiprocessing.connection import Connection
from multiprocessing.context import ForkServerContext
from multiprocessing.process import BaseProcess

from flowbus.agent.launcher import FlowProcess, _main_module_hidden, fd_readable
from flowbus.agent.runner import Interrupted, StopSignals, connect_through_outage, flow_run_span, run_claimed
from flowbus.bus_auth import BusRole
from flowbus.client import CLIENT_ERRORS, AsyncClient, describe_error
from flowbus.runtime import telemetry
from flowbus.schemas.runs import FlowRunDetail
from flowbus.settings import Settings

log = logging.getLogger("flowbus.agent")


class _Warm:
    def __init__(self, process: BaseProcess, assignments: Connection) -> None:
        self.process = process
        self.assignments = assignments


class WarmPool:
    """Up to ``size`` idle flow processes of one agent, ready for the next claimed run."""

    def __init__(
        self, context: ForkServerContext, size: int, base_env: Callable[[], Awaitable[dict[str, str]]]
    ) -> None:
        self._context = context
        self.size = size
        self._base_env = base_env
        self._idle: collections.deque[_Warm] = collections.deque()
        self._filling: asyncio.Task[None] | None = None
        self._closed = False
        _POOLS.add(self)

    def fill(self) -> None:
        """Start processes (off the caller's way) until ``size`` are idle."""
        if self._closed or self.size < 1 or (self._filling is not None and not self._filling.done()):
            return
        self._filling = asyncio.create_task(self._fill(), name="warm-pool-fill")

    async def _fill(self) -> None:
        while not self._closed and len(self._idle) < self.size:
            try:
                env = await self._base_env()
                if self._closed:
                    return
                self._idle.append(self._spawn(env))
            except Exception as exc:
                # The run is then started cold; the pool tries again on the next claim.
                log.warning("could not start a warm flow process: %r", exc)
                return

    def _spawn(self, env: dict[str, str]) -> _Warm:
        reader, writer = self._context.Pipe(duplex=False)
        process = self._context.Process(target=_warm_main, args=(reader, env), name="flowbus-run-warm", daemon=False)
        with _main_module_hidden():
            process.start()
        reader.close()  # the child has its own copy: EOF reaches it once the agent's end closes
        return _Warm(process, writer)

    def assign(self, flow_run_id: str, env: dict[str, str], detail: FlowRunDetail) -> FlowProcess | None:
        """Hand the run to an idle process; None when none is idle and alive (start one cold)."""
        payload = (flow_run_id, env, detail.model_dump_json())
        try:
            while self._idle:
                warm = self._idle.popleft()
                try:
                    if warm.process.exitcode is not None:
                        raise BrokenPipeError("the warm process ended")
                    warm.assignments.send(payload)
                except (OSError, ValueError) as exc:
                    log.info("a warm flow process could not take a run (%r): trying the next", exc)
                    _discard(warm)
                    continue
                warm.assignments.close()
                warm.process.name = f"flowbus-run-{flow_run_id}"
                return FlowProcess(warm.process)
            return None
        finally:
            self.fill()

    async def close(self) -> None:
        """Let the idle processes go (they exit on the pipe's end)."""
        if self._filling is not None:
            self._filling.cancel()
            await asyncio.gather(self._filling, return_exceptions=True)
        self.drop_idle()

    def drop_idle(self) -> None:
        self._closed = True
        while self._idle:
            _discard(self._idle.popleft())


_POOLS: weakref.WeakSet[WarmPool] = weakref.WeakSet()


@atexit.register
def _drop_all_idle() -> None:
    # Before multiprocessing's own exit handler (registered earlier, so run
    # later) joins the children: an idle one ends only when its pipe closes.
    for pool in list(_POOLS):
        pool.drop_idle()


def _discard(warm: _Warm) -> None:
    with contextlib.suppress(OSError):
        warm.assignments.close()


# ---- in the child ------------------------------------------------------------------------------


def _warm_main(assignments: Connection, env: dict[str, str]) -> None:
    # What the fork server imported stays out of this process's collections:
    # collecting would walk (and so copy, page by page) memory shared with it.
    gc.freeze()
    # The fork server's environment is the agent's at start-up; the agent's of now wins.
    os.environ.clear()
    os.environ.update(env)
    sys.exit(serve_one(assignments))


def serve_one(assignments: Connection) -> int:
    """Connect, wait for one run, run it; the process's exit code (0 when none came)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s | %(message)s")
    try:
        return asyncio.run(_serve_one(assignments))
    except CLIENT_ERRORS as exc:
        print(f"flowbus runner: {describe_error(exc)}", file=sys.stderr)
        return 1
    except Interrupted as exc:
        return 128 + exc.signum
    finally:
        telemetry.shutdown()  # a forked process ends with os._exit: no atexit


async def _serve_one(assignments: Connection) -> int:
    base = dict(os.environ)
    with StopSignals() as signals:
        ahead = Settings()
        warm = AsyncClient(ahead, outage_seconds=ahead.nats.outage_retry_seconds)
        connecting = asyncio.ensure_future(connect_through_outage(warm))
        assignment = await signals.race(asyncio.ensure_future(_receive(assignments)))
        if assignment is None:
            connecting.cancel()
            await asyncio.gather(connecting, return_exceptions=True)
            await warm.close()
            return 0
        flow_run_id, env, detail_json = assignment
        os.environ.clear()
        os.environ.update(env)
        settings = ahead if _settings_env(env) == _settings_env(base) else Settings()
        detail = FlowRunDetail.model_validate_json(detail_json)
        client = warm
        if _bus_of(settings) != _bus_of(ahead):
            connecting.cancel()
            await asyncio.gather(connecting, return_exceptions=True)
            await warm.close()
            client = AsyncClient(settings, outage_seconds=settings.nats.outage_retry_seconds)
            connecting = asyncio.ensure_future(connect_through_outage(client))
        client.settings = settings
        try:
            await signals.race(connecting)
        except Exception:
            # Failed while idle (an outage longer than its patience): once more, now that a run waits.
            await connect_through_outage(client)
        telemetry.configure(settings, "runner")
        async with client:
            with flow_run_span(flow_run_id):
                return await run_claimed(client, flow_run_id, settings, signals, settle_on_exit=False, detail=detail)


def _settings_env(env: dict[str, str]) -> dict[str, str]:
    """What ``Settings()`` reads of ``env``: the ``FLOWBUS_`` variables but the run's
    identity (no setting), and ``HOME`` (the default home)."""
    return {
        name: value
        for name, value in env.items()
        if (name.upper().startswith("FLOWBUS_") and name not in _RUN_IDENTITY) or name == "HOME"
    }


_RUN_IDENTITY = frozenset({"FLOWBUS_FLOW_RUN_ID", "FLOWBUS_FLOW_ID", "FLOWBUS_LABELS"})


def _bus_of(settings: Settings) -> tuple[str, str | None, BusRole, str]:
    """What a runner's connection depends on: a run whose settings differ here connects anew."""
    role = settings.role or BusRole.ADMIN
    creds = settings.nats_credential_file(role)
    return settings.resolved_nats_url(), str(creds) if creds else None, role, settings.nats.model_dump_json()


async def _receive(assignments: Connection) -> tuple[str, dict[str, str], str] | None:
    """The run handed over the pipe; None when the pipe closed first (no run for this process)."""
    await fd_readable(assignments.fileno())
    try:
        received: tuple[str, dict[str, str], str] = assignments.recv()
    except EOFError:
        return None
    return received
