"""GraphQL subscriptions: a run's states, task run states and logs; the state changes of a flow's or a project's runs.

Every feed comes from JetStream, never from polling:

- ``flow_run_state_changes``: the run's state history from the database
  (oldest first), then push consumers of its ``.state`` and ``.deleted``
  events from the stream's first message, skipping the versions already
  replayed: nothing set between the read and the consumers' start is missed.
  Ends after a finished state or with the deletion.
- ``task_run_state_changes``: the current state of each of the run's task
  runs from the database, then a consumer of its ``.task_state`` events from
  the first message that skips each task run's versions already replayed.
  The run's ``.state`` events tell when it finished; the feed then delivers
  the stream's task-state events of the run up to that moment and ends (at
  once with a deletion).
- ``flow_run_logs``: the stored records, then a consumer of the run's log
  subject from the first message that skips the records already replayed.
  The run's state events tell when it ended; the feed then delivers the
  stream's last batch of the run before it ends (the runner ships its logs
  before its final state, and the log writer may not have stored them yet).
- ``flow_state_changes`` / ``project_state_changes``: a state event names
  neither the flow nor the project (subject ``flowbus.evt.flow_run.<id>.state``,
  payload ``StateChanged``), so a consumer of every run's ``.state``, new
  messages only, looks each event's run up in ``RunOwners`` (a bounded cache
  of run -> (flow, project), read from the database once per run: a run
  never changes flow, a flow never changes project) and hands it to the
  feeds that want it. One such consumer per gateway (``StateHub``) serves all
  its flow and project feeds: the cost of an event does not grow with them.

Consumers are ephemeral, paced by acknowledgements to the client's speed
(``Feed``), and deleted as soon as the feed ends, the client completes it or
disconnects; those of a gateway that died are dropped by the server
``gateway.feed_expiry_seconds`` after their subscriber went away. A flow or project feed whose client falls
``MAX_BACKLOG`` changes behind the others fails (INTERNAL): the shared
consumer does not wait for one slow client.

Reads: ``flowbus.evt.flow_run.<id|*>.state``, ``flowbus.evt.flow_run.<id>.task_state`` and
``flowbus.evt.flow_run.<id>.deleted`` (EVENTS stream), ``flowbus.logs.<id>`` (LOGS stream). Writes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import Counter, OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from ariadne import SubscriptionType
from graphql import GraphQLError
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError
from sqlalchemy import select
from sqlmodel import col

from flowbus import subjects
from flowbus.db.engine import Database
from flowbus.db.tables import Flow, FlowRun, Log, Project, StateHistory, Task, TaskRun
from flowbus.runtime.nats import last_sequence
from flowbus.schemas.runs import LOG_LEVELS, FlowRunDeleted, LogBatch, LogRecord, StateChanged
from flowbus.states import StateType, is_finished
from flowbus_services.gateway.context import Gateway, Info, RequestContext, request_context
from flowbus_services.gateway.errors import Code, refusal

log = logging.getLogger(__name__)

# A gateway that vanishes leaves its consumers behind; the server drops them after this.
# About how long a replicated stream takes to elect a new leader (it refuses consumers meanwhile).
FAILOVER_SECONDS = 30.0
# Most stored log records a run's log feed replays before going live.
REPLAY_LOG_LIMIT = 10_000
# Messages a consumer delivers ahead of the client, and how long before it sends one again.
MAX_ACK_PENDING = 1_000
ACK_WAIT = 300.0
# State changes a flow or project feed may hold for a client slower than they come; past it the feed fails.
MAX_BACKLOG = 10_000
# Runs whose flow and project the flow and project feeds remember.
OWNER_CACHE_SIZE = 10_000

_STATE = subjects.FlowRunFact.STATE.value
_TASK_STATE = subjects.FlowRunFact.TASK_STATE.value
_DELETED = subjects.FlowRunFact.DELETED.value

subscription = SubscriptionType()


@dataclass(frozen=True)
class Owners:
    flow_id: str
    project_id: str


@dataclass(frozen=True)
class RunRow:
    id: str
    owners: Owners
    state: str
    version: int


@dataclass(frozen=True)
class TaskRunRow:
    """A task run as its feed shows it: which task of the flow, and where in a map.

    Unknown (None) only for a task run the gateway could not read: deleted with
    its run since, or not yet on a lagging read replica.
    """

    id: str
    task_id: str | None
    task_slug: str | None
    task_name: str | None
    map_index: int | None


class Feed:
    """Push consumers of JetStream subjects, delivering into one queue in arrival order.

    Each message is acknowledged as the feed hands it out, and a consumer has at
    most ``MAX_ACK_PENDING`` unacknowledged: the server paces a long replay or a
    burst to the client's speed, and the queue stays bounded. A message
    redelivered after ``ACK_WAIT`` (a client slower still) is skipped by its
    stream sequence.
    """

    def __init__(self, nc: NatsClient, request_timeout: float, expiry: float) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.request_timeout = request_timeout
        self.expiry = expiry
        self.queue: asyncio.Queue[Msg] = asyncio.Queue()
        self._subscriptions: list[Subscription] = []
        self._consumers: list[tuple[str, str]] = []
        self._handed: dict[str, int] = {}  # consumer -> stream sequence of the last message handed out

    async def _put(self, msg: Msg) -> None:
        self.queue.put_nowait(msg)

    async def consume(self, stream: str, subject: str, deliver: DeliverPolicy) -> None:
        """Start a consumer of ``subject`` (a filter) from the first message or from now."""
        inbox = self.nc.new_inbox()
        # Subscribed before the consumer exists, so its first pushes are not lost.
        self._subscriptions.append(await self.nc.subscribe(inbox, cb=self._put))
        # Named, so that its creation names its filter (the bus's permissions
        # check it), and recorded before it is created: an operation cancelled
        # while the creation is under way still deletes it (close() ignores NotFound).
        name = f"gateway-{uuid.uuid4().hex}"
        self._consumers.append((stream, name))
        config = ConsumerConfig(
            name=name,
            deliver_subject=inbox,
            filter_subject=subject,
            deliver_policy=deliver,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=ACK_WAIT,
            max_ack_pending=MAX_ACK_PENDING,
            inactive_threshold=self.expiry,
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(self.request_timeout, FAILOVER_SECONDS)
        while True:
            try:
                await self.js.add_consumer(stream, config)
                return
            except NatsError:
                # A stream electing a new leader refuses consumers for a few seconds.
                if loop.time() > deadline:
                    raise
                await asyncio.sleep(0.5)

    async def get(self) -> Msg:
        while True:
            msg = await self.queue.get()
            with contextlib.suppress(NatsError):
                await msg.ack()
            meta = msg.metadata
            if meta.sequence.stream > self._handed.get(meta.consumer, 0):
                self._handed[meta.consumer] = meta.sequence.stream
                return msg

    async def last_sequence(self, stream: str, subject: str) -> int:
        """Stream sequence of the newest message on ``subject`` (0 when there is none)."""
        return await last_sequence(self.js, stream, subject)

    async def close(self) -> None:
        for sub in self._subscriptions:
            with contextlib.suppress(NatsError):
                await sub.unsubscribe()
        for stream, name in self._consumers:
            try:
                await self.js.delete_consumer(stream, name)
            except NotFoundError:
                pass
            except NatsError:  # the server drops it feed_expiry_seconds after its subscriber left anyway
                log.warning("could not delete consumer %s of %s", name, stream, exc_info=True)
        self._subscriptions.clear()
        self._consumers.clear()


async def _new_feed(gateway: Gateway) -> Feed:
    settings = gateway.settings
    return Feed(await gateway.client.connect(), settings.nats.request_timeout, settings.gateway.feed_expiry_seconds)


@contextlib.asynccontextmanager
async def open_feed(context: RequestContext) -> AsyncIterator[Feed]:
    gateway = context.gateway
    feed = await _new_feed(gateway)
    try:
        yield feed
    finally:
        # Shielded: a cancelled operation (the client completed it) still deletes its consumers.
        await asyncio.shield(feed.close())


class RunOwners:
    """Which flow and project each run belongs to: a bounded LRU filled from the database."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._known: OrderedDict[str, Owners] = OrderedDict()

    async def get(self, db: Database, flow_run_id: str) -> Owners | None:
        owners = self._known.get(flow_run_id)
        if owners is not None:
            self._known.move_to_end(flow_run_id)
            return owners
        query = (
            select(col(FlowRun.flow_id), col(Flow.project_id))
            .join(Flow, col(Flow.id) == col(FlowRun.flow_id))
            .where(col(FlowRun.id) == flow_run_id)
        )
        async with db.read_connection() as conn:
            row = (await conn.execute(query)).first()
        if row is None:  # deleted since, or not yet on a lagging read replica
            return None
        owners = Owners(row[0], row[1])
        self._known[flow_run_id] = owners
        if len(self._known) > self.size:
            self._known.popitem(last=False)
        return owners


