"""Running a claimed flow run in this process: the agent's runner and ``flowbus run --execute``.

Loads the flow from its storage (only from inside the agent's flow roots,
``FLOWBUS_AGENT__FLOW_ROOTS``, when it has some), sets Running against the version it saw
(stopping if that write loses), runs the tasks, ships logs, sends heartbeats
and sets the final state; signals, crashes and cancels are handled as
docs/architecture.md, "Agent and runner" describes.

Reads: ``flowbus.cmd.state.get_flow_run`` replies.
Writes: ``flowbus.cmd.state.set_*_state``, ``flowbus.logs.<id>``,
``flowbus.hb.flow_run.<id>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import importlib
import logging
import os
import runpy
import signal
import sys
import threading
import traceback
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, TypeVar, cast

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError
from pydantic import ValidationError

from flowbus import subjects
from flowbus.agent.flow_roots import OutsideFlowRoots, check_storage, resolve_roots
from flowbus.agent.logs import LogShipper
from flowbus.client import CLIENT_ERRORS, AsyncClient, ServiceUnavailable, describe_error
from flowbus.runtime import telemetry
from flowbus.runtime.nats import NatsUnreachable
from flowbus.schemas.agents import RunHeartbeat
from flowbus.schemas.common import Conflict, Reply, VersionLockingError
from flowbus.schemas.flows import StorageSpec
from flowbus.schemas.runs import FlowRunDetail, FlowRunOut, StateChanged, StateSet, TaskRunOut
from flowbus.sdk import context
from flowbus.sdk.engine import RunAbandoned, run_flow
from flowbus.sdk.flow import LOADED_SCRIPT_PREFIX, Flow
from flowbus.settings import Settings
from flowbus.states import CANCELLED_MESSAGE, StateType, is_finished

log = logging.getLogger("flowbus.runner")
# Built now, in the fork server that imports this module: pydantic builds a
# generic model's parametrization on first use, about 10 ms each, which
# every flow process forked from it would otherwise pay again.
for _reply in (StateSet, FlowRunDetail):
    Reply[_reply]  # type: ignore[valid-type]

T = TypeVar("T")
# The signals that stop a runner; SIGINT too, because Ctrl-C on an agent's
# terminal reaches the runners it started (same process group).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class FlowLoadError(Exception):
    pass


def load_flow(storage: StorageSpec, name: str, flow_roots: Sequence[str] = ()) -> Flow:
    """Import the flow's code from where registration said it lives.

    ``flow_roots`` (real paths, ``flow_roots.resolve_roots``): refuse, before
    anything is loaded, storage whose files lie outside them.
    """
    try:
        resolved = check_storage(storage, flow_roots)
    except OutsideFlowRoots as exc:
        raise FlowLoadError(str(exc)) from None
    with context.scope(loading_flow=True):
        try:
            if storage.type == "script":
                assert storage.path is not None
                # The checked file, not the path again: a symlink swapped since leads nowhere new.
                path = resolved or storage.path
                # As `python script.py` would: the script's folder is importable.
                folder = os.path.dirname(path)
                if folder not in sys.path:
                    sys.path.insert(0, folder)
                namespace = runpy.run_path(path, run_name=f"{LOADED_SCRIPT_PREFIX}")
            else:
                assert storage.module is not None
                namespace = vars(importlib.import_module(storage.module))
        except FileNotFoundError as exc:
            raise FlowLoadError(f"Flow script not found: {exc.filename}") from exc
        except Exception as exc:
            raise FlowLoadError(f"Failed to load flow from {storage.path or storage.module}: {exc!r}") from exc
    flows = [v for v in namespace.values() if isinstance(v, Flow) and v.name == name]
    if not flows:
        raise FlowLoadError(f"No flow named {name!r} in {storage.path or storage.module}")
    return flows[0]


async def set_state_surviving_lost_reply(
    client: AsyncClient,
    flow_run_id: str,
    version: int,
    state: StateType,
    message: str | None,
    task_run_id: str | None = None,
) -> StateSet:
    """A state write of the caller's own run that survives a lost reply and an outage.

    No service running is waited out by the client (its ``outage_seconds``).
    After a time-out the write may or may not have happened: the run is read
    back, and if it sits at ``version + 1`` in ``state`` the write went
    through; otherwise it is sent again, within the same ``outage_seconds``.
    Resending is safe because the write names its version: a lost one
    applies, a duplicate of one that did apply is refused (then the run is
    read back again). Only the caller writes these states of its own run, so
    that reading is unambiguous.
    """
    backoff = client.backoff()
    unsure = False  # an earlier attempt may have applied
    while True:
        try:
            if task_run_id is not None:
                return await client.set_task_run_state(task_run_id, version, state, message)
            return await client.set_flow_run_state(flow_run_id, version, state, message)
        except ServiceUnavailable:
            if backoff.expired:
                raise
            unsure = True
        except VersionLockingError:
            if not unsure:
                raise
            applied = await _own_write(client, flow_run_id, version, state, task_run_id)
            if applied is None:
                raise
            return applied
        applied = await _own_write(client, flow_run_id, version, state, task_run_id)
        if applied is not None:
            return applied
        what = f"task run {task_run_id}" if task_run_id is not None else f"flow run {flow_run_id}"
        log.warning("The %s write of %s got no answer and did not apply: resending it.", state.value, what)
        if not await backoff.pause():
            raise ServiceUnavailable(f"the {state.value} write of {what} did not apply in time")


async def _own_write(
    client: AsyncClient, flow_run_id: str, version: int, state: StateType, task_run_id: str | None
) -> StateSet | None:
    """The run (or task run) as that write left it, when it sits at ``version + 1`` in ``state``."""
    detail = await client.get_flow_run(flow_run_id)
    rows: list[FlowRunOut | TaskRunOut] = (
        [detail.run] if task_run_id is None else [t for t in detail.task_runs if t.id == task_run_id]
    )
    if rows and rows[0].version == version + 1 and rows[0].state.type is state:
        return StateSet(id=rows[0].id, version=rows[0].version, state=rows[0].state)
    return None


class FlowCrashed(Exception):
    """Flow code raised something that is not an ``Exception`` (KeyboardInterrupt, SystemExit)."""


class Interrupted(Exception):
    """This process received SIGTERM or SIGINT."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"Flow run process {os.getpid()} received {signal.Signals(signum).name}.")


