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
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

import sqlalchemy as sa

Processor = Callable[[Any], Any]


def _memo_empty(process: Processor) -> Processor:
    """A JSON column's processor that serializes null, {} and [] once, not per row.

    Most rows carry a few of them (no result yet, no context, no run config),
    and each went through ``json.dumps``.
    """
    null, empty_object, empty_array = process(None), process({}), process([])

    def fast(value: Any) -> Any:
        if value is None:
            return null
        if not value and type(value) is dict:
            return empty_object
        if not value and type(value) is list:
            return empty_array
        return process(value)

    return fast


@dataclass(frozen=True)
class _Compiled:
    sql: str
    values: Callable[[dict[str, Any]], Any]  # a row's values in bind order
    processors: tuple[tuple[int, Processor], ...]  # the positions that need converting

    def params(self, rows: Sequence[dict[str, Any]]) -> list[Any]:
        values = self.values
        if not self.processors:
            return [values(row) for row in rows]
        out = []
        for row in rows:
            converted = list(values(row))
            for i, process in self.processors:
                converted[i] = process(converted[i])
            out.append(converted)
        return out


class Bulk:
    """One INSERT or UPDATE, for many rows; every row of a call has the same keys."""

    def __init__(self, statement: sa.Insert | sa.Update) -> None:
        self.statement = statement
        self._compiled: dict[tuple[str, tuple[str, ...]], _Compiled] = {}

    def _for(self, dialect: sa.Dialect, keys: tuple[str, ...]) -> _Compiled:
        found = self._compiled.get((dialect.name, keys))
        if found is None:
            compiled = self.statement.compile(dialect=dialect, column_keys=list(keys))
            names = list(compiled.positiontup or ())
            unknown = set(names) - set(keys)
            if unknown or not names:
                # A column default or a bind the rows do not carry: this path would bind the wrong thing.
                raise ValueError(f"rows lack {sorted(unknown)} for {compiled.string!r}")
            processors = tuple(
                (i, _memo_empty(process) if isinstance(compiled.binds[name].type, sa.JSON) else process)
                for i, name in enumerate(names)
                if (process := compiled.binds[name].type._cached_bind_processor(dialect)) is not None
            )
            getter = itemgetter(*names)
            values = getter if len(names) > 1 else (lambda row: (getter(row),))
            found = _Compiled(compiled.string, values, processors)
            self._compiled[(dialect.name, keys)] = found
        return found

    async def run(self, conn: Any, rows: Sequence[dict[str, Any]]) -> int:
        """Execute for every row, in the caller's transaction; the number of rows matched."""
        if not rows:
            return 0
        driver = getattr(conn, "sqlite_driver_connection", None)
        if driver is None:
            return int((await conn.execute(self.statement, list(rows))).rowcount)
        compiled = self._for(conn.dialect, tuple(rows[0]))
        return int(driver.executemany(compiled.sql, compiled.params(rows)).rowcount)
