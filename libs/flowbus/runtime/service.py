"""The composition root shared by every service: broker, middleware, lifespan.

``build_service`` gives each service the same shape: a faststream NATS
broker whose command handlers always answer with a ``Reply`` envelope (a
malformed, wrong-typed, oversize or too deeply nested command gets
``VALIDATION_ERROR``, a refusal its stable code, a bug ``INTERNAL``; the
service keeps serving), an
ASGI app with /healthz, /readyz, /metrics (flowbus.runtime.metrics: what
every service counts, and what the service adds with ``ctx.metrics``) and
/docs/asyncapi, log records tagged with the service
(flowbus.runtime.log_format), OpenTelemetry spans with
the trace context carried in NATS headers, a database with migrations
applied, the JetStream streams, an outbox relay (its rows tagged with the
service's name; every write's events published before the reply,
docs/architecture.md, "Delivery guarantees") and the
service's own background loops. Services add only their handlers and use
cases.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import socket
import time
import weakref
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from ssl import SSLContext
from typing import Any, TypeVar, cast

from faststream.asgi import AsgiFastStream, AsgiResponse, get
from faststream.message import StreamMessage
from faststream.middlewares import BaseMiddleware, ExceptionMiddleware
from faststream.nats import NatsBroker
from faststream.nats.opentelemetry import NatsTelemetryMiddleware
from faststream.nats.security import NatsNKey, NatsSecurity
from faststream.specification import AsyncAPI
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from pydantic import ValidationError
from sqlalchemy import func, select, text

from flowbus import subjects
from flowbus.bus_auth import BusRole, Credential
from flowbus.db.engine import Database
from flowbus.db.migrate import upgrade_async
from flowbus.db.tables import Outbox, utcnow
from flowbus.runtime import telemetry
from flowbus.runtime.batching import GroupCommitter
from flowbus.runtime.fastlane import FastLane
from flowbus.runtime.log_format import current_run, current_service
from flowbus.runtime.metrics import CommandStats, ComponentMetrics, Families, subject_label
from flowbus.runtime.metrics_http import metrics_endpoint, process_app, serve
from flowbus.runtime.nats import connect, ensure_streams, known_servers, tls_context
from flowbus.runtime.outbox import OutboxRelay
from flowbus.runtime.payload import PayloadLimits, PayloadRefused
from flowbus.runtime.telemetry import tracer, tracer_provider
from flowbus.schemas.common import (
    ErrorCode,
    ErrorInfo,
    FlowbusError,
    Message,
    Reply,
    validation_failed,
)
from flowbus.settings import Settings
from flowbus.version import __version__

log = logging.getLogger(__name__)
C = TypeVar("C")
R = TypeVar("R")
H = TypeVar("H", bound=Callable[..., Awaitable[Any]])
# Allocations minus deallocations before a young-generation collection (CPython's default: 700).
GC_YOUNG_THRESHOLD = 20_000


@dataclass
class ServiceContext:
    """What a service's handlers and loops need; filled in during startup."""

    name: str
    settings: Settings
    db: Database
    broker: NatsBroker
    # Never connected: holds every command, fast-lane ones included, for the AsyncAPI document.
    spec_broker: NatsBroker
    fast_lane: FastLane
    # The database's outbox: every write hands it its events; it publishes once started.
    relay: OutboxRelay
    # What /metrics reports for this service (the service adds its own: ``metrics.add``).
    metrics: ComponentMetrics
    nc: NatsClient | None = None
    js: JetStreamContext | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    # When the broker's connection, which the handlers receive on, last came
    # up: at start-up, then at each reconnect; None before and while it is
    # down. Core NATS messages sent meanwhile are lost, so a loop that judges
    # by messages it did not receive (the Zombie Killer) waits after it.
    connected_since: datetime | None = None
    committers: list[GroupCommitter[Any, Any]] = field(default_factory=list)

    @property
    def jetstream(self) -> JetStreamContext:
        assert self.js is not None, "JetStream is available after startup"
        return self.js

    def subscriber(self, subject: str, **kwargs: Any) -> Callable[[H], H]:
        """A faststream subscriber that handles up to ``nats.max_concurrent_messages``
        messages at once (faststream's default is one at a time: a slow
        command would hold up every other on its subject)."""
        workers = self.settings.nats.max_concurrent_messages
        run = self.broker.subscriber(subject, max_workers=workers, **kwargs)
        document = self.spec_broker.subscriber(subject, max_workers=workers, **kwargs)

        def decorate(handler: H) -> H:
            document(handler)
            return cast(H, run(handler))

        return decorate

    def fast_command(
        self,
        subject: str,
        *,
        queue: str,
        model: type[Message],
        reply: type[Message],
        committer: GroupCommitter[Any, Any],
        title: str,
        span_name: Callable[[Any], str] | None = None,
        starts_traces: bool = False,
    ) -> None:
        """Serve a hot-path command through the fast lane into ``committer``; its span is named
        ``span_name(command)`` (default: ``title``); ``starts_traces``: see flowbus.runtime.fastlane."""
        self.fast_lane.add(subject, queue, model, committer, span_name or (lambda _command: title), starts_traces)

        async def documented(cmd: Any) -> Any:
            raise NotImplementedError("served by the fast lane")

        documented.__annotations__ = {"cmd": model, "return": Reply[reply]}  # type: ignore[valid-type]
        self.spec_broker.subscriber(subject, queue=queue, title=title)(documented)

    def group_committer(
        self, name: str, process: Callable[[Sequence[C]], Awaitable[list[R | FlowbusError]]]
    ) -> GroupCommitter[C, R]:
        """A group committer for a hot-path command: batches share one
        transaction, and their events are published before any reply."""
        committer: GroupCommitter[C, R] = GroupCommitter(
            name,
            process,
            after_commit=self.relay.publish_before_reply,
            # Its depth follows the reply mode (docs/architecture.md, "Delivery guarantees").
            pipeline=4 if self.relay.reply_after_stored else 1,
            writers=self.relay.db.concurrent_writes,
        )
        self.committers.append(committer)
        return committer