class NotClaimed(Exception):
    """``run --execute`` could not claim its run: something else owns it."""


class CancelRequested(Exception):
    """``run --execute``: the run was cancelled (Cancelling) while it ran here."""

    def __init__(self) -> None:
        super().__init__("Flow run was cancelled: stopping it.")


class StopSignals:
    """While entered (on the running loop), SIGTERM and SIGINT are recorded
    instead of killing the process; ``race`` and ``check`` turn them into
    ``Interrupted`` where the runner can still settle things. A second
    signal exits at once, for a user whose first Ctrl-C seems stuck.
    ``cancel()`` stops the same way with ``CancelRequested`` (``run --execute``
    has no agent to stop it when the run is cancelled)."""

    def __init__(self, signums: Iterable[signal.Signals] = STOP_SIGNALS) -> None:
        self.signums = tuple(signums)
        self.received: int | None = None
        self.cancelled = False
        self._event = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    def __enter__(self) -> StopSignals:
        self._loop = asyncio.get_running_loop()
        for signum in self.signums:
            self._loop.add_signal_handler(signum, self._on_signal, signum)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and not self._loop.is_closed():
            for signum in self.signums:
                self._loop.remove_signal_handler(signum)
        self._loop = None

    def _on_signal(self, signum: int) -> None:
        if self.received is not None:
            os._exit(128 + signum)
        self.received = signum
        log.warning("Received %s: stopping.", signal.Signals(signum).name)
        self._event.set()

    def cancel(self) -> None:
        self.cancelled = True
        self._event.set()

    def check(self) -> None:
        if self.received is not None:
            raise Interrupted(self.received)
        if self.cancelled:
            raise CancelRequested()

    async def race(self, future: asyncio.Future[T]) -> T:
        """The future's result, unless a signal comes first (``Interrupted``);
        the thread behind the future is then left to die with the process."""
        self.check()
        waiter: asyncio.Future[Any] = asyncio.ensure_future(self._event.wait())
        try:
            await asyncio.wait([cast("asyncio.Future[Any]", future), waiter], return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if future.done():
            return future.result()
        # Left behind: its outcome, if it ever comes, is read so asyncio does not report it.
        future.add_done_callback(lambda f: f.cancelled() or f.exception())
        self.check()
        raise AssertionError("unreachable: the event is set only by a signal or a cancel")


def in_daemon_thread(fn: Callable[[], T], name: str) -> asyncio.Future[T]:
    """Run ``fn`` in a daemon thread; its outcome as a future of this loop.

    Not ``asyncio.to_thread``: the loop's executor threads are joined at exit,
    so a task sleeping for an hour would keep a signalled process alive. A
    ``BaseException`` of flow code arrives as ``FlowCrashed``: raised into the
    loop as it is, a KeyboardInterrupt would tear the loop down before the run
    is settled.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()
    values = contextvars.copy_context()

    def deliver(outcome: Callable[[], None]) -> None:
        if not future.done():
            outcome()

    def target() -> None:
        outcome: Callable[[], None]
        try:
            outcome = functools.partial(future.set_result, values.run(fn))
        except Exception as exc:
            outcome = functools.partial(future.set_exception, exc)
        except BaseException as exc:
            outcome = functools.partial(future.set_exception, FlowCrashed(f"Flow run process crashed: {exc!r}"))
        # A closed loop: the process is exiting and nobody waits for this any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(deliver, outcome)

    threading.Thread(target=target, name=name, daemon=True).start()
    return future


class Heartbeats:
    """A flow run's heartbeats on ``flowbus.hb.flow_run.<id>``: one every
    interval from the first interval on, and then one at once when a task run
    starts, each naming the task run that is Running (``task_run_id``; None
    between tasks). The engine runs one task at a time, so one message per
    beat covers the flow run and its running task run.

    None in the first interval: a run that ends within it needs none (the
    Zombie Killer counts from the run's start time until a beat arrives), and
    most runs are that short; each beat costs a message and a write."""

    def __init__(self, client: AsyncClient, flow_run_id: str, interval: float) -> None:
        self.client = client
        self.flow_run_id = flow_run_id
        self.interval = interval
        self.task_run_id: str | None = None
        self._wake = asyncio.Event()
        self._beating = False  # the first interval has passed

    def task_running(self, task_run_id: str | None) -> None:
        """Called on the loop's thread when a task run enters (or leaves) Running."""
        self.task_run_id = task_run_id
        if task_run_id is not None and self._beating:
            self._wake.set()

    async def run(self) -> None:
        subject = subjects.flow_run_heartbeat(self.flow_run_id)
        await asyncio.sleep(self.interval)
        self._beating = True
        while True:
            self._wake.clear()
            beat = RunHeartbeat(flow_run_id=self.flow_run_id, task_run_id=self.task_run_id, timestamp=datetime.now(UTC))
            # A beat lost in a NATS fail-over is replaced by the next one.
            with contextlib.suppress(NatsError):
                await self.client.nc.publish(subject, beat.model_dump_json().encode())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)


class BackendHooks:
    """Reports task-run states to the state service from the engine's thread."""

    def __init__(
        self,
        client: AsyncClient,
        loop: asyncio.AbstractEventLoop,
        flow_run_id: str,
        task_runs: dict[str, tuple[str, int]],
        on_task_running: Callable[[str | None], None] | None = None,
    ):
        self.client = client
        self.flow_run_id = flow_run_id
        self.loop = loop
        self.task_runs = task_runs  # slug -> (task run id, version)
        self.on_task_running = on_task_running

    def task_scope(self, slug: str) -> dict[str, Any]:
        entry = self.task_runs.get(slug)
        return {"task_run_id": entry[0]} if entry else {}

    def task_state(self, slug: str, state: StateType, message: str | None) -> bool:
        entry = self.task_runs.get(slug)
        if entry is None:
            return True
        task_run_id, version = entry
        with telemetry.run_span(f"task_run {state.value}", None, flow_run_id=self.flow_run_id, task_run_id=task_run_id):
            future = asyncio.run_coroutine_threadsafe(
                set_state_surviving_lost_reply(self.client, self.flow_run_id, version, state, message, task_run_id),
                self.loop,
            )
            try:
                out = future.result()
            except (VersionLockingError, Conflict) as exc:
                log.error("Task run %s: %s", slug, exc.message)
                return False
        self.task_runs[slug] = (task_run_id, out.version)
        if self.on_task_running is not None:
            running = task_run_id if state is StateType.RUNNING else None
            self.loop.call_soon_threadsafe(self.on_task_running, running)
        return True


class _FlowLogs:
    """Ships the records of the ``flowbus`` loggers (flowbus's own and the
    tasks') to the run's log subject while entered."""

    def __init__(self, client: AsyncClient, flow_run_id: str) -> None:
        self.shipper = LogShipper(client.nc.jetstream(), flow_run_id, asyncio.get_running_loop())
        self.shipper.setFormatter(logging.Formatter("%(message)s"))
        self._logger = logging.getLogger("flowbus")
        self._level = self._logger.level

    async def __aenter__(self) -> LogShipper:
        self._logger.addHandler(self.shipper)
        self._logger.setLevel(logging.INFO)
        self.shipper.start()
        return self.shipper

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # Detached first: a flow thread left running must not log into a closed loop.
        self._logger.removeHandler(self.shipper)
        self._logger.setLevel(self._level)
        await self.shipper.stop()


class _ClaimedRun:
    """A claimed run in this process: its version, its logs, the background
    work it started, and how it ends.

    ``settle_on_exit``: no agent stands behind this process (``run --execute``),
    so whatever stops the flow settles the run here.
    """

    def __init__(self, client: AsyncClient, detail: FlowRunDetail, shipper: LogShipper, settle_on_exit: bool) -> None:
        self.client = client
        self.detail = detail
        self.run = detail.run
        self.version = detail.run.version
        self.shipper = shipper
        self.settle_on_exit = settle_on_exit
        self.beating: asyncio.Task[None] | None = None
        self.cancels: Subscription | None = None

    async def ship(self) -> None:
        # One turn of the loop first: a record logged just now (even on this
        # thread) reaches the queue through call_soon_threadsafe.
        await asyncio.sleep(0)
        await self.shipper.drain()

    async def finish(self, state: StateType, message: str) -> None:
        # Logs first: a watcher sees them before the final state.
        await self.ship()
        await set_state_surviving_lost_reply(self.client, self.run.id, self.version, state, message)

    async def settle(self, reason: str) -> None:
        """Logs first, then the run ends (see ``settle_unfinished_run``)."""
        await self.ship()
        await settle_unfinished_run(self.client, self.run.id, reason)

    def start_hooks(self, settings: Settings) -> BackendHooks:
        """The engine's task-run reporting, and heartbeats unless the flow group disables them."""
        task_runs = {t.task_slug: (t.id, t.version) for t in self.detail.task_runs}
        hooks = BackendHooks(self.client, asyncio.get_running_loop(), self.run.id, task_runs)
        if self.detail.heartbeat_enabled:
            heartbeats = Heartbeats(self.client, self.run.id, settings.heartbeat.interval_seconds)
            hooks.on_task_running = heartbeats.task_running
            self.beating = asyncio.create_task(heartbeats.run())
        return hooks

    async def stop(self) -> None:
        if self.beating is not None:
            self.beating.cancel()
        if self.cancels is not None:
            with contextlib.suppress(NatsError):
                await self.cancels.unsubscribe()


async def run_claimed(
    client: AsyncClient,
    flow_run_id: str,
    settings: Settings,
    signals: StopSignals,
    *,
    settle_on_exit: bool,
    detail: FlowRunDetail | None = None,
) -> int:
    """Run a claimed (Submitted) flow run here; the process's exit code.

    ``settle_on_exit`` False (the agent's runner): on a signal, ship the logs
    and return 128 + the signal, writing no state; the agent settles the run.
    True (``run --execute``, no agent behind it): a signal ends the run Failed
    here, and a cancel (Cancelling) stops the flow and ends it Cancelled. A
    crash of flow code or an unexpected error ends it Failed either way.
    ``detail``: the run as the agent read it after its claim (a warm process,
    flowbus.agent.warm_pool), saving a read; None: read here.
    """
    if detail is None:
        detail = await client.get_flow_run(flow_run_id)
    async with _FlowLogs(client, detail.run.id) as shipper:
        claimed = _ClaimedRun(client, detail, shipper, settle_on_exit)
        try:
            return await _load_and_run(claimed, settings, signals)
        except CancelRequested as exc:
            log.warning("%s", exc)
            await claimed.settle(str(exc))  # Cancelling: ends Cancelled
            return 1
        except Interrupted as exc:
            log.error("%s", exc)
            if settle_on_exit:
                await claimed.settle(str(exc))
            return 128 + exc.signum
        except Exception as exc:
            if isinstance(exc, FlowCrashed):
                log.error("%s", exc)
                reason = str(exc)
            else:
                log.error("Unexpected error while running the flow: %r\n%s", exc, traceback.format_exc())
                reason = f"Unexpected error: {exc!r}"
            await claimed.settle(reason)
            return 1
        finally:
            await claimed.stop()


async def _load_and_run(claimed: _ClaimedRun, settings: Settings, signals: StopSignals) -> int:
    """Load the flow, set Running, run it and set its final state; the exit code."""
    client, run = claimed.client, claimed.run
    try:
        roots = resolve_roots(settings.agent.flow_roots)
        flow = await signals.race(
            in_daemon_thread(lambda: load_flow(claimed.detail.storage, run.flow_name, roots), "load")
        )
    except FlowLoadError as exc:
        log.error("%s", exc)
        await claimed.finish(StateType.FAILED, str(exc))
        return 1
    if claimed.settle_on_exit:
        # Before Running: a cancel of a running run (Cancelling) comes after this.
        claimed.cancels = await _on_cancelling(client, run.id, signals.cancel)
    try:
        claimed.version = (
            await set_state_surviving_lost_reply(client, run.id, claimed.version, StateType.RUNNING, "Running flow.")
        ).version
    except (VersionLockingError, Conflict) as exc:
        # Someone else owns this run now: run nothing (once and only once).
        log.warning("Not running flow run %s: %s", run.id, exc.message)
        return 0
    hooks = claimed.start_hooks(settings)
    scope = _flow_scope(run)

    def work() -> Any:
        with context.scope(**scope):
            return run_flow(flow, run.parameters, hooks)

    try:
        result = await signals.race(in_daemon_thread(work, "flow"))
    except RunAbandoned as exc:
        log.error("Flow run abandoned: %s", exc)
        if not claimed.settle_on_exit:
            return 0
        # Refused because the run moved on (cancelled, failed by someone
        # else): with no agent behind this process, end it here.
        await claimed.settle(f"Flow run abandoned: {exc}")
        return 1
    await claimed.finish(result.state, result.message)
    return 0


def _flow_scope(run: FlowRunOut) -> dict[str, Any]:
    """What tasks see of the run in ``flowbus.context``."""
    return {
        "flow_run_id": run.id,
        "flow_run_name": run.name,
        "flow_id": run.flow_id,
        "project_name": run.project_name,
        "scheduled_start_time": _aware(run.scheduled_start_time),
        "running_with_backend": True,
    }


async def _on_cancelling(client: AsyncClient, flow_run_id: str, callback: Callable[[], None]) -> Subscription:
    """Call ``callback`` when the run enters Cancelling (its state events, pushed)."""

    async def on_state(msg: Msg) -> None:
        with contextlib.suppress(ValidationError):
            if StateChanged.model_validate_json(msg.data).state.type is StateType.CANCELLING:
                callback()

    return await client.nc.subscribe(subjects.flow_run_event(flow_run_id, subjects.FlowRunFact.STATE), cb=on_state)


async def settle_unfinished_run(client: AsyncClient, flow_run_id: str, failure: str | None) -> None:
    """End a run whose process stopped before the run finished: Cancelled when
    it is being cancelled (Cancelling), else Failed with ``failure`` (None:
    leave it as it is). The one place a client decides that.

    Read fresh, because the flow's thread may have moved the run on; one
    command, because the state service takes the run's task runs along. A
    write that got no answer is read again (it may have applied) and resent
    within the client's ``outage_seconds``.
    """
    backoff = client.backoff()
    conflicts = 0
    while conflicts < 3:
        run = (await client.get_flow_run(flow_run_id)).run
        if is_finished(run.state.type):
            return
        if run.state.type is StateType.CANCELLING:
            target, message = StateType.CANCELLED, CANCELLED_MESSAGE
        elif failure is not None:
            target, message = StateType.FAILED, failure
        else:
            return
        try:
            await client.set_flow_run_state(flow_run_id, run.version, target, message)
            return
        except (VersionLockingError, Conflict):
            conflicts += 1  # it moved on meanwhile: read it again
        except ServiceUnavailable:
            if not await backoff.pause():
                raise
    log.error("Could not end flow run %s: it kept changing.", flow_run_id)


def agentless_label() -> str:
    """The extra label of a ``run --execute`` run.

    Agents take a run only when its labels are a subset of theirs, and no
    agent has this random label, so no agent can claim the run that this
    process is about to claim and run itself (1.x's ``agentless-run-<id>``).
    """
    return f"flowbus-execute-{uuid.uuid4().hex[:12]}"


async def execute_here(client: AsyncClient, run: FlowRunOut, settings: Settings, signals: StopSignals) -> int:
    """``flowbus run --execute``: claim the new run (Submitted at its version)
    and run it in this process; ``run_claimed``'s exit code.

    No agent is watching this process, so whatever goes wrong once the run
    exists (a signal before the claim, an error) ends the run Failed with the
    reason before the exception goes on. ``NotClaimed`` when another writer
    owns the run (e.g. an idempotency key that matched an earlier run).
    """
    try:
        signals.check()
        try:
            await client.set_flow_run_state(
                run.id,
                run.version,
                StateType.SUBMITTED,
                f"Submitted for execution in this process (flowbus run --execute): PID: {os.getpid()}",
            )
        except (VersionLockingError, Conflict) as exc:
            state = (await client.get_flow_run(run.id)).run.state.type
            raise NotClaimed(
                f"Flow run {run.id} is {state.value}, not Scheduled: it was not executed here ({exc.message})"
            ) from None
        # As under `python -m flowbus.agent.runner`: flows registered from a
        # module in the working folder are importable.
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        return await run_claimed(client, run.id, settings, signals, settle_on_exit=True)
    except NotClaimed:
        raise
    except BaseException as exc:
        reason = str(exc) if isinstance(exc, Interrupted) else f"flowbus run --execute failed: {exc!r}"
        with contextlib.suppress(Exception):
            await asyncio.wait_for(settle_unfinished_run(client, run.id, reason), settings.nats.request_timeout * 2)
        raise


def _aware(when: datetime) -> datetime:
    """The run's time in UTC, timezone-aware whatever the database handed back."""
    return when.astimezone(UTC) if when.tzinfo is not None else when.replace(tzinfo=UTC)


async def connect_through_outage(client: AsyncClient) -> None:
    """Connect ``client``, waiting with back-off for its ``outage_seconds`` while no
    NATS server accepts the connection: the agent may start this process just as the
    server dies or restarts, and a runner that gave up at once would leave its run
    to be failed unstarted. Any other failure (a refused credential) is raised at once."""
    backoff = client.backoff()
    said = False
    while True:
        try:
            await client.connect()
            return
        except NatsUnreachable as exc:
            if backoff.expired:
                raise
            if not said:
                log.info("%s: retrying for up to %g s.", exc, client.outage_seconds)
                said = True
            await backoff.pause()


def flow_run_span(flow_run_id: str) -> contextlib.AbstractContextManager[object]:
    """This process's span of the run: under the agent's, in the run's trace (the agent
    sets TRACEPARENT in the run's environment)."""
    parent = os.environ.get(telemetry.TRACEPARENT_ENV)
    return telemetry.run_span("flow_run", parent or None, flow_run_id=flow_run_id)


async def execute(flow_run_id: str, settings: Settings) -> int:
    """The agent's runner: run the claimed flow run ``flow_run_id`` in this process."""
    with StopSignals() as signals, flow_run_span(flow_run_id):
        client = AsyncClient(settings, outage_seconds=settings.nats.outage_retry_seconds)
        await connect_through_outage(client)
        async with client:
            return await run_claimed(client, flow_run_id, settings, signals, settle_on_exit=False)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m flowbus.agent.runner FLOW_RUN_ID", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s | %(message)s")
    settings = Settings()
    telemetry.configure(settings, "runner")
    try:
        return asyncio.run(execute(args[0], settings))
    except CLIENT_ERRORS as exc:
        print(f"flowbus runner: {describe_error(exc)}", file=sys.stderr)
        return 1
    finally:
        telemetry.shutdown()  # a forked runner ends with os._exit: no atexit


if __name__ == "__main__":
    sys.exit(main())
