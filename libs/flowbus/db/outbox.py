"""The writing half of the outbox: a write's events, staged in its own transaction.

A unit of work (``Database.write_session()``, or a group committer's write
batch, flowbus.runtime.batching) collects the events its use case emits in
an :class:`OutboxBatch`. At commit, the service's :class:`Outbox` (its
relay, flowbus.runtime.outbox) writes them as one ``outbox`` row tagged
with the service's name, takes the batch once committed, and publishes it
before anyone hears of the change. A use case only emits: which service it
is, when and how events leave, are not its business.

Touches no subject itself: each event names its own subject and message id.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from flowbus.db.connection import WriteConnection


class Event(Protocol):
    """A message that says where it is published and under which ``Nats-Msg-Id``
    (the events of flowbus.schemas, built with flowbus.subjects)."""

    def subject(self) -> str: ...

    def msg_id(self) -> str: ...

    def model_dump_json(self) -> str: ...

    def tally_key(self) -> tuple[str, str] | None:
        """What /metrics counts this event as, once committed (``("created", "")``,
        ``("flow_run", "Running")``, ...); None: not counted."""
        ...


class OutboxBatch:
    """The events of one transaction, in the order they were emitted."""

    __slots__ = ("cleared", "hints", "messages", "row_id", "tally")

    def __init__(self) -> None:
        self.messages: list[tuple[str, str, bytes]] = []  # subject, message id, payload
        # Core NATS messages sent after the events, at most once and not stored (subjects.py, "hints").
        self.hints: list[tuple[str, bytes]] = []
        self.row_id: int | None = None  # the outbox row, once written
        self.cleared: list[int] = []  # earlier published rows this transaction deletes
        # The events counted by their tally key: added to the service's metrics once committed.
        self.tally: dict[tuple[str, str], int] = {}

    def emit(self, event: Event) -> bytes:
        """Stage ``event``; return its payload."""
        payload = event.model_dump_json().encode()
        self.messages.append((event.subject(), event.msg_id(), payload))
        key = event.tally_key()
        if key is not None:
            self.tally[key] = self.tally.get(key, 0) + 1
        return payload

    def hint(self, subject: str, payload: bytes) -> None:
        """Send ``payload`` on core NATS after the batch's events, at most once."""
        self.hints.append((subject, payload))


class Outbox(Protocol):
    """Where a unit of work's events go: implemented by the service's outbox relay."""

    async def stage(self, conn: WriteConnection, batch: OutboxBatch, now: datetime) -> None:
        """In the transaction, before its commit: write the batch's row (and delete rows published since)."""
        ...

    def committed(self, batch: OutboxBatch) -> None:
        """Right after the commit: take the batch, in commit order."""
        ...

    async def after_commit(self) -> None:
        """Once the transaction is over: publish what has committed, unless a group committer will
        (it publishes each batch before its replies)."""
        ...
