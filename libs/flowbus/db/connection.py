"""The write connection: all that code inside a Core write transaction may do.

``Database.write_connection()`` hands out a :class:`WriteConnection`, one of two:

- :class:`SqlAlchemyWriteConnection`, over an ``AsyncConnection`` (PostgreSQL);
- :class:`SqliteInlineConnection`, SQLite on the event loop's own thread
  through the synchronous driver (why: flowbus.db.engine). Its ``run_bulk``
  and ``insert_outbox_row`` hand plain tuples to ``sqlite3`` directly
  (flowbus.db.bulk says why).

The use cases and the outbox see only the protocol; which one they hold,
and the driver beneath it, stay in this module. Touches no subject.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from flowbus.db.bulk import Bulk, Row
from flowbus.db.tables import Outbox

_outbox = Outbox.__table__  # type: ignore[attr-defined]
_INSERT_OUTBOX = Bulk(sa.insert(_outbox))
_INSERT_OUTBOX_RETURNING = sa.insert(_outbox).returning(_outbox.c.id)
_OUTBOX_KEYS = ("owner", "messages", "created")


class WriteConnection(Protocol):
    """A connection inside a write transaction, committed or rolled back by its ``Database``."""

    @property
    def dialect(self) -> sa.Dialect: ...

    async def execute(self, statement: sa.Executable, parameters: Any = None) -> sa.CursorResult[Any]:
        """Run one statement (with a list of parameter sets: executemany)."""
        ...

    async def run_bulk(self, bulk: Bulk, rows: Sequence[Row]) -> int:
        """Run ``bulk`` for every row, omitted columns set to their defaults; how many rows it
        inserted, or for an UPDATE, matched (exactly: versioned updates count on it)."""
        ...

    async def insert_outbox_row(self, owner: str, messages: bytes, created: datetime) -> int:
        """Insert one outbox row; its id."""
        ...


class SqlAlchemyWriteConnection:
    """A write connection over SQLAlchemy's ``AsyncConnection``."""

    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    @property
    def dialect(self) -> sa.Dialect:
        return self._conn.dialect

    async def execute(self, statement: sa.Executable, parameters: Any = None) -> sa.CursorResult[Any]:
        return await self._conn.execute(statement, parameters)

    async def run_bulk(self, bulk: Bulk, rows: Sequence[Row]) -> int:
        if not rows:
            return 0
        rows = bulk.completed(rows)
        dialect = self._conn.dialect
        if dialect.name == "postgresql":
            # One statement, one round trip, an exact row count (flowbus.db.bulk).
            unnested = bulk.unnested(dialect, tuple(rows[0]))
            result = await self._conn.exec_driver_sql(unnested.sql, unnested.params(rows))
            return int(result.rowcount)
        if bulk.inserts or dialect.supports_sane_multi_rowcount:
            result = await self._conn.execute(bulk.statement, list(rows))
            return len(rows) if bulk.inserts else int(result.rowcount)
        matched = 0  # a driver that cannot count an executemany's rows: one by one
        for row in rows:
            matched += int((await self._conn.execute(bulk.statement, row)).rowcount)
        return matched

    async def insert_outbox_row(self, owner: str, messages: bytes, created: datetime) -> int:
        row = {"owner": owner, "messages": messages, "created": created}
        return int((await self._conn.execute(_INSERT_OUTBOX_RETURNING, row)).scalar_one())


class SqliteInlineConnection:
    """A write connection over a synchronous SQLite connection, run on the loop's thread.

    ``execute`` runs at once; it is a coroutine only so that the same code
    runs on PostgreSQL's asynchronous connection.
    """

    def __init__(self, conn: sa.Connection) -> None:
        self._conn = conn
        self._dialect = conn.dialect
        driver = conn.connection.driver_connection  # sqlite3's own, in this transaction
        assert isinstance(driver, sqlite3.Connection)
        self._driver = driver

    @property
    def dialect(self) -> sa.Dialect:
        return self._dialect

    async def execute(self, statement: sa.Executable, parameters: Any = None) -> sa.CursorResult[Any]:
        return self._conn.execute(statement, parameters)

    async def run_bulk(self, bulk: Bulk, rows: Sequence[Row]) -> int:
        if not rows:
            return 0
        rows = bulk.completed(rows)
        compiled = bulk.compiled(self._dialect, tuple(rows[0]))
        matched = self._driver.executemany(compiled.sql, compiled.params(rows)).rowcount
        return len(rows) if bulk.inserts else int(matched)

    async def insert_outbox_row(self, owner: str, messages: bytes, created: datetime) -> int:
        compiled = _INSERT_OUTBOX.compiled(self._dialect, _OUTBOX_KEYS)
        [params] = compiled.params([{"owner": owner, "messages": messages, "created": created}])
        row_id = self._driver.execute(compiled.sql, params).lastrowid
        assert row_id is not None
        return row_id