Loop = Callable[[ServiceContext], Awaitable[None]]


def lenient_json_decoder(limits: PayloadLimits) -> Callable[..., Awaitable[Any]]:
    """Decode JSON if it is JSON; anything else reaches pydantic as bytes and fails there.

    faststream's own decoder raises on malformed JSON before the handler runs,
    which would leave the requester without a reply. A payload over
    ``limits`` decodes to a refusal that ``_PayloadGuard`` answers, before it
    is parsed (flowbus.runtime.payload).
    """

    async def decode(msg: StreamMessage[Any]) -> Any:
        body = msg.body
        try:
            return limits.loads(body)
        except PayloadRefused as exc:
            return _Refusal(exc.message)
        except ValueError:  # UnicodeDecodeError included
            return body

    return decode


@dataclass(frozen=True)
class _Refusal:
    message: str


class _PayloadGuard(BaseMiddleware):
    """Turns a payload the decoder refused into a VALIDATION_ERROR before validation;
    one nobody waits for (a heartbeat) is dropped with a log line."""

    async def consume_scope(self, call_next: Any, msg: StreamMessage[Any]) -> Any:
        decoded = await msg.decode()
        if isinstance(decoded, _Refusal):
            subject = getattr(msg.raw_message, "subject", "")
            if subject.startswith(subjects.FIRE_AND_FORGET_PREFIXES):
                log.warning("dropping a message on %s: %s", subject, decoded.message)
                return None
            raise PayloadRefused(decoded.message)
        return await call_next(msg)


def _error_reply(info: ErrorInfo) -> dict[str, Any]:
    return Reply[Any](ok=False, error=info).model_dump(mode="json")


def envelope_middleware() -> ExceptionMiddleware:
    """Map every failure of a command handler to an error envelope reply."""
    mw = ExceptionMiddleware()

    @mw.add_handler(ValidationError, publish=True)
    async def _invalid(exc: ValidationError) -> dict[str, Any]:
        return _error_reply(validation_failed(exc).info())

    @mw.add_handler(FlowbusError, publish=True)
    async def _refused(exc: FlowbusError) -> dict[str, Any]:
        return _error_reply(exc.info())

    @mw.add_handler(Exception, publish=True)
    async def _bug(exc: Exception) -> dict[str, Any]:
        log.error("unhandled error in handler", exc_info=exc)
        return _error_reply(ErrorInfo(code=ErrorCode.INTERNAL, message="internal error; see service logs"))

    return mw


