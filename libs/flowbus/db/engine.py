"""Async engines and sessions for SQLite (embedded default) and PostgreSQL.

Reads and writes are told apart by name: ``read_session()`` /
``read_connection()`` and ``write_session()`` / ``write_connection()``.
On SQLite, writes begin ``BEGIN IMMEDIATE`` and queue on
:class:`SqliteWriteLock`, and ``write_connection()`` runs the synchronous
driver on the event loop's thread (docs/architecture.md, "The hot path:
fast lane and group commit").
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import weakref
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, async_sessionmaker, create_async_engine
from sqlmodel.ext.asyncio.session import AsyncSession

from flowbus.db.connection import (
    PostgresWriteConnection,
    SqlAlchemyWriteConnection,
    SqliteInlineConnection,
    WriteConnection,
)
from flowbus.db.outbox import Event, Outbox, OutboxBatch
from flowbus.db.tables import utcnow


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def create_engine(url: str, *, writer: bool = True) -> AsyncEngine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, connect_args={"timeout": 30})
        _setup_sqlite(engine, "BEGIN IMMEDIATE" if writer else "BEGIN")
        return engine
    # Each execution planned for its own values. asyncpg prepares every
    # statement once per connection, and PostgreSQL switches a prepared
    # statement to a generic plan after five runs, chosen on the statistics of
    # that moment: on a young table (a fresh database), a scan that grows with
    # the table and is kept as long as the pooled connection lives. The
    # idempotency-key lookup took 12 ms per batch at 10,000 runs that way.
    # No pre-ping: on asyncpg it is three round trips (BEGIN, a ping,
    # ROLLBACK) before every checkout, a third of a write batch's. A dropped
    # connection fails its statement instead, and SQLAlchemy then discards
    # every pooled connection as old as it; a group committer retries the
    # failed batch command by command, on new connections.
    return create_async_engine(
        url,
        pool_size=10,
        max_overflow=20,
        connect_args={"server_settings": {"plan_cache_mode": "force_custom_plan"}},
    )


class SqliteWriteLock:
    """The write lock of one SQLite file, across the processes that share it.

    Inside a process, writers queue on an asyncio lock. Across processes
    (``flowbus up`` runs services as several processes on one file), the
    holder also takes an exclusive ``flock`` on ``<database>-writer.lock``:
    a waiting process blocks in the kernel on a worker thread and is woken
    the moment the holder lets go. SQLite's own busy handler would instead
    poll with sleeps of up to 100 ms, and a writer that fails at once and
    retries after an asyncio sleep wastes its turns; both showed as
    latency spikes and lost throughput when two services shared the file.
    Writers outside flowbus (a migration, the sqlite3 shell) are still kept
    out by SQLite itself: every write transaction is BEGIN IMMEDIATE.
    """

    def __init__(self, path: str | None) -> None:
        self._local = asyncio.Lock()
        self._fd: int | None = None
        if path and path != ":memory:":
            self._fd = os.open(f"{path}-writer.lock", os.O_RDWR | os.O_CREAT, 0o644)
            weakref.finalize(self, os.close, self._fd)

    async def __aenter__(self) -> None:
        await self._local.acquire()
        try:
            if self._fd is not None:
                await self._lock_file(self._fd)
        except BaseException:
            self._local.release()
            raise

    async def __aexit__(self, *_exc: object) -> None:
        try:
            if self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._local.release()

    @staticmethod
    async def _lock_file(fd: int) -> None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        waiting = asyncio.get_running_loop().run_in_executor(None, fcntl.flock, fd, fcntl.LOCK_EX)
        try:
            await asyncio.shield(waiting)
        except asyncio.CancelledError:
            # The thread takes the lock all the same: give it back when it does.
            def give_back(done: asyncio.Future[None]) -> None:
                if not done.cancelled() and done.exception() is None:
                    fcntl.flock(fd, fcntl.LOCK_UN)

            waiting.add_done_callback(give_back)
            raise


_write_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, SqliteWriteLock]] = (
    weakref.WeakKeyDictionary()
)


def _sqlite_write_lock(url: str) -> SqliteWriteLock:
    """The one write lock of a SQLite file for every Database in this process and loop."""
    per_loop = _write_locks.setdefault(asyncio.get_running_loop(), {})
    path = str(make_url(url).database)
    lock = per_loop.get(path)
    if lock is None:
        lock = per_loop[path] = SqliteWriteLock(path)
    return lock


def _setup_sqlite(
    engine: AsyncEngine | sa.Engine, begin: str, busy_timeout_ms: int = 30000, autocheckpoint: bool = True
) -> None:
    sync_engine = engine.sync_engine if isinstance(engine, AsyncEngine) else engine

    @event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, decide when transactions begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
        cursor.execute("PRAGMA foreign_keys=ON")
        if not autocheckpoint:
            cursor.execute("PRAGMA wal_autocheckpoint=0")
        cursor.close()

    @event.listens_for(sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql(begin)


def _inline_sqlite_engine(url: str) -> sa.Engine:
    engine = sa.create_engine(make_url(url).set(drivername="sqlite"))
    # A checkpoint syncs the files: Database.checkpoint runs it off the loop's thread.
    _setup_sqlite(engine, "BEGIN IMMEDIATE", busy_timeout_ms=0, autocheckpoint=False)
    return engine


# Waits between attempts to take SQLite's write lock from another process.
_LOCKED_BACKOFF = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1)
_LOCKED_GIVE_UP_SECONDS = 30.0


class WriteSession(AsyncSession):
    """An ORM session in a write transaction, which may also emit events."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.events = OutboxBatch()

    def emit(self, event: Event) -> None:
        """Publish ``event`` once this transaction has committed (never if it rolls back)."""
        self.events.emit(event)


