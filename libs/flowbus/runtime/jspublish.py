"""Publishing a batch of messages to JetStream and awaiting their acknowledgements together.

The outbox relay publishes a few hundred events per batch and must know that
every one of them is stored, before it replies or, in the "sent" reply mode
(docs/architecture.md, "Delivery guarantees"), before it lets the batch's
outbox row go: so sending and confirming are two steps. nats-py's
``publish_async`` does that one message at a time: per message a timeout
task around a semaphore, a random token from the OS, a future with its
callbacks and a parsed ``PubAck``. Here a batch is one waiter: each message gets a reply
subject under one inbox subscription (``<inbox>.<n>``), each acknowledgement
counts the waiter down, and the first error fails it. The messages still
leave in order on one connection, each with its ``Nats-Msg-Id``. Hints
(``flowbus.hint.*``) go out as plain core publishes, unacknowledged.

Writes the subjects it is given; reads acknowledgements on its own inbox.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError

# (subject, message id, payload)
Staged = tuple[str, str, bytes]


class PublishFailed(NatsError):
    """JetStream refused a message (no stream for its subject, a limit, ...)."""


class _Waiter:
    __slots__ = ("future", "left")

    def __init__(self, count: int) -> None:
        self.left = count
        self.future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def acked(self) -> None:
        self.left -= 1
        if self.left == 0 and not self.future.done():
            self.future.set_result(None)

    def failed(self, why: str) -> None:
        if not self.future.done():
            self.future.set_exception(PublishFailed(why))


def ack_error(msg: Msg) -> str | None:
    """Why an acknowledgement is not a stored message, or None when it is."""
    status = msg.headers.get("Status") if msg.headers else None
    if status:  # 503: no stream listens on the subject
        return f"status {status} {msg.headers.get('Description', '') if msg.headers else ''}".strip()
    if not msg.data:
        return "empty acknowledgement"
    if b'"error"' in msg.data:  # a stored message's acknowledgement never says error: skip parsing those
        error = json.loads(msg.data).get("error")
        if error:
            return f"{error.get('code', '?')} {error.get('description', '')}".strip()
    return None


@dataclass(frozen=True)
class Sent:
    """A batch handed to the connection, its acknowledgements still to come."""

    waiter: _Waiter
    tokens: list[str]


class BatchPublisher:
    """Publishes batches on one connection; ``publish`` returns once JetStream stored them all."""

    def __init__(self, nc: Client) -> None:
        self._nc = nc
        self._prefix = ""
        self._sub: Subscription | None = None
        self._tokens = itertools.count(1)
        self._waiting: dict[str, _Waiter] = {}

    async def _listen(self) -> None:
        self._prefix = f"{self._nc.new_inbox()}."
        self._sub = await self._nc.subscribe(f"{self._prefix}*", cb=self._on_ack)

    async def _on_ack(self, msg: Msg) -> None:
        waiter = self._waiting.pop(msg.subject[len(self._prefix) :], None)
        if waiter is None:
            return  # the batch gave up waiting
        why = ack_error(msg)
        if why is None:
            waiter.acked()
        else:
            waiter.failed(why)

    async def publish(self, messages: Sequence[Staged], timeout: float) -> None:
        """Publish ``messages`` in order; raise if one is refused or the acknowledgements take over ``timeout``."""
        await self.confirm(await self.send(messages), timeout)

    async def send(self, messages: Sequence[Staged]) -> Sent:
        """Hand ``messages`` to the connection in order; ``confirm`` awaits their acknowledgements."""
        if self._sub is None:
            await self._listen()
        sent = Sent(_Waiter(len(messages)), [])
        if not messages:
            sent.waiter.future.set_result(None)
            return sent
        try:
            for subject, msg_id, payload in messages:
                token = str(next(self._tokens))
                sent.tokens.append(token)
                self._waiting[token] = sent.waiter
                await self._nc.publish(subject, payload, reply=self._prefix + token, headers={"Nats-Msg-Id": msg_id})
        except BaseException:
            self._forget(sent)
            raise
        return sent

    async def confirm(self, sent: Sent, timeout: float) -> None:
        """Return once every message of ``sent`` is stored; raise if one is refused or ``timeout`` passes."""
        try:
            await asyncio.wait_for(sent.waiter.future, timeout)
        finally:
            self._forget(sent)

    async def hint(self, messages: Sequence[tuple[str, bytes]]) -> None:
        """Publish on core NATS, without acknowledgement (hints: losing one costs latency only)."""
        for subject, payload in messages:
            await self._nc.publish(subject, payload)

    def _forget(self, sent: Sent) -> None:
        for token in sent.tokens:
            self._waiting.pop(token, None)
