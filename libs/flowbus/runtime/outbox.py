"""The transactional outbox: events leave a service only after its commit.

A use case stages messages with :func:`stage` in the same transaction as
its writes. After the commit, the handler awaits
:meth:`OutboxRelay.publish_pending`, which publishes the rows to JetStream in
id order with ``Nats-Msg-Id`` set, then deletes them; a background sweep
retries whatever a failed attempt left. A crash
between commit and publish loses nothing (the rows wait for the next relay
pass) and a crash between publish and delete duplicates nothing (JetStream
drops the repeat by its message id within the duplicate window).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from sqlalchemy import bindparam, delete, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlmodel.ext.asyncio.session import AsyncSession

from flowbus.db.bulk import Bulk
from flowbus.db.engine import Database
from flowbus.db.tables import Outbox, utcnow
from flowbus.schemas.common import Message

log = logging.getLogger(__name__)


def stage(session: AsyncSession, owner: str, subject: str, message: Message, msg_id: str) -> None:
    """Stage one message in the session's transaction (the ORM use cases)."""
    session.add(Outbox(**outbox_row(owner, subject, message, msg_id)))


_table = Outbox.__table__  # type: ignore[attr-defined]
_INSERT = Bulk(insert(_table))
_PENDING = (
    select(_table.c.id, _table.c.subject, _table.c.msg_id, _table.c.payload)
    .where(_table.c.owner == bindparam("owner"))
    .order_by(_table.c.id)
    .limit(bindparam("limit"))
)
_DELETE = delete(_table).where(_table.c.id.in_(bindparam("ids", expanding=True)))


def outbox_row(owner: str, subject: str, message: Message, msg_id: str) -> dict[str, Any]:
    """One outbox row for :func:`stage_rows` (the batched, ORM-free hot path)."""
    return {
        "owner": owner,
        "subject": subject,
        "msg_id": msg_id,
        "payload": message.model_dump_json().encode(),
        "created": utcnow(),
    }


async def stage_rows(conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
    """Stage many rows with one prebuilt INSERT, in the caller's transaction."""
    await _INSERT.run(conn, rows)


class OutboxRelay:
    """Publishes one owner's outbox rows, in id order, one flusher at a time."""

    def __init__(
        self,
        owner: str,
        db: Database,
        js: JetStreamContext,
        batch: int = 256,
        idle: float = 1.0,
        ack_timeout: float = 5.0,
    ) -> None:
        self.ack_timeout = ack_timeout
        self.owner = owner
        self.db = db
        self.js = js
        self.batch = batch
        self.idle = idle
        self._lock = asyncio.Lock()

    async def run(self) -> None:
        """Background sweep: publishes rows a failed or crashed earlier attempt left."""
        while True:
            try:
                await self.publish_pending()
            except asyncio.CancelledError:
                raise
            except NatsError as exc:
                log.warning("outbox of %s waits for NATS (%s)", self.owner, type(exc).__name__)
            except Exception:
                # NATS or the database is briefly away: the rows stay and are retried.
                log.exception("outbox relay of %s failed; retrying", self.owner)
            await asyncio.sleep(self.idle)

    async def publish_pending(self) -> None:
        """Publish every pending row. Handlers await this after their commit and
        before replying, so whoever acts on a reply acts after its events are in
        the stream: per-run order holds across services."""
        async with self._lock:
            while await self._flush() == self.batch:
                pass

    async def _flush(self) -> int:
        rows = await self._pending()
        if not rows:
            return 0
        await self._publish(rows)
        async with self.db.write() as conn:
            await conn.execute(_DELETE, {"ids": [r[0] for r in rows]})
        return len(rows)

    async def _pending(self) -> list[Any]:
        # Through write(): on SQLite that runs inline, without a thread hop.
        async with self.db.write() as conn:
            return list((await conn.execute(_PENDING, {"owner": self.owner, "limit": self.batch})).all())

    async def _publish(self, rows: list[Any]) -> None:
        # Publishes leave one connection in order, so per-entity order holds;
        # acknowledgements are awaited together (publish_async skips a
        # request's per-message set-up).
        acks = [
            await self.js.publish_async(subject, payload, headers={"Nats-Msg-Id": msg_id})
            for _id, subject, msg_id, payload in rows
        ]
        try:
            await asyncio.wait_for(asyncio.gather(*acks), self.ack_timeout)
        except BaseException:
            for ack in acks:
                ack.cancel()
            raise  # the rows stay; the sweep publishes them again (deduplicated by id)
