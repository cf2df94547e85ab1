"""Watching a run: its state events and logs, live from JetStream or stored first.

``watch_flow_run`` streams the run's state changes and log records from the
first message of each subject (deliver all). ``follow_flow_run`` replays what
the state service stored (history and logs, in time order), then goes live
and skips what it replayed: the view of ``flowbus watch`` and ``logs --follow``.

Reads: ``flowbus.evt.flow_run.<id>.>`` (EVENTS stream), ``flowbus.logs.<id>`` (LOGS stream).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import Counter
from collections.abc import AsyncGenerator, Awaitable, Callable
from datetime import datetime
from typing import Any, TypeAlias

from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from flowbus import subjects
from flowbus.client._runs import Runs
from flowbus.runtime.nats import last_sequence
from flowbus.schemas.runs import LOG_LEVELS, FlowRunDeleted, HistoryEntry, LogBatch, LogRecord, StateChanged
from flowbus.states import is_finished

# What a watch yields, and what following a run yields (stored states come as history entries).
WatchItem: TypeAlias = StateChanged | LogRecord | FlowRunDeleted
FollowItem: TypeAlias = HistoryEntry | StateChanged | LogRecord | FlowRunDeleted

# A watcher that vanishes leaves consumers behind; the server drops them after this.
WATCH_CONSUMER_EXPIRY = 60.0
# About how long a replicated stream takes to elect a new leader after losing one.
FAILOVER_SECONDS = 30.0
# How many stored log records following a run replays before going live.
REPLAY_LOG_LIMIT = 10_000


class _Feed:
    """What the two push consumers of one watch deliver, in arrival order."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[WatchItem] = asyncio.Queue()
        self.delivered = 0  # stream sequence of the last log batch received
        self.progressed = asyncio.Event()

    async def on_event(self, msg: Any) -> None:
        if msg.subject.endswith(".state"):
            self.queue.put_nowait(StateChanged.model_validate_json(msg.data))
        elif msg.subject.endswith(".deleted"):
            self.queue.put_nowait(FlowRunDeleted.model_validate_json(msg.data))

    async def on_logs(self, msg: Any) -> None:
        for record in LogBatch.model_validate_json(msg.data).records:
            self.queue.put_nowait(record)
        self.delivered = msg.metadata.sequence.stream
        self.progressed.set()

    async def logs_through(self, sequence: int) -> None:
        """Return once the log batch at stream ``sequence`` (or a later one) has arrived."""
        while self.delivered < sequence:
            self.progressed.clear()
            await self.progressed.wait()


class Watching(Runs):
    """A run's states and logs as they happen."""

    async def watch_flow_run(self, flow_run_id: str) -> AsyncGenerator[WatchItem, None]:
        """Yield the run's state changes and log records, from the first, live.

        Both come from JetStream (deliver all), so nothing published
        before the watch started is missed. Ends after a finished state.
        """
        js = (await self.connect()).jetstream()
        feed = _Feed()
        events = await self._subscribe(js, subjects.flow_run_events(flow_run_id), subjects.EVENTS_STREAM, feed.on_event)
        logs = await self._subscribe(js, subjects.logs(flow_run_id), subjects.LOGS_STREAM, feed.on_logs)
        try:
            while True:
                item = await feed.queue.get()
                yield item
                if isinstance(item, FlowRunDeleted):
                    return
                if isinstance(item, StateChanged) and is_finished(item.state.type):
                    # The runner ships its logs before the final state; the two
                    # streams arrive independently, so wait for the last batch.
                    await feed.logs_through(await last_sequence(js, subjects.LOGS_STREAM, subjects.logs(flow_run_id)))
                    while not feed.queue.empty():
                        yield feed.queue.get_nowait()
                    return
        finally:
            await events.unsubscribe()
            await logs.unsubscribe()

    async def follow_flow_run(
        self,
        flow_run_id: str,
        *,
        level: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = REPLAY_LOG_LIMIT,
    ) -> AsyncGenerator[FollowItem, None]:
        """Yield the run's stored states and logs in time order, then the live ones, until it ends.

        Stored states come as ``HistoryEntry``, live ones as ``StateChanged``;
        nothing replayed is yielded twice. ``level`` (and above), ``since`` and
        ``until`` (inclusive, timezone-aware) filter the logs, stored and live;
        ``limit`` caps how many stored ones are replayed.
        """
        level = level.upper() if level else None
        history = await self.get_flow_run_history(flow_run_id)
        stored = await self.get_flow_run_logs(flow_run_id, level=level, since=since, until=until, limit=limit)
        replay: list[HistoryEntry | LogRecord] = [*history, *stored]
        for item in sorted(replay, key=lambda i: i.timestamp):  # stable: states before logs of one instant
            yield item
        if history and is_finished(history[-1].type):
            return
        # The live stream starts from the run's first message: skip what was replayed.
        last_version = history[-1].version if history else 0
        replayed = Counter(_log_key(r) for r in stored)
        async with contextlib.aclosing(self.watch_flow_run(flow_run_id)) as live:
            async for live_item in live:
                if isinstance(live_item, StateChanged) and live_item.version <= last_version:
                    continue
                if isinstance(live_item, LogRecord):
                    key = _log_key(live_item)
                    if replayed[key]:
                        replayed[key] -= 1
                        continue
                    if not _log_wanted(live_item, level, since, until):
                        continue
                yield live_item

    async def _subscribe(
        self, js: JetStreamContext, subject: str, stream: str, cb: Callable[[Any], Awaitable[None]]
    ) -> Any:
        """A push consumer of ``subject`` from the stream's first message.

        Plain and ephemeral: nats-py's ordered consumer drops live messages when
        other subjects of the stream interleave with the filter.
        """
        # A stream electing a new leader (NATS fail-over) refuses consumers for
        # a few seconds: keep trying for as long as a command would.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(self.settings.nats.request_timeout, FAILOVER_SECONDS)
        while True:
            # Named (its creation then names its filter, which the bus's
            # permissions check) and unacknowledged (no role needs ack rights to watch).
            config = ConsumerConfig(
                name=f"watch-{uuid.uuid4().hex}",
                deliver_policy=DeliverPolicy.ALL,
                ack_policy=AckPolicy.NONE,
                inactive_threshold=WATCH_CONSUMER_EXPIRY,
            )
            try:
                return await js.subscribe(subject, stream=stream, cb=cb, config=config)
            except NatsError:
                if loop.time() > deadline:
                    raise
                await asyncio.sleep(0.5)


def _log_key(record: LogRecord) -> tuple[Any, ...]:
    return (record.timestamp, record.task_run_id, record.name, record.level, record.message)


def _log_wanted(record: LogRecord, level: str | None, since: datetime | None, until: datetime | None) -> bool:
    return (
        (level is None or LOG_LEVELS.index(record.level) >= LOG_LEVELS.index(level))
        and (since is None or record.timestamp >= since)
        and (until is None or record.timestamp <= until)
    )