class CommandObserver:
    """faststream middleware (a factory, as faststream takes them): each message's
    handler time and refusal code into ``stats``, with the run it names as the
    log context, and at DEBUG one line per command. Placed inside the envelope
    middleware, so it sees the refusal before it becomes a reply."""

    def __init__(self, stats: CommandStats) -> None:
        self.stats = stats

    def __call__(self, msg: Any, /, *, context: Any) -> BaseMiddleware:
        return _Observed(msg, context=context, stats=self.stats)


class _Observed(BaseMiddleware):
    def __init__(self, msg: Any, *, context: Any, stats: CommandStats) -> None:
        super().__init__(msg, context=context)
        self.stats = stats

    async def consume_scope(self, call_next: Any, msg: StreamMessage[Any]) -> Any:
        subject = subject_label(getattr(msg.raw_message, "subject", ""))
        decoded = await msg.decode()
        run_id = decoded.get("flow_run_id") if isinstance(decoded, dict) else None
        token = current_run.set(run_id if isinstance(run_id, str) else None)
        start = time.perf_counter()
        code: str | None = None
        try:
            return await call_next(msg)
        except ValidationError:
            code = ErrorCode.VALIDATION_ERROR.value
            raise
        except FlowbusError as exc:
            code = exc.code.value
            raise
        except Exception:
            code = ErrorCode.INTERNAL.value
            raise
        finally:
            elapsed = time.perf_counter() - start
            if subject.startswith("flowbus.cmd."):
                self.stats.observe(subject, elapsed)
            if code is not None:
                self.stats.refused(subject, code)
            if log.isEnabledFor(logging.DEBUG):
                log.debug("%s answered %s in %.1f ms", subject, code or "ok", elapsed * 1000)
            current_run.reset(token)


def _faststream_logger() -> logging.Logger:
    quiet = logging.getLogger("flowbus.faststream")
    quiet.setLevel(logging.WARNING)
    return quiet


def _broker_security(credential: Credential | None, tls: SSLContext | None) -> dict[str, Any]:
    """faststream's form of ``connect``'s credential and TLS options."""
    if credential is None:
        return {"security": NatsSecurity(ssl_context=tls)} if tls is not None else {}
    security = NatsNKey(credential.name, ssl_context=tls)
    # faststream takes a seed file; ours holds more than the seed, so hand it the seed itself.
    security.seed, security.seed_is_file = credential.seed, False
    return {"security": security, "inbox_prefix": credential.inbox_prefix}


# The servers of a broker built while no NATS URL was known (see _point_broker).
UNKNOWN_SERVERS = ["nats://unknown.invalid:4222"]
Callback = Callable[[], Awaitable[None]]


def make_broker(
    settings: Settings,
    name: str,
    role: BusRole = BusRole.SERVICE,
    *,
    disconnected_cb: Callback | None = None,
    reconnected_cb: Callback | None = None,
    stats: CommandStats | None = None,
) -> NatsBroker:
    """The service's broker; the callbacks are nats-py's, called when its connection drops and comes back;
    ``stats`` gets each command's time and refusals."""
    return NatsBroker(
        known_servers(settings) or UNKNOWN_SERVERS,
        **_broker_security(settings.nats_credential(role), tls_context(settings)),
        name=f"flowbus-{name}",
        connect_timeout=int(max(1, settings.nats.connect_timeout)),
        # Fail over to another cluster node quickly and never give up.
        allow_reconnect=True,
        max_reconnect_attempts=-1,
        reconnect_time_wait=1,
        decoder=lenient_json_decoder(PayloadLimits.of(settings)),
        middlewares=[
            NatsTelemetryMiddleware(tracer_provider=tracer_provider(name, settings.otel_console)),
            envelope_middleware(),
            CommandObserver(stats if stats is not None else CommandStats()),
            _PayloadGuard,
        ],
        # faststream logs two lines per message at INFO (and, for concurrent
        # subscribers, one more per finished task): too much for a service log.
        log_level=logging.DEBUG,
        logger=_faststream_logger(),
        graceful_timeout=5.0,
        disconnected_cb=disconnected_cb,
        reconnected_cb=reconnected_cb,
    )


