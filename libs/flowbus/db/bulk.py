"""Prebuilt write statements run with executemany, through SQLite's driver directly.

The hot paths write a few hundred rows per batch with a handful of
statements. Through SQLAlchemy, each row's parameters pass through its
generic machinery (parameter dictionaries, per-row processor lookups), which
on SQLite cost more than the SQL itself. A :class:`Bulk` compiles its
statement once per dialect into positional SQL and the list of bind
processors, and on the inline SQLite connection (``Database.write()``) hands
plain tuples to ``sqlite3``'s ``executemany``. The values stored are the
same: the processors are the column types' own. On any other connection
(PostgreSQL) it runs the statement through SQLAlchemy as usual.

Touches no subject.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa

Processor = Callable[[Any], Any] | None


class Bulk:
    """One INSERT or UPDATE, for many rows; every row of a call has the same keys."""

    def __init__(self, statement: sa.Insert | sa.Update) -> None:
        self.statement = statement
        self._compiled: dict[tuple[str, tuple[str, ...]], tuple[str, list[tuple[str, Processor]]]] = {}

    def _for(self, dialect: sa.Dialect, keys: tuple[str, ...]) -> tuple[str, list[tuple[str, Processor]]]:
        found = self._compiled.get((dialect.name, keys))
        if found is None:
            compiled = self.statement.compile(dialect=dialect, column_keys=list(keys))
            names = list(compiled.positiontup or ())
            unknown = set(names) - set(keys)
            if unknown:
                # A column default or a bind the rows do not carry: this path would bind the wrong thing.
                raise ValueError(f"rows lack {sorted(unknown)} for {compiled.string!r}")
            binds: list[tuple[str, Processor]] = [
                (name, compiled.binds[name].type._cached_bind_processor(dialect)) for name in names
            ]
            found = (compiled.string, binds)
            self._compiled[(dialect.name, keys)] = found
        return found

    async def run(self, conn: Any, rows: Sequence[dict[str, Any]]) -> int:
        """Execute for every row, in the caller's transaction; the number of rows matched."""
        if not rows:
            return 0
        driver = getattr(conn, "sqlite_driver_connection", None)
        if driver is None:
            return int((await conn.execute(self.statement, list(rows))).rowcount)
        sql, binds = self._for(conn.dialect, tuple(rows[0]))
        params = [
            tuple(row[name] if process is None else process(row[name]) for name, process in binds) for row in rows
        ]
        return int(driver.executemany(sql, params).rowcount)
