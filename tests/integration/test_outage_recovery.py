"""Agents and runners through a state-service outage: a write waits for the
service to come back, a write whose answer was lost is resent and applies
once, a claimed run whose process does not start goes back to the queue, and
a runner started while NATS is down waits for it.

The state service is started by each test (``StateService``), so that it can
be missing, stopped and started again; every other service runs throughout.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, contextmanager
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from flowbus import subjects
from flowbus.agent.launcher import FlowProcess, Launcher
from flowbus.agent.local import MAX_START_ATTEMPTS, LocalAgent
from flowbus.agent.runner import connect_through_outage, set_state_surviving_lost_reply
from flowbus.client import AsyncClient
from flowbus.schemas.runs import LogRecord
from flowbus.settings import Settings
from flowbus.states import StateType
from flowbus_services.registry import SERVICE_MODULES, build_service_app
from flowbus_services.up import NatsServer, free_port
from tests.helpers import unique
from tests.helpers.agents import running_agents
from tests.helpers.runs import WatchItem, watch_until_finished
from tests.helpers.scripts import register_greeting_flow, register_script, write_script

LABEL = "itest"
# The runner's log line while it waits for a service that is not running (flowbus.client).
WAITING_FOR_STATE = "No state service answered"
AT_THE_GATE = "waiting at the gate"

# One task that blocks reading a FIFO until the test writes to it: the test
# decides, by an event, when the task's Success is written.
GATED_FLOW = """
import flowbus
from flowbus import Flow, task

@task
def gated():
    flowbus.context.get("logger").info({waiting!r})
    with open({gate!r}) as gate:
        return gate.read()

with Flow({name!r}) as flow:
    gated()
"""


class StateService:
    """The test's state service: started, stopped and started again at will."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._running: AsyncExitStack | None = None

    async def start(self) -> None:
        assert self._running is None, "already running"
        self._running = AsyncExitStack()
        await self._running.enter_async_context(build_service_app("state", self.settings))

    async def stop(self) -> None:
        if self._running is not None:
            running, self._running = self._running, None
            await running.aclose()


@pytest.fixture
async def state_service(settings: Settings) -> AsyncIterator[StateService]:
    """Every service but the state service (and the gateway) running; the state service not yet."""
    async with AsyncExitStack() as apps:
        for name in SERVICE_MODULES:
            if name not in ("state", "gateway"):
                await apps.enter_async_context(build_service_app(name, settings))
        state = StateService(settings)
        apps.push_async_callback(state.stop)
        yield state


@pytest.fixture
async def client(settings: Settings, state_service: StateService) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(settings) as c:
        yield c


async def test_a_runner_waits_out_a_state_service_restart(
    settings: Settings, state_service: StateService, client: AsyncClient, tmp_path: Path
) -> None:
    """The state service stops while a task runs and starts again once the
    runner has found it missing: the task's and the flow's states still land."""
    await state_service.start()
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    name = unique("gated")
    script = GATED_FLOW.format(waiting=AT_THE_GATE, gate=str(gate), name=name)
    path = write_script(tmp_path / f"{name.replace('-', '_')}.py", script)
    flow_id = await register_script(client, path, name, "outages", labels=[LABEL])

    async def on_item(item: WatchItem) -> None:
        if isinstance(item, LogRecord) and item.message == AT_THE_GATE:
            await state_service.stop()
            # Opening a FIFO for writing returns once its reader (the task) has it open.
            await asyncio.to_thread(gate.write_text, "go")
        if isinstance(item, LogRecord) and item.message.startswith(WAITING_FOR_STATE):
            await state_service.start()

    async with running_agents(LocalAgent(settings, labels=[LABEL], hostname_label=False)):
        run_id = await client.create_flow_run(flow_id, labels=[LABEL])
        watched = await watch_until_finished(client, run_id, on_item=on_item)

    assert any(m.startswith(WAITING_FOR_STATE) for m in watched.messages), watched.messages
    history = await client.get_flow_run_history(run_id, include_task_runs=True)
    flow_states = [e.type for e in history if e.task_run_id is None]
    task_states = [e.type for e in history if e.task_run_id is not None]
    assert flow_states == [StateType.SCHEDULED, StateType.SUBMITTED, StateType.RUNNING, StateType.SUCCESS]
    assert task_states[-2:] == [StateType.RUNNING, StateType.SUCCESS]


