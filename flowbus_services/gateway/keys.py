"""The gateway's API keys: the key store (the one table the gateway writes) and its NATS commands.

A key is ``fbk_`` followed by 43 URL-safe characters (``secrets.token_urlsafe(32)``:
256 random bits). It is shown once, to its creator; the table keeps only its
SHA-256 (hex), so a copy of the database gives no key. With 256 random bits a
slow password hash would add nothing: nobody can search that space. A request's
key is hashed and looked up by hash (a unique index); the stored hash is then
compared with ``hmac.compare_digest``, so no comparison of secrets depends on
where they first differ. ``last_used`` is written at most once a minute per key
(a conditional UPDATE, off the request's path), so requests do not each write.
Refusals are logged with the reason and never with the key (at most one line a
second, with a count of those not logged).

Revocation, and the choice made here: a cache invalidated by events. Verified
keys are cached in each gateway process, by hash, for up to ``CACHE_SECONDS``,
so a request usually costs no database read. Deleting a key publishes
``flowbus.evt.api_key.<id>.deleted`` through the outbox (staged in the delete's
transaction and stored by JetStream before the reply goes out, so NATS has
already routed it to every listener). Every gateway instance listens to
``flowbus.evt.api_key.*.*`` on core NATS (no queue group: each instance gets
each event) and drops the key as it arrives; the instance that served the
delete drops it before it replies. So a revoked key is refused from its next
request on, on every instance. The corners:

- a lookup that raced with a deletion is not cached (a generation counter);
- while an instance's NATS connection is down, or once it has reconnected
  (events may have been missed), its cache is emptied and bypassed;
- should the event's publish fail (the deleter's NATS away), the outbox
  sweep publishes it later, and ``CACHE_SECONDS`` bounds how long another
  instance can still accept the key meanwhile.

Lookups go to the primary database (``ctx.db``), never to the read replica,
which may lag behind a deletion.

Reads: ``flowbus.cmd.gateway.create_api_key``, ``list_api_keys``,
``delete_api_key`` (queue group ``gateway``); ``flowbus.evt.api_key.*.*``
(core NATS, every instance). Writes: replies; ``flowbus.evt.api_key.<id>.created``
and ``.deleted`` (through the outbox).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from sqlalchemy.exc import IntegrityError

from flowbus import subjects
from flowbus.db.engine import Database
from flowbus.db.tables import ApiKey, utcnow
from flowbus.runtime.service import ServiceContext
from flowbus.schemas.api_keys import (
    ApiKeyAdded,
    ApiKeyCreated,
    ApiKeyDeleted,
    ApiKeyList,
    ApiKeyOut,
    CreateApiKey,
    DeleteApiKey,
    ListApiKeys,
    Role,
)
from flowbus.schemas.common import Conflict, Message, NotFound, Reply
from flowbus_services.gateway.auth import Principal

log = logging.getLogger(__name__)

KEY_PREFIX = "fbk_"
KEY_RANDOM_BYTES = 32
# What a key looks like: anything else is refused without a database read.
KEY_PATTERN = re.compile(r"fbk_[A-Za-z0-9_-]{43}")
# How long a verified key is trusted without a new read (deletions evict it at once).
CACHE_SECONDS = 60.0
# last_used is written at most this often per key.
LAST_USED_EVERY = timedelta(minutes=1)
# At most one refusal line this often; the others are counted into the next.
REFUSAL_LOG_EVERY_SECONDS = 1.0

_table = ApiKey.__table__  # type: ignore[attr-defined]


def new_key() -> str:
    """A fresh key: 256 random bits, URL-safe, with a prefix that secret scanners can spot."""
    return KEY_PREFIX + secrets.token_urlsafe(KEY_RANDOM_BYTES)


def key_hash(key: str) -> str:
    """The SHA-256 of a key, hex: what the table stores."""
    return hashlib.sha256(key.encode()).hexdigest()


def _out(row: Any) -> ApiKeyOut:
    return ApiKeyOut(id=row.id, name=row.name, role=Role(row.role), created=row.created, last_used=row.last_used)


@dataclass(frozen=True)
class _Verified:
    principal: Principal
    until: float  # time.monotonic()


class KeyStore:
    """Creates, lists, deletes and verifies keys; ``verify`` is what the HTTP side calls."""

    def __init__(self, db: Database, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.db = db
        self._clock = clock
        self._cache: dict[str, _Verified] = {}  # by key hash
        # Bumped by every deletion: a lookup that overlapped one is not cached.
        self._generation = 0
        self._nc: NatsClient | None = None
        self._subscription: Subscription | None = None
        self._reconnects = 0
        self._touches: set[asyncio.Task[None]] = set()
        self._refused = 0
        self._refusal_logged = float("-inf")

    # ---- revocation on every instance ------------------------------------------

    async def listen(self, nc: NatsClient) -> None:
        """Hear every key event on ``nc`` (every instance: no queue group); the cache works from now on."""
        await self.close()
        self._nc = nc
        self._reconnects = int(nc.stats.get("reconnects", 0))
        self._subscription = await nc.subscribe(subjects.API_KEY_EVENTS, cb=self._on_event)

    async def close(self) -> None:
        """Stop listening (the cache is bypassed from then on) and let pending last_used writes finish."""
        subscription, self._subscription, self._nc = self._subscription, None, None
        self._cache.clear()
        if subscription is not None:
            try:
                await subscription.unsubscribe()
            except Exception:  # the connection is closing: nothing more will arrive anyway
                log.debug("unsubscribing from key events failed", exc_info=True)
        if self._touches:
            await asyncio.wait(set(self._touches), timeout=5.0)

    async def _on_event(self, msg: Msg) -> None:
        parts = msg.subject.split(".")
        if len(parts) == 5 and parts[-1] == "deleted":
            self.forget(parts[3])

    def forget(self, key_id: str) -> None:
        """Refuse the key with this id from now on, here (the event does it on the other instances)."""
        self._generation += 1
        for digest in [d for d, v in self._cache.items() if v.principal.key_id == key_id]:
            del self._cache[digest]

    def _cache_usable(self) -> bool:
        """The cache can be trusted only while every deletion event reaches this process."""
        nc = self._nc
        if nc is None or not nc.is_connected:
            self._cache.clear()
            return False
        reconnects = int(nc.stats.get("reconnects", 0))
        if reconnects != self._reconnects:  # events may have been published while away
            self._reconnects = reconnects
            self._cache.clear()
        return True

    # ---- verification --------------------------------------------------------------

    async def verify(self, token: str) -> Principal | None:
        """The key's principal, or None (and a log line without the key) when it is malformed, unknown or revoked."""
        if KEY_PATTERN.fullmatch(token) is None:
            self._log_refusal("a malformed API key")
            return None
        digest = key_hash(token)
        cached = self._cache_usable()
        now = self._clock()
        if cached:
            hit = self._cache.get(digest)
            if hit is not None and hit.until > now:
                return hit.principal
        generation = self._generation
        async with self.db.read_connection() as conn:
            row = (
                await conn.execute(
                    sa.select(_table.c.id, _table.c.name, _table.c.role, _table.c.key_hash, _table.c.last_used).where(
                        _table.c.key_hash == digest
                    )
                )
            ).first()
        if row is None or not hmac.compare_digest(row.key_hash, digest):
            self._log_refusal(f"an unknown or revoked API key (sha256 {digest[:8]}...)")
            return None
        principal = Principal(name=row.name, role=Role(row.role), key_id=row.id)
        if cached and generation == self._generation:
            self._cache[digest] = _Verified(principal, now + CACHE_SECONDS)
        if row.last_used is None or row.last_used < utcnow() - LAST_USED_EVERY:
            self._touch(row.id)
        return principal

    def _touch(self, key_id: str) -> None:
        task = asyncio.create_task(self._write_last_used(key_id), name=f"api-key-last-used-{key_id}")
        self._touches.add(task)
        task.add_done_callback(self._touches.discard)

    async def _write_last_used(self, key_id: str) -> None:
        now = utcnow()
        try:
            async with self.db.write_connection() as conn:
                await conn.execute(
                    sa.update(_table)
                    .where(_table.c.id == key_id)
                    # Several instances, or requests in flight together: one write a minute.
                    .where(sa.or_(_table.c.last_used.is_(None), _table.c.last_used < now - LAST_USED_EVERY))
                    .values(last_used=now)
                )
        except Exception:
            log.warning("could not record the last use of API key %s", key_id, exc_info=True)

    def _log_refusal(self, what: str) -> None:
        self._refused += 1
        now = self._clock()
        if now - self._refusal_logged < REFUSAL_LOG_EVERY_SECONDS:
            return
        more = f" ({self._refused - 1} more refused since the last line)" if self._refused > 1 else ""
        log.warning("refused a request with %s%s", what, more)
        self._refused = 0
        self._refusal_logged = now

    # ---- the commands ---------------------------------------------------------------

    async def create(self, cmd: CreateApiKey) -> ApiKeyCreated:
        key = new_key()
        try:
            async with self.db.write_session() as session:
                taken = await session.execute(sa.select(_table.c.id).where(_table.c.name == cmd.name))
                if taken.first() is not None:
                    raise Conflict(f'An API key named "{cmd.name}" already exists.')
                row = ApiKey(name=cmd.name, role=cmd.role.value, key_hash=key_hash(key), created=utcnow())
                session.add(row)
                await session.flush()
                out = _out(row)
                session.emit(ApiKeyAdded(**dict(out)))
        except IntegrityError:  # another instance created the same name meanwhile
            raise Conflict(f'An API key named "{cmd.name}" already exists.') from None
        log.info("created API key %s (role %s)", out.name, out.role.value)
        return ApiKeyCreated(**dict(out), key=key)

    async def list(self) -> ApiKeyList:
        async with self.db.read_connection() as conn:
            rows = await conn.execute(
                sa.select(_table.c.id, _table.c.name, _table.c.role, _table.c.created, _table.c.last_used).order_by(
                    _table.c.name
                )
            )
            return ApiKeyList(keys=[_out(row) for row in rows])

    async def delete(self, cmd: DeleteApiKey) -> ApiKeyDeleted:
        async with self.db.write_session() as session:
            found = (await session.execute(sa.select(_table.c.id).where(_table.c.name == cmd.name))).first()
            if found is None:
                raise NotFound(f'No API key is named "{cmd.name}".')
            await session.execute(sa.delete(_table).where(_table.c.id == found.id))
            deleted = ApiKeyDeleted(id=found.id, name=cmd.name)
            session.emit(deleted)
        self.forget(deleted.id)
        log.info("deleted API key %s", cmd.name)
        return deleted


