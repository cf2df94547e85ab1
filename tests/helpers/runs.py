"""Following runs through their events: a watch to the end, the state events of
many runs at once, and the last event stored on a subject.

Every wait here is for an event (pushed by JetStream or core NATS), bounded by
a time limit; only ``last_event`` polls, as an event already stored is read.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from nats.aio.msg import Msg
from nats.js.errors import NotFoundError

from flowbus import subjects
from flowbus.client import AsyncClient
from flowbus.schemas.runs import FlowRunDeleted, LogRecord, StateChanged
from flowbus.states import StateType, is_finished
from tests.helpers.scripts import BLOCKING_MESSAGE
from tests.helpers.waiting import eventually

WatchItem = StateChanged | LogRecord | FlowRunDeleted


@dataclass
class Watched:
    """What a watch of one run saw, in order, until the run finished or was deleted."""

    items: list[WatchItem] = field(default_factory=list)

    @property
    def states(self) -> list[StateChanged]:
        return [i for i in self.items if isinstance(i, StateChanged)]

    @property
    def types(self) -> list[StateType]:
        return [s.state.type for s in self.states]

    @property
    def logs(self) -> list[LogRecord]:
        return [i for i in self.items if isinstance(i, LogRecord)]

    @property
    def messages(self) -> list[str]:
        return [r.message for r in self.logs]

    @property
    def final(self) -> StateChanged | FlowRunDeleted:
        """The event that ended the watch: a finished state or the run's deletion."""
        ends = [i for i in self.items if not isinstance(i, LogRecord)]
        assert ends, "the watch ended without a state"
        return ends[-1]


async def watch_until_finished(
    client: AsyncClient,
    run_id: str,
    *,
    timeout: float = 60,
    on_item: Callable[[WatchItem], Awaitable[None]] | None = None,
) -> Watched:
    """Watch the run from its first event until it finishes; ``on_item`` acts on each item as it comes."""
    watched = Watched()
    try:
        async with asyncio.timeout(timeout):
            async for item in client.watch_flow_run(run_id):
                watched.items.append(item)
                if on_item is not None:
                    await on_item(item)
    except TimeoutError:
        raise AssertionError(f"run {run_id} did not finish within {timeout:g} s; states: {watched.types}") from None
    return watched


class WhenBlocking:
    """A watch's ``on_item`` for the blocking flow: notes the flow's process id
    from the agent's log line, and acts on it once the flow's task blocks."""

    SUBMITTED = "Submitted for execution: PID: "  # the agent's log line naming the flow's process

    def __init__(self, action: Callable[[int], Awaitable[None]]) -> None:
        self.pid: int | None = None
        self._action = action

    async def __call__(self, item: WatchItem) -> None:
        if isinstance(item, LogRecord) and item.message.startswith(self.SUBMITTED):
            self.pid = int(item.message.rsplit(" ", 1)[1])
        if isinstance(item, LogRecord) and item.message == BLOCKING_MESSAGE:
            assert self.pid is not None, "the flow blocked before the agent named its process"
            await self._action(self.pid)


async def last_event(client: AsyncClient, subject: str) -> dict[str, Any]:
    """The newest event stored on ``subject``, once the outbox relay has published one."""
    js = client.nc.jetstream()
    msg = await eventually(
        lambda: js.get_last_msg(subjects.EVENTS_STREAM, subject), f"an event on {subject}", ignoring=(NotFoundError,)
    )
    assert msg.data is not None
    event: dict[str, Any] = json.loads(msg.data)
    return event


class RunStates:
    """Every flow-run state event, by run, as it is published (no polling)."""

    def __init__(self) -> None:
        self.seen: dict[str, list[StateType]] = {}
        self._changed = asyncio.Event()

    async def on_msg(self, msg: Msg) -> None:
        event = StateChanged.model_validate_json(msg.data)
        if event.task_run_id is None:
            self.seen.setdefault(event.flow_run_id, []).append(event.state.type)
            self._changed.set()

    async def until(self, done: Callable[[], bool], seconds: float = 90) -> None:
        async with asyncio.timeout(seconds):
            while not done():
                self._changed.clear()
                await self._changed.wait()

    def last(self, run_id: str) -> StateType | None:
        states = self.seen.get(run_id)
        return states[-1] if states else None

    async def finished(self, run_ids: list[str], seconds: float = 90) -> None:
        await self.until(lambda: all((s := self.last(r)) is not None and is_finished(s) for r in run_ids), seconds)

    async def reached(self, run_id: str, state: StateType, seconds: float = 60) -> None:
        await self.until(lambda: state in self.seen.get(run_id, []), seconds)


@asynccontextmanager
async def watching(client: AsyncClient) -> AsyncIterator[RunStates]:
    """The state events of every flow run, recorded while the block runs."""
    states = RunStates()
    sub = await client.nc.subscribe(subjects.flow_run_event("*", "state"), cb=states.on_msg)
    try:
        yield states
    finally:
        await sub.unsubscribe()
