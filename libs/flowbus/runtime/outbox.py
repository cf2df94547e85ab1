"""The transactional outbox relay: events leave a service only after its commit.

A unit of work's events (an ``OutboxBatch``, flowbus.db.outbox) are staged
as one row, tagged with the service's name, in its transaction; once it
commits, the service's :class:`OutboxRelay` publishes them from memory, in
commit order, before any reply, and its sweep publishes what a failed or
crashed attempt left (docs/architecture.md, "Delivery guarantees").
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterable
from contextvars import ContextVar
from datetime import datetime, timedelta
from typing import Any

from nats.aio.client import Client
from nats.errors import Error as NatsError
from sqlalchemy import bindparam, delete, select

from flowbus.db.connection import WriteConnection
from flowbus.db.engine import Database
from flowbus.db.outbox import OutboxBatch
from flowbus.db.tables import Outbox, utcnow
from flowbus.runtime.jspublish import BatchPublisher, Sent, Staged

log = logging.getLogger(__name__)

_table = Outbox.__table__  # type: ignore[attr-defined]
_PENDING = (
    select(_table.c.id, _table.c.messages)
    .where(_table.c.owner == bindparam("owner"), _table.c.created <= bindparam("before"))
    .order_by(_table.c.id)
    .limit(bindparam("limit"))
)
_DELETE = delete(_table).where(_table.c.id.in_(bindparam("ids", expanding=True)))


def pack(messages: Iterable[Staged]) -> bytes:
    return json.dumps([[subject, msg_id, payload.decode()] for subject, msg_id, payload in messages]).encode()


def unpack(packed: bytes) -> list[Staged]:
    return [(subject, msg_id, payload.encode()) for subject, msg_id, payload in json.loads(packed)]


# Set in a group committer's worker: it publishes each batch itself, before
# the batch's replies and while the next batch is written, so its units of
# work only hand their events over.
_committer_publishes: ContextVar[bool] = ContextVar("flowbus_committer_publishes", default=False)


def committer_publishes() -> None:
    """Mark the running task as a group committer's worker (see ``after_commit``)."""
    _committer_publishes.set(True)