# Write transactions a group committer runs at once on PostgreSQL. Each waits
# on round trips more than on either process's CPU; a few side by side keep
# the server busy. SQLite has one writer whatever the number.
POSTGRES_CONCURRENT_WRITES = 4


class Database:
    """The engines and session factories of one database; entered through a service's lifespan."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.sqlite = is_sqlite(url)
        self.concurrent_writes = 1 if self.sqlite else POSTGRES_CONCURRENT_WRITES
        self.engine = create_engine(url)
        self.read_engine = create_engine(url, writer=False) if self.sqlite else self.engine
        self._inline = _inline_sqlite_engine(url) if self.sqlite else None
        self._sessions = async_sessionmaker(self.engine, class_=WriteSession, expire_on_commit=False)
        self._read_sessions = async_sessionmaker(self.read_engine, class_=AsyncSession, expire_on_commit=False)
        # Where the events of its writes go: the service's outbox relay, which sets itself here.
        self.outbox: Outbox | None = None

    def require_outbox(self) -> Outbox:
        if self.outbox is None:
            raise RuntimeError("events were emitted on a database without an outbox relay: nothing would publish them")
        return self.outbox

    def _writing(self) -> AbstractAsyncContextManager[Any]:
        return _sqlite_write_lock(self.url) if self.sqlite else nullcontext()

    @asynccontextmanager
    async def read_session(self) -> AsyncIterator[AsyncSession]:
        """An ORM session for reads (it must not write: on SQLite it holds no write lock)."""
        async with self._read_sessions() as session:
            yield session

    @asynccontextmanager
    async def write_session(self) -> AsyncIterator[WriteSession]:
        """An ORM session in a write transaction, committed on success and rolled back on error.

        The events it emits are written with its rows and published once it
        has committed, before this context is left (flowbus.db.outbox).
        """
        async with self._writing(), self._sessions() as session:
            async with session.begin():
                yield session
                events = session.events
                if events.messages:
                    outbox = self.require_outbox()
                    conn = self._wrap(await session.connection())
                    await outbox.stage(conn, events, utcnow())
                    await conn.send_held()
            if events.messages:
                outbox.committed(events)  # in commit order: the write lock is still held
        if events.messages:
            await outbox.after_commit()

    @asynccontextmanager
    async def write_connection(self) -> AsyncIterator[WriteConnection]:
        """A Core connection in a write transaction, committed on success and rolled back on error."""
        if self._inline is None:
            async with self.engine.begin() as conn:
                wrapped = self._wrap(conn)
                yield wrapped
                await wrapped.send_held()
            return
        async with self._writing():
            with self._inline.connect() as conn:
                await self._begin_immediate(conn)
                try:
                    yield SqliteInlineConnection(conn)
                except BaseException:
                    conn.rollback()
                    raise
                conn.commit()

    def _wrap(self, conn: AsyncConnection) -> SqlAlchemyWriteConnection:
        if conn.dialect.name == "postgresql":
            return PostgresWriteConnection(conn)
        return SqlAlchemyWriteConnection(conn)

    async def _begin_immediate(self, conn: sa.Connection) -> None:
        loop = asyncio.get_running_loop()
        give_up = loop.time() + _LOCKED_GIVE_UP_SECONDS
        attempt = 0
        while True:
            try:
                conn.begin()
                return
            except OperationalError as exc:
                if "locked" not in str(exc) or loop.time() > give_up:
                    raise
                conn.rollback()
            await asyncio.sleep(_LOCKED_BACKOFF[min(attempt, len(_LOCKED_BACKOFF) - 1)])
            attempt += 1

    @asynccontextmanager
    async def read_connection(self) -> AsyncIterator[AsyncConnection]:
        """A Core connection for reads."""
        async with self.read_engine.connect() as conn:
            yield conn

    async def checkpoint(self) -> None:
        """Copy SQLite's write-ahead log into the database (on aiosqlite's thread).

        The inline hot-path connection never checkpoints itself: the fsync
        would stall every request on the loop. Services call this every second.
        """
        if self.sqlite:
            async with self.read_engine.connect() as conn:
                await conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")

    async def dispose(self) -> None:
        if self._inline is not None:
            self._inline.dispose()
        await self.engine.dispose()
        if self.read_engine is not self.engine:
            await self.read_engine.dispose()