def settle_heap() -> None:
    """Keep the start-up heap out of the cyclic garbage collector's way.

    After start-up a service holds hundreds of thousands of long-lived
    objects (pydantic and SQLAlchemy internals, migrations, the AsyncAPI
    documents). Every full collection walks them all, which showed as
    multi-millisecond pauses in the request tail. Freezing them moves them
    out of the collector's generations; the higher first threshold makes
    young collections rarer under load (each request allocates a few
    hundred short-lived objects, freed by reference counting anyway).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 20)


# The context of each app that build_service made, for code that holds only the app.
_CONTEXTS: weakref.WeakKeyDictionary[AsgiFastStream, ServiceContext] = weakref.WeakKeyDictionary()


def service_context(app: AsgiFastStream) -> ServiceContext:
    """The context ``build_service`` made ``app`` with: its database, relay, committers and settings."""
    return _CONTEXTS[app]


def build_service(
    name: str,
    settings: Settings,
    register: Callable[[ServiceContext], None],
    loops: Sequence[Loop] = (),
    *,
    migrate: bool = True,
    startup: Sequence[Callable[[ServiceContext], Awaitable[None]]] = (),
    role: BusRole = BusRole.SERVICE,
) -> AsgiFastStream:
    """Assemble one service. ``name``: its ``subjects.Service``; ``register`` adds its handlers to ``ctx.broker``.

    ``role``: its NATS credential's; only the ``service`` role declares the streams."""

    async def disconnected() -> None:
        ctx.connected_since = None

    async def reconnected() -> None:
        ctx.connected_since = datetime.now(UTC)

    # The client's own spans in a service process (a run created through the gateway) are the gateway's.
    telemetry.configure(settings, "gateway" if name == "gateway" else None)
    stats = CommandStats()
    broker = make_broker(settings, name, role, disconnected_cb=disconnected, reconnected_cb=reconnected, stats=stats)
    spec_broker = NatsBroker(known_servers(settings) or UNKNOWN_SERVERS, name=f"flowbus-{name}")
    db = Database(settings.resolved_database_url())
    fast_lane = FastLane(
        name,
        PayloadLimits.of(settings),
        tracer(name, settings.otel_console),
        max_pending=settings.nats.fast_lane_max_pending,
        max_pending_bytes=settings.nats.fast_lane_max_pending_bytes,
        stats=stats,
    )
    relay = OutboxRelay(
        name,
        db,
        reply_after_stored=settings.nats.reply_after_events == "stored",
        publish_wait=settings.nats.publish_wait_seconds,
    )
    ctx = ServiceContext(
        name=name,
        settings=settings,
        db=db,
        broker=broker,
        spec_broker=spec_broker,
        fast_lane=fast_lane,
        relay=relay,
        metrics=ComponentMetrics(name, settings.metrics.scrape_timeout_seconds),
    )
    _service_metrics(ctx, stats)
    register(ctx)
    on_startup, after_startup, on_shutdown, after_shutdown = _lifecycle(ctx, loops, startup, migrate=migrate, role=role)
    app = AsgiFastStream(
        broker,
        asgi_routes=_health_routes(ctx),
        asyncapi_path="/docs/asyncapi",
        specification=AsyncAPI(spec_broker, title=f"flowbus {name}", version=__version__),
        on_startup=[on_startup],
        after_startup=[after_startup],
        on_shutdown=[on_shutdown],
        after_shutdown=[after_shutdown],
    )
    _CONTEXTS[app] = ctx
    return app


Hook = Callable[[], Awaitable[None]]