class _FailingLauncher(Launcher):
    """Starts no process for the first ``failures`` runs it is given (as a fork
    that fails for want of memory would), then starts them."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    def start(self, flow_run_id: str, env: dict[str, str]) -> FlowProcess:
        if self.failures > 0:
            self.failures -= 1
            raise OSError(errno.ENOMEM, "Cannot allocate memory")
        return super().start(flow_run_id, env)


def _agent(settings: Settings, failures: int) -> LocalAgent:
    agent = LocalAgent(settings, labels=[LABEL], hostname_label=False)
    agent._launcher = _FailingLauncher(failures)
    # Every run's process from the launcher: none forked ahead (agent/warm_pool.py).
    agent._warm.size = 0
    return agent


async def test_a_claimed_run_whose_process_does_not_start_goes_back_to_the_queue(
    settings: Settings, state_service: StateService, client: AsyncClient, tmp_path: Path
) -> None:
    await state_service.start()
    flow_id = await register_greeting_flow(client, tmp_path)
    agent = _agent(settings, failures=1)
    async with running_agents(agent):
        run_id = await client.create_flow_run(flow_id, labels=[LABEL])
        watched = await watch_until_finished(client, run_id)

    assert watched.types == [
        StateType.SCHEDULED,
        StateType.SUBMITTED,
        StateType.SCHEDULED,
        StateType.SUBMITTED,
        StateType.RUNNING,
        StateType.SUCCESS,
    ]
    returned = watched.states[2].state.message
    assert returned is not None
    assert returned.startswith(f"Returned to the queue by agent {agent.name}: its process was not started (OSError(")
    assert returned in watched.messages  # logged on the run too


async def test_a_run_whose_process_never_starts_ends_failed(
    settings: Settings, state_service: StateService, client: AsyncClient, tmp_path: Path
) -> None:
    await state_service.start()
    flow_id = await register_greeting_flow(client, tmp_path)
    async with running_agents(_agent(settings, failures=MAX_START_ATTEMPTS)):
        run_id = await client.create_flow_run(flow_id, labels=[LABEL])
        watched = await watch_until_finished(client, run_id)

    claims = [StateType.SUBMITTED, StateType.SCHEDULED] * (MAX_START_ATTEMPTS - 1)
    assert watched.types == [StateType.SCHEDULED, *claims, StateType.SUBMITTED, StateType.FAILED]
    failed = watched.states[-1].state.message
    assert failed is not None
    assert failed.startswith(f"The flow's process could not be started ({MAX_START_ATTEMPTS} attempts): OSError(")


def _timing_out(settings: Settings, seconds: float) -> Settings:
    """``settings`` whose commands time out after ``seconds`` (a lost answer is noticed quickly)."""
    return settings.model_copy(update={"nats": settings.nats.model_copy(update={"request_timeout": seconds})})


async def _swallow_first(nc: Client, subject: str) -> asyncio.Future[Msg]:
    """A responder on ``subject`` that answers nothing: the first request it
    receives is the future's result, and it then leaves the subject."""
    first: asyncio.Future[Msg] = asyncio.get_running_loop().create_future()

    async def swallow(msg: Msg) -> None:
        if not first.done():
            first.set_result(msg)
            await sub.unsubscribe()

    sub = await nc.subscribe(subject, cb=swallow)
    await nc.flush()
    return first


async def test_a_state_write_that_was_lost_is_resent_and_applies_once(
    settings: Settings, state_service: StateService, client: AsyncClient, nc: Client, tmp_path: Path
) -> None:
    """The first Submitted reaches no state service and gets no answer: read
    back, it did not apply, so it is sent again, and applies."""
    run = await client.create_flow_run_out(await register_greeting_flow(client, tmp_path), labels=[unique("none")])
    lost = await _swallow_first(nc, subjects.StateCommands.SET_FLOW_RUN_STATE)
    resent = asyncio.Event()
    with _log_events("flowbus.runner", "The Submitted write of flow run", resent):
        async with AsyncClient(_timing_out(settings, 1.0), outage_seconds=30) as writer:
            write = asyncio.create_task(
                set_state_surviving_lost_reply(writer, run.id, run.version, StateType.SUBMITTED, "mine")
            )
            await lost
            await state_service.start()
            out = await write

    assert resent.is_set(), "the write was not resent"
    assert (out.version, out.state.type) == (run.version + 1, StateType.SUBMITTED)
    history = await client.get_flow_run_history(run.id)
    assert [(e.version, e.type) for e in history] == [(1, StateType.SCHEDULED), (2, StateType.SUBMITTED)]