# ---- NATS handlers -----------------------------------------------------------------


def register(ctx: ServiceContext) -> KeyStore:
    """Serve the key commands of ``ctx`` (queue group ``gateway``) from a new key store, returned."""
    store = KeyStore(ctx.db)

    async def list_keys(_query: ListApiKeys) -> ApiKeyList:
        return await store.list()

    commands: tuple[tuple[str, type[Message], type[Message], Callable[[Any], Awaitable[Message]]], ...] = (
        (subjects.GatewayCommands.CREATE_API_KEY, CreateApiKey, ApiKeyCreated, store.create),
        (subjects.GatewayCommands.LIST_API_KEYS, ListApiKeys, ApiKeyList, list_keys),
        (subjects.GatewayCommands.DELETE_API_KEY, DeleteApiKey, ApiKeyDeleted, store.delete),
    )
    for subject, model, reply, usecase in commands:
        _serve(ctx, subject, model, reply, usecase)
    return store


def _serve(
    ctx: ServiceContext,
    subject: str,
    model: type[Message],
    reply: type[Message],
    usecase: Callable[[Any], Awaitable[Message]],
) -> None:
    async def handle(cmd: Any) -> Reply[Any]:
        return Reply.success(await usecase(cmd))

    # faststream validates the payload and documents the subject from the annotations.
    handle.__annotations__ = {"cmd": model, "return": Reply[reply]}  # type: ignore[valid-type]
    handle.__name__ = handle.__qualname__ = subject.rsplit(".", 1)[1]
    ctx.subscriber(subject, queue=subjects.GatewayCommands.QUEUE, title=handle.__name__)(handle)
