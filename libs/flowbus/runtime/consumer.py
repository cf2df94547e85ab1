"""Durable JetStream pull consumers that come back when deleted, and batch loops over them.

``DurablePull`` binds a durable pull consumer (creating it if absent) and
fetches from it. When a fetch fails and the server says the consumer is
gone (deleted by an operator or an attacker, or expired), it creates the
consumer again with the same configuration, resuming after the newest
message this instance fetched, or after the consumer's acknowledgement
floor when it fetched none (never from the stream's start, which would
replay days of messages). Any other failure (a stream electing a new
leader) is waited out: the durable keeps its place.

``consume`` runs a service loop over one: messages that do not parse are
terminated (they can never succeed, so redelivering them would only wedge
the consumer); the rest are handled together and acked after the handler
returns, so a crash mid-batch means redelivery, never loss. Handlers must
therefore be idempotent. Every instance of a service binds the same
durable, so instances share the work.

Reads: the stream and durable it is given (``$JS.API.CONSUMER.*`` requests).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError
from opentelemetry import trace
from pydantic import BaseModel, ValidationError

from flowbus.runtime import telemetry

log = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)

# How long a loop waits after a failed fetch before the next one.
RETRY_SECONDS = 0.5


class DurablePull:
    """A durable pull consumer of ``stream``, recreated with ``config`` whenever it disappears."""

    def __init__(self, js: JetStreamContext, stream: str, durable: str, config: ConsumerConfig) -> None:
        self.js = js
        self.stream = stream
        self.durable = durable
        self.config = config.evolve(durable_name=durable, name=durable)
        # Stream sequence after which a recreated consumer resumes.
        self._resume_after = 0
        self._psub: JetStreamContext.PullSubscription | None = None
        self.recreated = 0

    async def start(self) -> None:
        """Bind the durable, creating it when absent."""
        self._psub = await self.js.pull_subscribe(
            "", durable=self.durable, stream=self.stream, config=self.config.evolve()
        )
        try:
            info = await self.js.consumer_info(self.stream, self.durable)
        except NatsError:
            return  # only the starting point of a later recreation is less precise
        self._resume_after = max(self._resume_after, info.ack_floor.stream_seq or 0)

    async def fetch(self, batch: int, timeout: float) -> list[Msg]:
        """Up to ``batch`` messages; raises ``TimeoutError`` (or nats-py's) when none came
        within ``timeout``. A failure is handled here (the consumer recreated, or a
        pause while the stream is away) and returns no messages."""
        assert self._psub is not None, "start() first"
        try:
            msgs = await self._psub.fetch(batch, timeout=timeout)
        except (TimeoutError, NatsTimeout):
            raise
        except NatsError as exc:
            await self._recover(exc)
            return []
        for msg in msgs:
            self._resume_after = max(self._resume_after, msg.metadata.sequence.stream)
        return msgs

    async def _recover(self, exc: NatsError) -> None:
        try:
            await self.js.consumer_info(self.stream, self.durable)
        except NotFoundError:
            await self._recreate()
            return
        except NatsError:
            pass
        log.warning("%s: consumer %s unavailable (%s); retrying", self.stream, self.durable, type(exc).__name__)
        await asyncio.sleep(RETRY_SECONDS)

    async def _recreate(self) -> None:
        config = self.config.evolve()
        if self._resume_after:
            config = config.evolve(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=self._resume_after + 1)
        try:
            await self.js.add_consumer(self.stream, config)
        except NatsError as exc:
            # Another instance recreated it first (a different start), or the stream is away.
            log.warning("%s: consumer %s not recreated here (%s)", self.stream, self.durable, exc)
            await asyncio.sleep(RETRY_SECONDS)
            return
        self.recreated += 1
        log.warning(
            "%s: consumer %s had disappeared; recreated, resuming after stream sequence %d",
            self.stream,
            self.durable,
            self._resume_after,
        )


async def consume(
    js: JetStreamContext,
    *,
    stream: str,
    durable: str,
    filter_subjects: Sequence[str],
    model: type[M],
    handle: Callable[[list[tuple[str, M]]], Awaitable[None]],
    batch: int = 256,
    ack_wait: float = 30.0,
    span_name: str | None = None,
    service: str | None = None,
) -> None:
    """Fetch, parse, handle and ack for ever; ``handle`` gets (subject, message) pairs.
    ``span_name``: each message with a W3C ``traceparent`` header gets a span of that
    name (``service``'s) in its trace, from before the handler to its end."""
    consumer = DurablePull(
        js,
        stream,
        durable,
        ConsumerConfig(
            filter_subjects=list(filter_subjects),
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            max_ack_pending=batch * 40,
            ack_wait=ack_wait,
        ),
    )
    await consumer.start()
    while True:
        try:
            msgs = await consumer.fetch(batch, timeout=1.0)
        except (TimeoutError, NatsTimeout):
            continue
        parsed: list[tuple[str, M]] = []
        good = []
        for msg in msgs:
            try:
                parsed.append((msg.subject, model.model_validate_json(msg.data)))
                good.append(msg)
            except ValidationError:
                log.warning("dropping a malformed %s on %s", model.__name__, msg.subject)
                await msg.term()
        spans = _spans(span_name, service, good) if span_name is not None else []
        try:
            if parsed:
                await handle(parsed)
        finally:
            for span in spans:
                span.end()
        await asyncio.gather(*(m.ack() for m in good))


def _spans(name: str, service: str | None, msgs: list[Msg]) -> list[trace.Span]:
    spans = []
    tracer = telemetry.tracer(service)
    for msg in msgs:
        parent = telemetry.extract(msg.headers)
        if parent is not None:
            spans.append(
                tracer.start_span(
                    name,
                    context=parent,
                    kind=trace.SpanKind.CONSUMER,
                    attributes={"messaging.destination.name": msg.subject},
                )
            )
    return spans
