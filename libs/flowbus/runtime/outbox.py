"""The transactional outbox: events leave a service only after its commit.

A use case stages messages with :func:`stage` in the same transaction as
its writes. After the commit, :class:`OutboxRelay` publishes the rows to
JetStream in id order with ``Nats-Msg-Id`` set, then deletes them. A crash
between commit and publish loses nothing (the rows wait for the next relay
pass) and a crash between publish and delete duplicates nothing (JetStream
drops the repeat by its message id within the duplicate window).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

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
    """Publishes one owner's outbox rows; wake it with :meth:`kick` after a commit."""

    def __init__(self, owner: str, db: Database, js: JetStreamContext, batch: int = 256, idle: float = 1.0) -> None:
        self.owner = owner
        self.db = db
        self.js = js
        self.batch = batch
        self.idle = idle
        self._wake = asyncio.Event()

    def kick(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while True:
            try:
                while await self.flush() == self.batch:
                    pass
            except asyncio.CancelledError:
                raise
            except Exception:
                # NATS or the database is briefly away: the rows stay and are retried.
                log.exception("outbox relay of %s failed; retrying", self.owner)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.idle)
            self._wake.clear()

    async def flush(self) -> int:
        """Publish up to one batch of pending rows; returns how many were sent."""
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