# Run ids are unique across databases (uuid7), so one cache serves every gateway of the process.
OWNERS = RunOwners(OWNER_CACHE_SIZE)


# ---- reads ------------------------------------------------------------------


async def _run(context: RequestContext, flow_run_id: str) -> RunRow:
    query = (
        select(col(FlowRun.id), col(FlowRun.flow_id), col(Flow.project_id), col(FlowRun.state), col(FlowRun.version))
        .join(Flow, col(Flow.id) == col(FlowRun.flow_id))
        .where(col(FlowRun.id) == flow_run_id)
    )
    async with context.gateway.db.read_connection() as conn:
        row = (await conn.execute(query)).first()
    if row is None:
        raise refusal(f"No flow run has the id {flow_run_id}.", Code.NOT_FOUND)
    return RunRow(row[0], Owners(row[1], row[2]), row[3], row[4])


async def _exists(context: RequestContext, column: Any, value: str, what: str) -> None:
    async with context.gateway.db.read_connection() as conn:
        found = (await conn.execute(select(column).where(column == value))).first()
    if found is None:
        raise refusal(f"No {what} has the id {value}.", Code.NOT_FOUND)


async def _history(db: Database, flow_run_id: str) -> list[Any]:
    query = (
        select(
            col(StateHistory.version), col(StateHistory.type), col(StateHistory.message), col(StateHistory.timestamp)
        )
        .where(col(StateHistory.flow_run_id) == flow_run_id, col(StateHistory.task_run_id).is_(None))
        .order_by(col(StateHistory.version))
    )
    async with db.read_connection() as conn:
        return list((await conn.execute(query)).all())