def _lifecycle(
    ctx: ServiceContext,
    loops: Sequence[Loop],
    startup: Sequence[Callable[[ServiceContext], Awaitable[None]]],
    *,
    migrate: bool,
    role: BusRole,
) -> tuple[Hook, Hook, Hook, Hook]:
    """The app's start-up and shut-down hooks: on_startup, after_startup, on_shutdown, after_shutdown.

    ``startup`` runs once NATS and the database are there, before the loops:
    what must be in place when the service reports ready."""
    name, settings, db, fast_lane = ctx.name, ctx.settings, ctx.db, ctx.fast_lane

    async def on_startup() -> None:
        # What this service starts from here (broker, fast lane, loops) logs as this service.
        current_service.set(name)
        if migrate:
            await upgrade_async(db.url)
        ctx.nc = await connect(settings, f"flowbus-{name}-relay", role)
        _point_broker(ctx.broker, settings.nats_servers())
        ctx.js = ctx.nc.jetstream()
        if role is BusRole.SERVICE:
            await ensure_streams(ctx.js, settings)
        ctx.relay.connect(ctx.nc)
        for step in startup:
            await step(ctx)

    async def after_startup() -> None:
        assert ctx.nc is not None
        await fast_lane.start(ctx.nc)
        # The broker has subscribed: from now on this instance hears what is sent.
        ctx.connected_since = datetime.now(UTC)
        ctx.tasks.append(asyncio.create_task(ctx.relay.run(), name=f"{name}-outbox"))
        ctx.tasks.append(asyncio.create_task(ctx.metrics.watch_loop_lag(), name=f"{name}-loop-lag"))
        if db.sqlite:
            ctx.tasks.append(asyncio.create_task(_restart_on_crash(_checkpoint, ctx), name=f"{name}-checkpoint"))
        for loop in loops:
            ctx.tasks.append(asyncio.create_task(_restart_on_crash(loop, ctx), name=f"{name}-{loop.__name__}"))
        settle_heap()

    async def on_shutdown() -> None:
        await fast_lane.stop()
        await asyncio.gather(*(cancel_and_wait(task) for task in ctx.tasks))
        ctx.tasks.clear()

    async def after_shutdown() -> None:
        # The broker has stopped: no handler waits on a committer any more.
        for committer in ctx.committers:
            await committer.close()
        await ctx.relay.close()
        if ctx.nc is not None and not ctx.nc.is_closed:
            # The loops are stopped and every outbox publish was acknowledged.
            await ctx.nc.close()
        await db.dispose()
        # A service process may end with os._exit, past atexit: its spans are written now.
        await asyncio.to_thread(telemetry.force_flush, name)

    return on_startup, after_startup, on_shutdown, after_shutdown


def _point_broker(broker: NatsBroker, servers: list[str]) -> None:
    """Give ``broker`` the servers known now. A service module's ``app`` is built
    at import, maybe before a starting `flowbus up` wrote its endpoint file, and
    faststream (pinned) takes its servers only when the broker is made."""
    broker._connection_kwargs["servers"] = servers


async def readiness(ctx: ServiceContext, *databases: Database) -> list[str]:
    """What a service cannot reach now: "nats", "database" (its own, then each of ``databases``)."""
    problems = []
    if not await ctx.broker.ping(timeout=2.0):
        problems.append("nats")
    for db in (ctx.db, *databases):
        try:
            async with db.read_session() as session:
                await session.execute(text("SELECT 1"))
        except Exception:
            problems.append("database")
            break
    return problems


async def serve_metrics(apps: Sequence[AsgiFastStream], sock: socket.socket) -> None:
    """Serve ``/metrics`` of ``apps`` (the services of one process, merged), ``/healthz`` and
    ``/readyz`` (every one of them ready) on ``sock`` until cancelled: what a process of
    `flowbus up` answers, since it serves none of the services' own ASGI apps."""
    contexts = [service_context(app) for app in apps]

    async def ready() -> list[str]:
        return [f"{ctx.name}: {problem}" for ctx in contexts for problem in await readiness(ctx)]

    await serve(process_app(lambda: [ctx.metrics for ctx in contexts], ready), sock)


def _health_routes(ctx: ServiceContext) -> list[tuple[str, Any]]:
    """/healthz (the process answers), /readyz (NATS and the database answer), /metrics."""

    @get(include_in_schema=False)
    async def healthz(scope: Any) -> AsgiResponse:
        return AsgiResponse(b'{"status":"ok"}', 200, headers={"content-type": "application/json"})

    @get(include_in_schema=False)
    async def readyz(scope: Any) -> AsgiResponse:
        problems = await readiness(ctx)
        body = json.dumps({"status": "ok" if not problems else "unavailable", "failing": problems})
        return AsgiResponse(body.encode(), 200 if not problems else 503, headers={"content-type": "application/json"})

    return [("/healthz", healthz), ("/readyz", readyz), ("/metrics", metrics_endpoint(lambda: [ctx.metrics]))]


