"""The write connection: all that code inside a Core write transaction may do.

``Database.write_connection()`` hands out a :class:`WriteConnection`, one of:

- :class:`PostgresWriteConnection`, over an ``AsyncConnection`` to PostgreSQL:
  fewer round trips, as each costs more there than the SQL (it holds a
  batch's INSERTs back and sends them, as data-modifying CTEs, with the next
  statement: usually the outbox row's);
- :class:`SqlAlchemyWriteConnection`, over any other ``AsyncConnection``;
- :class:`SqliteInlineConnection`, SQLite on the event loop's own thread
  through the synchronous driver (why: flowbus.db.engine). Its ``run_bulk``
  and ``insert_outbox_row`` hand plain tuples to ``sqlite3`` directly
  (flowbus.db.bulk says why).

The use cases and the outbox see only the protocol; which one they hold,
and the driver beneath it, stay in this module. Touches no subject.
"""

from __future__ import annotations

import re
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
_DELETE_OUTBOX = sa.delete(_outbox).where(_outbox.c.id.in_(sa.bindparam("ids", expanding=True)))


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

    async def write_outbox(
        self, owner: str, messages: bytes | None, created: datetime, clear: Sequence[int]
    ) -> int | None:
        """Insert one outbox row (unless ``messages`` is None) and delete the rows ``clear``; the new row's id."""
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

    async def send_held(self) -> None:
        """Nothing is held back here (PostgresWriteConnection holds INSERTs)."""

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

    async def write_outbox(
        self, owner: str, messages: bytes | None, created: datetime, clear: Sequence[int]
    ) -> int | None:
        row_id = None
        if messages is not None:
            row = {"owner": owner, "messages": messages, "created": created}
            row_id = int((await self.execute(_INSERT_OUTBOX_RETURNING, row)).scalar_one())
        if clear:
            await self.execute(_DELETE_OUTBOX, {"ids": list(clear)})
        return row_id


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

    async def write_outbox(
        self, owner: str, messages: bytes | None, created: datetime, clear: Sequence[int]
    ) -> int | None:
        row_id = None
        if messages is not None:
            compiled = _INSERT_OUTBOX.compiled(self._dialect, _OUTBOX_KEYS)
            [params] = compiled.params([{"owner": owner, "messages": messages, "created": created}])
            row_id = self._driver.execute(compiled.sql, params).lastrowid
            assert row_id is not None
        if clear:
            self._conn.execute(_DELETE_OUTBOX, {"ids": list(clear)})
        return row_id


# A parameter of PostgreSQL's numbered form: renumbered when statements are combined.
_PARAM = re.compile(r"\$(\d+)")


def _renumbered(sql: str, offset: int) -> str:
    return _PARAM.sub(lambda m: f"${int(m.group(1)) + offset}", sql) if offset else sql


class PostgresWriteConnection(SqlAlchemyWriteConnection):
    """A write connection to PostgreSQL that saves round trips.

    A transaction's statements go one after the other, and each waits for
    its answer; on a loaded machine the wait costs more than the SQL. So an
    INSERT Bulk is not sent at once: it is held (its count is known: all
    rows, or an error) and goes with the outbox row as data-modifying CTEs,
    one statement (``WITH h0 AS (INSERT ...), h1 AS (DELETE FROM outbox ...)
    INSERT INTO outbox ... RETURNING id``). Whatever is still held when the
    transaction ends goes before its COMMIT (``send_held``). An error of a
    held INSERT (a unique key taken) surfaces at that later statement, in
    the same transaction, which then rolls back.

    The parts of one statement see the same snapshot, not each other's
    rows: so any other statement (``execute``, an UPDATE Bulk) sends what is
    held first, on its own, and only the outbox's own row, which nothing
    else reads, rides with the held INSERTs. Foreign keys are checked at the
    end of the statement, so a run and its history go together.
    """

    def __init__(self, conn: AsyncConnection) -> None:
        super().__init__(conn)
        self._held: list[tuple[str, tuple[Any, ...]]] = []

    async def execute(self, statement: sa.Executable, parameters: Any = None) -> sa.CursorResult[Any]:
        await self.send_held()
        return await self._conn.execute(statement, parameters)

    async def run_bulk(self, bulk: Bulk, rows: Sequence[Row]) -> int:
        if not rows:
            return 0
        rows = bulk.completed(rows)
        unnested = bulk.unnested(self._conn.dialect, tuple(rows[0]))
        params = unnested.params(rows)
        if bulk.inserts:
            self._held.append((unnested.sql, params))
            return len(rows)
        await self.send_held()  # an UPDATE may be of rows held back
        return int((await self._conn.exec_driver_sql(unnested.sql, params)).rowcount)

    async def write_outbox(
        self, owner: str, messages: bytes | None, created: datetime, clear: Sequence[int]
    ) -> int | None:
        if clear:
            self._held.append((_PG_DELETE_OUTBOX, (list(clear),)))
        if messages is None:
            return None
        unnested = _INSERT_OUTBOX.unnested(self._conn.dialect, _OUTBOX_KEYS)
        params = unnested.params([{"owner": owner, "messages": messages, "created": created}])
        return int((await self._with_held(f"{unnested.sql} RETURNING id", params)).scalar_one())

    async def send_held(self) -> None:
        """Send the statements held back (before a COMMIT, or a statement that may read their rows)."""
        if self._held:
            sql, params = self._held.pop()
            await self._with_held(sql, params)

    async def _with_held(self, sql: str, params: Sequence[Any]) -> sa.CursorResult[Any]:
        """Run ``sql`` with the held statements as CTEs before it: one round trip; its own result."""
        if self._held:
            parts: list[str] = []
            values: list[Any] = []
            for i, (held_sql, held_params) in enumerate(self._held):
                parts.append(f"h{i} AS ({_renumbered(held_sql, len(values))})")
                values.extend(held_params)
            sql = f"WITH {', '.join(parts)} {_renumbered(sql, len(values))}"
            params = (*values, *params)
            self._held.clear()
        return await self._conn.exec_driver_sql(sql, tuple(params))


_PG_DELETE_OUTBOX = f"DELETE FROM {_outbox.name} WHERE id = ANY($1::INTEGER[])"