def _task_runs_query(run: RunRow) -> Any:
    """The run's task runs with their task (by the flow's slug) and current state, oldest state first."""
    return (
        select(
            col(TaskRun.id),
            col(Task.id),
            col(TaskRun.task_slug),
            col(TaskRun.task_name),
            col(TaskRun.map_index),
            col(TaskRun.version),
            col(TaskRun.state),
            col(TaskRun.state_message),
            col(TaskRun.state_timestamp),
        )
        .outerjoin(Task, (col(Task.flow_id) == run.owners.flow_id) & (col(Task.slug) == col(TaskRun.task_slug)))
        .where(col(TaskRun.flow_run_id) == run.id)
        .order_by(col(TaskRun.state_timestamp), col(TaskRun.id))
    )


async def _task_runs(db: Database, run: RunRow) -> list[Any]:
    async with db.read_connection() as conn:
        return list((await conn.execute(_task_runs_query(run))).all())


async def _task_run(db: Database, run: RunRow, known: dict[str, TaskRunRow], task_run_id: str) -> TaskRunRow:
    """The task run, read once per feed (a task run never changes task or map index)."""
    if task_run_id in known:
        return known[task_run_id]
    async with db.read_connection() as conn:
        row = (await conn.execute(_task_runs_query(run).where(col(TaskRun.id) == task_run_id))).first()
    if row is None:
        return TaskRunRow(task_run_id, None, None, None, None)
    task_run = known[task_run_id] = TaskRunRow(*row[:5])
    return task_run


async def _stored_logs(db: Database, flow_run_id: str, levels: tuple[str, ...]) -> list[LogRecord]:
    query = (
        select(
            col(Log.task_run_id),
            col(Log.timestamp),
            col(Log.name),
            col(Log.level),
            col(Log.message),
            col(Log.info),
        )
        .where(col(Log.flow_run_id) == flow_run_id, col(Log.level).in_(levels))
        .order_by(col(Log.timestamp), col(Log.id))
        .limit(REPLAY_LOG_LIMIT)
    )
    async with db.read_connection() as conn:
        rows = (await conn.execute(query)).all()
    return [
        LogRecord(
            flow_run_id=flow_run_id,
            task_run_id=r[0],
            timestamp=r[1],
            name=r[2],
            level=r[3],
            message=r[4],
            info=r[5],
        )
        for r in rows
    ]


# ---- payloads ---------------------------------------------------------------


def _state_change(
    flow_run_id: str,
    owners: Owners,
    *,
    version: int | None,
    state: str | None,
    previous: str | None,
    message: str | None,
    timestamp: datetime,
    replayed: bool,
    deleted: bool = False,
) -> dict[str, Any]:
    return {
        "flow_run_id": flow_run_id,
        "flow_id": owners.flow_id,
        "project_id": owners.project_id,
        "version": version,
        "state": state,
        "previous_state": previous,
        "message": message,
        "timestamp": timestamp,
        "deleted": deleted,
        "replayed": replayed,
    }


