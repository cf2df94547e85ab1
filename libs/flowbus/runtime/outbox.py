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

from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from sqlalchemy import delete, select
from sqlmodel.ext.asyncio.session import AsyncSession

from flowbus.db.engine import Database
from flowbus.db.tables import Outbox
from flowbus.schemas.common import Message

log = logging.getLogger(__name__)


def stage(session: AsyncSession, owner: str, subject: str, message: Message, msg_id: str) -> None:
    session.add(Outbox(owner=owner, subject=subject, msg_id=msg_id, payload=message.model_dump_json().encode()))


class OutboxRelay:
    """Publishes one owner's outbox rows, in id order, one flusher at a time."""

    def __init__(self, owner: str, db: Database, js: JetStreamContext, batch: int = 256, idle: float = 1.0) -> None:
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
        async with self.db.session() as session:
            rows = (
                await session.execute(
                    select(Outbox.id, Outbox.subject, Outbox.msg_id, Outbox.payload)  # type: ignore[call-overload]
                    .where(Outbox.owner == self.owner)
                    .order_by(Outbox.id)
                    .limit(self.batch)
                )
            ).all()
        if not rows:
            return 0
        # Publishes leave one connection in order, so per-entity order holds.
        await asyncio.gather(
            *(
                self.js.publish(subject, payload, headers={"Nats-Msg-Id": msg_id})
                for _id, subject, msg_id, payload in rows
            )
        )
        async with self.db.transaction() as session:
            await session.execute(delete(Outbox).where(Outbox.id.in_([r[0] for r in rows])))  # type: ignore[union-attr]
        return len(rows)