async def test_a_state_write_applied_without_an_answer_is_not_applied_twice(
    settings: Settings, state_service: StateService, client: AsyncClient, nc: Client, tmp_path: Path
) -> None:
    """The first Submitted is applied but its answer goes elsewhere: the writer
    times out, reads the run back and takes the write as done."""
    run = await client.create_flow_run_out(await register_greeting_flow(client, tmp_path), labels=[unique("none")])
    lost = await _swallow_first(nc, subjects.StateCommands.SET_FLOW_RUN_STATE)
    # Long enough for the state service to start before the writer gives up on its answer.
    async with AsyncClient(_timing_out(settings, 3.0), outage_seconds=30) as writer:
        write = asyncio.create_task(
            set_state_surviving_lost_reply(writer, run.id, run.version, StateType.SUBMITTED, "mine")
        )
        request = await lost
        await state_service.start()
        # The service applies the writer's own command; the answer comes here instead.
        await nc.request(request.subject, request.data, timeout=10)
        out = await write

    assert (out.version, out.state.type) == (run.version + 1, StateType.SUBMITTED)
    history = await client.get_flow_run_history(run.id)
    assert [(e.version, e.type) for e in history] == [(1, StateType.SCHEDULED), (2, StateType.SUBMITTED)]


async def test_a_write_waits_for_a_state_service_that_starts_late(
    settings: Settings, state_service: StateService, client: AsyncClient, tmp_path: Path
) -> None:
    """No state service at all when the write is sent: it is resent with
    back-off (and says so in the log) until one starts."""
    run = await client.create_flow_run_out(await register_greeting_flow(client, tmp_path), labels=[unique("none")])
    waiting = asyncio.Event()
    with _log_events("flowbus.client", WAITING_FOR_STATE, waiting):
        async with AsyncClient(settings, outage_seconds=30) as writer:
            write = asyncio.create_task(
                set_state_surviving_lost_reply(writer, run.id, run.version, StateType.SUBMITTED, "mine")
            )
            await waiting.wait()
            await state_service.start()
            out = await write
    assert (out.version, out.state.type) == (run.version + 1, StateType.SUBMITTED)


async def test_a_runner_started_while_nats_is_down_connects_once_it_is_back(tmp_path: Path) -> None:
    """The agent started the flow's process just as the server died (the chaos
    suite's NATS kill): the runner waits for the server rather than exiting,
    which left its run to be failed without ever running."""
    port = free_port()
    server = NatsServer(tmp_path / "js", Settings().auth_path(), port=port)
    refused = asyncio.Event()
    client = AsyncClient(Settings(nats_url=f"nats://127.0.0.1:{port}"), outage_seconds=60)
    with _log_events("flowbus.runner", "cannot reach the flowbus NATS server", refused):
        connecting = asyncio.create_task(connect_through_outage(client))
        await refused.wait()
        server.start()
        try:
            await asyncio.wait_for(connecting, 60)
            assert client.nc.is_connected
            await client.close()
        finally:
            server.stop()


@contextmanager
def _log_events(logger: str, text: str, event: asyncio.Event) -> Iterator[None]:
    """Set ``event`` when ``logger`` logs a record starting with ``text``."""
    loop = asyncio.get_running_loop()

    class Seen(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().startswith(text):
                loop.call_soon_threadsafe(event.set)

    target, handler = logging.getLogger(logger), Seen(logging.INFO)
    level = target.level
    target.addHandler(handler)
    target.setLevel(logging.INFO)
    try:
        yield
    finally:
        target.removeHandler(handler)
        target.setLevel(level)