class OutboxRelay:
    """One service's outbox: stages its units of work's events, publishes them in
    commit order (one flusher at a time), sweeps the rows its name tags.

    It becomes ``db``'s outbox: every write through ``db`` hands it its events.
    """

    def __init__(
        self,
        owner: str,
        db: Database,
        nc: Client | None = None,
        batch: int = 256,
        idle: float = 1.0,
        ack_timeout: float = 5.0,
        grace: float = 5.0,
        reply_after_stored: bool = True,
        publish_wait: float = 2.0,
    ) -> None:
        self.ack_timeout = ack_timeout
        self.reply_after_stored = reply_after_stored
        self.publish_wait = publish_wait
        self.owner = str(owner)
        self.db = db
        db.outbox = self
        self._publisher = BatchPublisher(nc) if nc is not None else None
        self.batch = batch
        self.idle = idle
        self.grace = timedelta(seconds=grace)
        self._lock = asyncio.Lock()
        self._committed: list[OutboxBatch] = []  # committed, not yet published
        self._published: set[int] = set()  # published, their rows not yet deleted
        # Of those, the ids a transaction under way deletes: concurrent writers
        # (PostgreSQL) each take others, never waiting on each other's row locks.
        self._clearing: set[int] = set()
        # Sent without waiting (``reply_after_stored`` off): row id -> the task awaiting the acks.
        self._confirming: dict[int, asyncio.Task[None]] = {}
        # For /metrics: the committed events by tally key, and the publishes JetStream did not acknowledge.
        self.tally: dict[tuple[str, str], int] = {}
        self.publish_failures = 0

    def connect(self, nc: Client) -> None:
        """Publish through ``nc`` from now on (at start-up, once NATS is connected)."""
        self._publisher = BatchPublisher(nc)

    @property
    def connected(self) -> bool:
        return self._publisher is not None

    @property
    def unpublished(self) -> int:
        """Committed batches not acknowledged yet (held in memory, or awaiting their acks)."""
        return len(self._committed) + len(self._confirming)

    async def stage(self, conn: WriteConnection, batch: OutboxBatch, now: datetime) -> None:
        """Write ``batch`` as one row in its transaction, with the deletion of the rows published so far.

        Riding on each batch's commit, the deletes are small and even. Should the transaction roll back, the ids
        stay for the next batch or the sweep.
        """
        clear = self._published - self._clearing
        if clear:
            batch.cleared = sorted(clear)
            self._clearing.update(clear)  # given back by committed() or, on a rollback, by the sweep
        if batch.messages or batch.cleared:
            messages = pack(batch.messages) if batch.messages else None
            batch.row_id = await conn.write_outbox(self.owner, messages, now, batch.cleared)

    def committed(self, batch: OutboxBatch) -> None:
        """Take a batch whose transaction has committed, to publish from memory."""
        self._published.difference_update(batch.cleared)
        self._clearing.difference_update(batch.cleared)
        if batch.row_id is not None:
            self._committed.append(batch)
        for key, count in batch.tally.items():
            self.tally[key] = self.tally.get(key, 0) + count

    async def after_commit(self) -> None:
        """A unit of work is over: publish what has committed, acknowledged, unless the group
        committer that runs it will (before its replies, in the service's reply mode)."""
        if not _committer_publishes.get():
            await self.publish_before_reply(stored=True)

    async def publish_before_reply(self, *, stored: bool | None = None) -> None:
        """Publish the committed batches now, as a reply is about to go out.

        ``stored``: wait for JetStream's acknowledgements (default: the
        service's reply mode). A publish failure does not fail the command:
        it is committed, and the sweep publishes its row once NATS is back;
        after ``publish_wait`` seconds the reply goes anyway (the publish
        goes on).
        """
        if not self.connected:
            return
        try:
            # Shielded: on a time-out the publish goes on; only the reply stops waiting.
            await asyncio.wait_for(asyncio.shield(self.publish_committed(stored=stored)), self.publish_wait)
        except TimeoutError:
            log.warning("%s: events still publishing (NATS fail-over?); replying anyway", self.owner)
        except Exception as exc:
            log.warning("%s: events stay in the outbox for the next sweep (%s)", self.owner, exc)

    async def run(self) -> None:
        """Background sweep: deletes published rows, publishes what a failed or crashed attempt left."""
        while True:
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except NatsError as exc:
                log.warning("outbox of %s waits for NATS (%s)", self.owner, type(exc).__name__)
            except Exception:
                # NATS or the database is briefly away: the rows stay and are retried.
                log.exception("outbox relay of %s failed; retrying", self.owner)
            await asyncio.sleep(self.idle)

    async def publish_committed(self, *, stored: bool | None = None) -> None:
        """Publish the committed batches handed over so far, from memory, in commit order.

        Called after a commit and before the reply (``publish_before_reply``). ``stored``
        (default: ``reply_after_stored``): the reply mode (docs/architecture.md, "Delivery guarantees").
        On failure the batches stay for the sweep.
        """
        async with self._lock:
            await self._publish_committed(self.reply_after_stored if stored is None else stored)

    async def publish_pending(self) -> None:
        """Publish the committed batches, then every row of this owner in the table
        (whatever a crashed instance, or an earlier failure, left)."""
        await self._drain(timedelta(0))

    async def sweep(self) -> None:
        """Delete published rows; publish rows older than the grace period."""
        await self._drain(self.grace)

    async def _drain(self, older_than: timedelta) -> None:
        async with self._lock:
            await self._publish_committed(self.reply_after_stored)
            await self._delete_published()
            while await self._flush_rows(utcnow() - older_than) == self.batch:
                pass

    async def _publish_committed(self, stored: bool) -> None:
        while self._committed:
            batch = self._committed[0]
            assert batch.row_id is not None
            if stored:
                await self._publish(batch.messages)
                self._committed.remove(batch)  # not pop(0): a failed batch may have come back to the front
                self._published.add(batch.row_id)
            else:
                try:
                    sent = await self._sender.send(batch.messages)
                except NatsError:
                    self.publish_failures += 1
                    raise
                self._committed.remove(batch)
                self._confirming[batch.row_id] = asyncio.create_task(self._confirm(batch, sent))
            hints, batch.hints = batch.hints, []
            await self._sender.hint(hints)

    async def _confirm(self, batch: OutboxBatch, sent: Sent) -> None:
        assert batch.row_id is not None
        try:
            await self._sender.confirm(sent, self.ack_timeout)
        except (NatsError, TimeoutError) as exc:
            self.publish_failures += 1
            log.warning("outbox of %s: a batch was not acknowledged (%s); publishing it again", self.owner, exc)
            self._committed.insert(0, batch)
        else:
            self._published.add(batch.row_id)
        finally:
            del self._confirming[batch.row_id]

    async def close(self) -> None:
        """Wait for the acknowledgements still outstanding (at most ``ack_timeout``)."""
        await asyncio.gather(*self._confirming.values(), return_exceptions=True)

    async def _delete_published(self) -> None:
        if self._published:
            ids = sorted(self._published)
            async with self.db.write_connection() as conn:
                await conn.execute(_DELETE, {"ids": ids})
            self._published.difference_update(ids)
            self._clearing.difference_update(ids)

    async def _flush_rows(self, before: datetime) -> int:
        rows = await self._pending(before)
        # A batch that committed meanwhile is published from memory, not here,
        # and one whose acknowledgements are on their way is not sent twice.
        waiting = {batch.row_id for batch in self._committed} | self._confirming.keys()
        done = []
        for row_id, packed in rows:
            if row_id not in waiting:
                await self._publish(unpack(packed))
                done.append(row_id)
        if done:
            async with self.db.write_connection() as conn:
                await conn.execute(_DELETE, {"ids": done})
        return len(rows)

    async def _pending(self, before: datetime) -> list[Any]:
        # Through write(): on SQLite that runs inline, without a thread hop.
        async with self.db.write_connection() as conn:
            params = {"owner": self.owner, "before": before, "limit": self.batch}
            return list((await conn.execute(_PENDING, params)).all())

    @property
    def _sender(self) -> BatchPublisher:
        assert self._publisher is not None, "the relay publishes after start-up"
        return self._publisher

    async def _publish(self, messages: list[Staged]) -> None:
        # Publishes leave one connection in order, so per-entity order holds.
        # On failure the rows stay; the sweep publishes them again (deduplicated by id).
        try:
            await self._sender.publish(messages, self.ack_timeout)
        except (NatsError, TimeoutError):
            self.publish_failures += 1
            raise
