"""Durable JetStream pull consumers that process messages in batches.

A service loop hands ``consume`` a parser and a batch handler: messages that
do not parse are terminated (they can never succeed, so redelivering them
would only wedge the consumer); the rest are handled together and acked
after the handler returns, so a crash mid-batch means redelivery, never loss.
Handlers must therefore be idempotent. Every instance of a service binds
the same durable, so instances share the work.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from pydantic import BaseModel, ValidationError

log = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)


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
) -> None:
    """Fetch, parse, handle and ack for ever; ``handle`` gets (subject, message) pairs."""
    psub = await js.pull_subscribe(
        "",
        durable=durable,
        stream=stream,
        config=ConsumerConfig(
            filter_subjects=list(filter_subjects),
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            max_ack_pending=batch * 40,
            ack_wait=ack_wait,
        ),
    )
    while True:
        try:
            msgs = await psub.fetch(batch, timeout=1.0)
        except (TimeoutError, NatsTimeout):
            continue
        except NatsError as exc:
            log.warning("%s: consumer %s unavailable (%s); retrying", stream, durable, type(exc).__name__)
            await asyncio.sleep(0.5)
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
        if parsed:
            await handle(parsed)
        await asyncio.gather(*(m.ack() for m in good))