def _live_state(changed: StateChanged, owners: Owners) -> dict[str, Any]:
    return _state_change(
        changed.flow_run_id,
        owners,
        version=changed.version,
        state=changed.state.type.value,
        previous=changed.previous.value if changed.previous else None,
        message=changed.state.message,
        timestamp=changed.state.timestamp,
        replayed=False,
    )


def _deletion(msg: Msg, flow_run_id: str, owners: Owners) -> dict[str, Any]:
    return _state_change(
        flow_run_id,
        owners,
        version=None,
        state=None,
        previous=None,
        message=FlowRunDeleted.model_validate_json(msg.data).reason,
        timestamp=msg.metadata.timestamp,
        replayed=False,
        deleted=True,
    )


def _task_state_change(
    run: RunRow,
    task_run: TaskRunRow,
    *,
    version: int,
    state: str,
    previous: str | None,
    message: str | None,
    timestamp: datetime,
    replayed: bool,
) -> dict[str, Any]:
    return {
        "flow_run_id": run.id,
        "flow_id": run.owners.flow_id,
        "project_id": run.owners.project_id,
        "task_run_id": task_run.id,
        "task_id": task_run.task_id,
        "task_slug": task_run.task_slug,
        "task_name": task_run.task_name,
        "map_index": task_run.map_index,
        "version": version,
        "state": state,
        "previous_state": previous,
        "message": message,
        "timestamp": timestamp,
        "replayed": replayed,
    }


def _live_task_state(run: RunRow, task_run: TaskRunRow, changed: StateChanged) -> dict[str, Any]:
    return _task_state_change(
        run,
        task_run,
        version=changed.version,
        state=changed.state.type.value,
        previous=changed.previous.value if changed.previous else None,
        message=changed.state.message,
        timestamp=changed.state.timestamp,
        replayed=False,
    )


def _log_record(record: LogRecord, *, replayed: bool) -> dict[str, Any]:
    return {**record.model_dump(), "replayed": replayed}


def _log_key(record: LogRecord) -> tuple[Any, ...]:
    return (record.timestamp, record.task_run_id, record.name, record.level, record.message)


# ---- feeds ------------------------------------------------------------------


async def run_states(context: RequestContext, run: RunRow) -> AsyncGenerator[dict[str, Any], None]:
    history = await _history(context.gateway.db, run.id)
    previous: str | None = None
    for version, state, message, timestamp in history:
        yield _state_change(
            run.id,
            run.owners,
            version=version,
            state=state,
            previous=previous,
            message=message,
            timestamp=timestamp,
            replayed=True,
        )
        previous = state
    if previous is not None and is_finished(StateType(previous)):
        return
    last_version = history[-1][0] if history else 0
    async with open_feed(context) as feed:
        await feed.consume(subjects.EVENTS_STREAM, subjects.flow_run_event(run.id, _STATE), DeliverPolicy.ALL)
        await feed.consume(subjects.EVENTS_STREAM, subjects.flow_run_event(run.id, _DELETED), DeliverPolicy.ALL)
        while True:
            msg = await feed.get()
            if msg.subject.endswith(f".{_DELETED}"):
                yield _deletion(msg, run.id, run.owners)
                return
            changed = StateChanged.model_validate_json(msg.data)
            if changed.version <= last_version:  # replayed from the history already
                continue
            last_version = changed.version
            yield _live_state(changed, run.owners)
            if is_finished(changed.state.type):
                return


async def task_run_states(context: RequestContext, run: RunRow) -> AsyncGenerator[dict[str, Any], None]:
    db = context.gateway.db
    known: dict[str, TaskRunRow] = {}
    replayed: dict[str, int] = {}  # task run -> its version replayed or delivered last
    for row in await _task_runs(db, run):
        task_run = known[row[0]] = TaskRunRow(*row[:5])
        version, state, message, timestamp = row[5:]
        replayed[task_run.id] = version
        yield _task_state_change(
            run,
            task_run,
            version=version,
            state=state,
            previous=None,
            message=message,
            timestamp=timestamp,
            replayed=True,
        )
    task_subject = subjects.flow_run_event(run.id, _TASK_STATE)
    async with open_feed(context) as feed:
        async for msg in _until_run_ends(feed, run, subjects.EVENTS_STREAM, task_subject):
            changed = StateChanged.model_validate_json(msg.data)
            if changed.task_run_id is None or changed.version <= replayed.get(changed.task_run_id, 0):
                continue
            replayed[changed.task_run_id] = changed.version
            yield _live_task_state(run, await _task_run(db, run, known, changed.task_run_id), changed)