async def _checkpoint(ctx: ServiceContext) -> None:
    while True:
        await asyncio.sleep(1.0)
        await ctx.db.checkpoint()


async def cancel_and_wait(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` and wait until it has ended, cancelling again if it
    swallowed the request (asyncio.wait_for on Python 3.11 can)."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=1.0)


async def _restart_on_crash(loop: Loop, ctx: ServiceContext) -> None:
    """Run a background loop, restarting it after an unexpected error."""
    while True:
        try:
            await loop(ctx)
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s loop %s crashed; restarting", ctx.name, loop.__name__)
            await asyncio.sleep(1.0)


_OUTBOX = Outbox.__table__  # type: ignore[attr-defined]


def _service_metrics(ctx: ServiceContext, stats: CommandStats) -> None:
    """What every service reports: its commands, group commits, events and outbox."""

    def collect(f: Families) -> None:
        f.gauge("flowbus_service_nats_connected", "1 while the service's NATS connection is up.").add(
            1.0 if ctx.connected_since is not None else 0.0
        )
        tally = ctx.relay.tally
        f.counter("flowbus_runs_created", "Flow runs created (committed).").add(tally.get(("created", ""), 0))
        transitions = f.counter(
            "flowbus_state_transitions",
            "States entered (committed), by the kind of run and the state's type; a new run's first"
            " Scheduled counts, in run_creation.",
            ["kind", "state"],
        )
        for (kind, state), count in sorted(tally.items()):
            if kind in ("flow_run", "task_run"):
                transitions.add(count, kind, state)
        refusals = f.counter(
            "flowbus_refusals", "Commands answered with an error, by subject and code.", ["subject", "code"]
        )
        for (subject, code), count in sorted(stats.refusals.items()):
            refusals.add(count, subject, code)
        latency = f.histogram(
            "flowbus_command_duration_seconds",
            "Time from a command's arrival to its reply (fast lane) or its handler's end, by subject.",
            ["subject"],
        )
        for subject, histogram in sorted(stats.latency.items()):
            latency.add(histogram, subject)
        batches = f.histogram("flowbus_group_commit_batch_size", "Commands per group commit.", ["committer"])
        for committer in ctx.committers:
            batches.add(committer.batch_sizes, committer.name)
        f.gauge("flowbus_fast_lane_pending", "Hot-path commands taken and not answered yet.").add(ctx.fast_lane.pending)
        f.counter(
            "flowbus_jetstream_publish_failures",
            "Event batches JetStream did not acknowledge (refused, timed out, NATS away); they are published again.",
        ).add(ctx.relay.publish_failures)
        f.gauge("flowbus_outbox_unpublished_batches", "Committed event batches in memory, not yet acknowledged.").add(
            ctx.relay.unpublished
        )

    async def outbox_backlog(f: Families) -> None:
        owner = _OUTBOX.c.owner == str(ctx.name)
        async with ctx.db.read_session() as session:
            rows = (await session.execute(select(func.count()).select_from(_OUTBOX).where(owner))).scalar_one()
            oldest = (
                await session.execute(select(_OUTBOX.c.created).where(owner).order_by(_OUTBOX.c.id).limit(1))
            ).scalar_one_or_none()
        f.gauge(
            "flowbus_outbox_backlog_rows",
            "Rows of this service's outbox (one per committed write); published ones go within about a second.",
        ).add(rows)
        age = (utcnow() - _aware(oldest)).total_seconds() if oldest is not None else 0.0
        f.gauge("flowbus_outbox_oldest_age_seconds", "Age of this service's oldest outbox row (0: none).").add(
            max(0.0, age)
        )

    ctx.metrics.add(collect)
    ctx.metrics.add_scrape("outbox", outbox_backlog)


def _aware(moment: datetime) -> datetime:
    """SQLite hands back naive UTC datetimes."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