async def run_logs(
    context: RequestContext, run: RunRow, levels: tuple[str, ...]
) -> AsyncGenerator[dict[str, Any], None]:
    stored = await _stored_logs(context.gateway.db, run.id, levels)
    for record in stored:
        yield _log_record(record, replayed=True)
    # The live consumer starts from the run's first batch: skip what was replayed.
    replayed = Counter(_log_key(r) for r in stored)
    logs_subject = subjects.logs(run.id)
    async with open_feed(context) as feed:
        async for msg in _until_run_ends(feed, run, subjects.LOGS_STREAM, logs_subject):
            for record in LogBatch.model_validate_json(msg.data).records:
                key = _log_key(record)
                if replayed[key]:
                    replayed[key] -= 1
                elif record.level in levels:
                    yield _log_record(record, replayed=False)


async def _until_run_ends(feed: Feed, run: RunRow, stream: str, subject: str) -> AsyncGenerator[Msg, None]:
    """The messages of ``subject`` in ``stream``, from its first, until the run has
    finished and every message published before its final state was delivered,
    or until the run is deleted (its stored records go with it).

    A finished state at or below the version read when the feed started is the
    past of a run that was restarted since, not its end.
    """
    await feed.consume(stream, subject, DeliverPolicy.ALL)
    # Through this stream sequence of ``subject``, once the run finished; None while it runs.
    through: int | None = None
    if is_finished(StateType(run.state)):
        through = await feed.last_sequence(stream, subject)
    else:
        await feed.consume(subjects.EVENTS_STREAM, subjects.flow_run_event(run.id, _STATE), DeliverPolicy.ALL)
        await feed.consume(subjects.EVENTS_STREAM, subjects.flow_run_event(run.id, _DELETED), DeliverPolicy.ALL)
    delivered = 0
    while through is None or delivered < through:
        msg = await feed.get()
        if msg.subject == subject:
            delivered = msg.metadata.sequence.stream
            yield msg
        elif through is not None:
            continue
        elif msg.subject.endswith(f".{_DELETED}"):
            return
        else:
            changed = StateChanged.model_validate_json(msg.data)
            if changed.version > run.version and is_finished(changed.state.type):
                through = await feed.last_sequence(stream, subject)


class Listener:
    """One flow or project feed of a hub: the state changes it wants, queued for its client."""

    def __init__(self, *, flow_id: str | None = None, project_id: str | None = None) -> None:
        self.flow_id = flow_id
        self.project_id = project_id
        self.queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()  # None: failed
        self.failure: GraphQLError | None = None

    def wants(self, owners: Owners) -> bool:
        return owners.flow_id == self.flow_id or owners.project_id == self.project_id

    def offer(self, item: dict[str, Any]) -> None:
        if self.queue.qsize() >= MAX_BACKLOG:
            self.fail(_behind())
        else:
            self.queue.put_nowait(item)

    def fail(self, error: GraphQLError) -> None:
        if self.failure is None:
            self.failure = error
            self.queue.put_nowait(None)

    async def get(self) -> dict[str, Any]:
        item = None if self.failure is not None else await self.queue.get()
        if item is None:
            assert self.failure is not None
            raise self.failure
        return item


class StateHub:
    """The flow and project feeds of one gateway share one consumer of every run's state events.

    Started by the first feed, stopped (its consumer deleted) when the last
    one leaves; each event's run is looked up once, whatever the number of feeds.
    """

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.listeners: set[Listener] = set()
        self.lock = asyncio.Lock()
        self._feed: Feed | None = None
        self._pump: asyncio.Task[None] | None = None

    async def join(self, listener: Listener) -> None:
        """Return once ``listener`` gets every state change from now on."""
        async with self.lock:
            if self._pump is None:
                feed = await _new_feed(self.gateway)
                try:
                    await feed.consume(subjects.EVENTS_STREAM, subjects.flow_run_event("*", _STATE), DeliverPolicy.NEW)
                except BaseException:
                    await asyncio.shield(feed.close())
                    raise
                self._feed, self._pump = feed, asyncio.create_task(self._run(feed))
            self.listeners.add(listener)

    async def leave(self, listener: Listener) -> None:
        async with self.lock:
            self.listeners.discard(listener)
            if self.listeners or self._pump is None:
                return
            pump, feed = self._pump, self._feed
            self._pump = self._feed = None
            if _HUBS.get(id(self.gateway)) is self:
                del _HUBS[id(self.gateway)]
        pump.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pump
        assert feed is not None
        await feed.close()

    async def _run(self, feed: Feed) -> None:
        try:
            while True:
                msg = await feed.get()
                changed = StateChanged.model_validate_json(msg.data)
                owners = await OWNERS.get(self.gateway.db, changed.flow_run_id)
                if owners is None:
                    continue
                item: dict[str, Any] | None = None
                for listener in self.listeners:
                    if listener.wants(owners):
                        item = item or _live_state(changed, owners)
                        listener.offer(item)
        except Exception as exc:
            log.exception("the flow and project state feeds failed")
            error = exc if isinstance(exc, GraphQLError) else refusal("The state feed failed.", Code.INTERNAL)
            async with self.lock:
                failed, self.listeners = self.listeners, set()
                if self._pump is asyncio.current_task():
                    self._pump = self._feed = None
            await feed.close()
            for listener in failed:
                listener.fail(error)


# The hub of each gateway of the process that has flow or project feeds now.
_HUBS: dict[int, StateHub] = {}


def listening() -> int:
    """How many flow and project feeds receive every state change from now on, in this process."""
    return sum(len(hub.listeners) for hub in _HUBS.values())


def _hub(gateway: Gateway) -> StateHub:
    hub = _HUBS.get(id(gateway))
    if hub is None:
        hub = _HUBS[id(gateway)] = StateHub(gateway)
    return hub


async def owned_states(context: RequestContext, listener: Listener) -> AsyncGenerator[dict[str, Any], None]:
    hub = _hub(context.gateway)
    await hub.join(listener)
    try:
        while True:
            yield await listener.get()
    finally:
        # Shielded: a cancelled operation (the client completed it) still leaves.
        await asyncio.shield(hub.leave(listener))


def _behind() -> GraphQLError:
    return refusal("The subscription fell too far behind its events: subscribe again.", Code.INTERNAL)


# ---- resolvers --------------------------------------------------------------


def _levels(level: str | None) -> tuple[str, ...]:
    if level is None:
        return LOG_LEVELS
    name = level.upper()
    if name not in LOG_LEVELS:
        raise refusal(f"Unknown log level {level!r}; choose from {', '.join(LOG_LEVELS)}.", Code.VALIDATION_ERROR)
    return LOG_LEVELS[LOG_LEVELS.index(name) :]


# Each source checks its arguments before it returns the feed, so a refusal is
# the operation's error message, not an item of the stream.


async def source_flow_run_state_changes(_: Any, info: Info, flow_run_id: str) -> AsyncGenerator[dict[str, Any], None]:
    return run_states(request_context(info), await _run(request_context(info), flow_run_id))


async def source_task_run_state_changes(_: Any, info: Info, flow_run_id: str) -> AsyncGenerator[dict[str, Any], None]:
    return task_run_states(request_context(info), await _run(request_context(info), flow_run_id))


async def source_flow_run_logs(
    _: Any, info: Info, flow_run_id: str, level: str | None = None
) -> AsyncGenerator[dict[str, Any], None]:
    levels = _levels(level)
    return run_logs(request_context(info), await _run(request_context(info), flow_run_id), levels)


async def source_flow_state_changes(_: Any, info: Info, flow_id: str) -> AsyncGenerator[dict[str, Any], None]:
    await _exists(request_context(info), col(Flow.id), flow_id, "flow")
    return owned_states(request_context(info), Listener(flow_id=flow_id))


async def source_project_state_changes(_: Any, info: Info, project_id: str) -> AsyncGenerator[dict[str, Any], None]:
    await _exists(request_context(info), col(Project.id), project_id, "project")
    return owned_states(request_context(info), Listener(project_id=project_id))


def _event(event: dict[str, Any], *_: Any, **_arguments: Any) -> dict[str, Any]:
    return event


# ariadne's type for a source wants a generator; graphql-core awaits a source's coroutine first.
for _name, _source in (
    ("flow_run_state_changes", source_flow_run_state_changes),
    ("task_run_state_changes", source_task_run_state_changes),
    ("flow_run_logs", source_flow_run_logs),
    ("flow_state_changes", source_flow_state_changes),
    ("project_state_changes", source_project_state_changes),
):
    subscription.set_source(_name, cast(Any, _source))
    subscription.set_field(_name, _event)

BINDABLES = [subscription]
