"""Prebuilt write statements for many rows, and the rows' defaults.

The hot paths write a few hundred rows per batch with a handful of
statements. A :class:`Bulk` is one such statement, built once. An INSERT's
rows carry only the columns their use case decides: the others are filled
from the table definition (its column defaults; None for a nullable column
without one), computed once per Bulk.

How a Bulk runs is the write connection's business
(``WriteConnection.run_bulk``, flowbus.db.connection):

- on the inline SQLite connection, compiled once per key set into
  positional SQL and the columns' own bind processors, its rows handed to
  ``sqlite3`` as plain tuples (SQLAlchemy's per-row machinery costs more
  there than the SQL itself);
- on PostgreSQL, as ONE statement whatever the number of rows: each column
  sent as an array and the rows rebuilt by ``unnest`` on the server
  (``INSERT ... SELECT ... FROM unnest(...)``, ``UPDATE ... FROM unnest(...)``).
  An executemany there is a statement per row, and asyncpg reports no row
  count for it, so a versioned UPDATE had to go row by row, a round trip each;
- otherwise through SQLAlchemy's executemany.

The values stored are the same whichever way.

Touches no subject.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import psycopg2 as _pyformat

Processor = Callable[[Any], Any]
Row = dict[str, Any]


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


def bind_processor(column_type: sa.types.TypeEngine[Any], dialect: sa.Dialect) -> Processor | None:
    """What SQLAlchemy applies to a value of ``column_type`` before handing it to the driver.

    The dialect's own implementation of the type decides (on SQLite, a
    DateTime becomes text), so ask it, not the generic type.
    """
    return column_type.dialect_impl(dialect).bind_processor(dialect)


@dataclass(frozen=True)
class Compiled:
    """A Bulk's positional SQL for one dialect and key set, and how to turn rows into its parameters."""

    sql: str
    values: Callable[[Row], Any]  # a row's values in bind order
    processors: tuple[tuple[int, Processor], ...]  # the positions that need converting

    def params(self, rows: Sequence[Row]) -> list[Any]:
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


@dataclass(frozen=True)
class Unnested:
    """A Bulk as one PostgreSQL statement over column arrays, for one key set."""

    sql: str  # $1..$n: one array per column, in ``keys`` order
    keys: tuple[str, ...]
    processors: tuple[Processor | None, ...]  # per column, None when the value goes as it is

    def params(self, rows: Sequence[Row]) -> tuple[list[Any], ...]:
        columns = []
        for key, process in zip(self.keys, self.processors, strict=True):
            values = [row[key] for row in rows]
            columns.append(values if process is None else [process(v) for v in values])
        return tuple(columns)


# A pyformat bind as the psycopg2 dialect renders it, with the cast a JSON column adds.
_BIND = re.compile(r"%\((\w+)\)s")
# (A RETURNING of the generated key, which the pyformat dialect adds, is dropped: nothing reads it.)
_INSERT_VALUES = re.compile(r"^(INSERT INTO .+?\)) VALUES \((.+?)\)(?: RETURNING .+)?$", re.DOTALL)


@dataclass(frozen=True)
class _Defaults:
    """What an INSERT fills in for the columns a row leaves out."""

    constants: dict[str, Any]
    factories: dict[str, Callable[[], Any]]  # called per row (new ids, fresh timestamps, fresh dicts)

    @classmethod
    def of(cls, statement: sa.Insert | sa.Update) -> _Defaults:
        constants: dict[str, Any] = {}
        factories: dict[str, Callable[[], Any]] = {}
        if isinstance(statement, sa.Insert):
            for column in statement.table.columns:
                default = column.default
                if isinstance(default, sa.ColumnDefault) and default.is_scalar:
                    constants[column.key] = default.arg
                elif isinstance(default, sa.ColumnDefault) and default.is_callable:
                    factories[column.key] = _factory(default)
                elif default is None and column.server_default is None and column.nullable:
                    constants[column.key] = None
        return cls(constants, factories)

    def missing_from(self, keys: tuple[str, ...]) -> tuple[Row, tuple[tuple[str, Callable[[], Any]], ...]]:
        """The constants and the factories of the columns that rows with ``keys`` leave out."""
        given = set(keys)
        constants = {k: v for k, v in self.constants.items() if k not in given}
        return constants, tuple((k, make) for k, make in self.factories.items() if k not in given)


def _factory(default: sa.ColumnDefault) -> Callable[[], Any]:
    # SQLAlchemy wraps a default's callable to take an execution context; the tables' callables ignore it.
    make = default.arg
    return lambda: make(None)


class Bulk:
    """One INSERT or UPDATE, for many rows; every row of a call has the same keys."""

    def __init__(self, statement: sa.Insert | sa.Update) -> None:
        self.statement = statement
        self.inserts = isinstance(statement, sa.Insert)
        self._defaults = _Defaults.of(statement)
        self._missing: dict[tuple[str, ...], tuple[Row, tuple[tuple[str, Callable[[], Any]], ...]]] = {}
        self._compiled: dict[tuple[str, tuple[str, ...]], Compiled] = {}
        self._unnested: dict[tuple[str, ...], Unnested] = {}

    def complete(self, row: Row) -> Row:
        """``row`` with every column it leaves out set to its default (a new dict)."""
        constants, factories = self._left_out(row)
        full = row | constants
        for key, make in factories:
            full[key] = make()
        return full

    def completed(self, rows: Sequence[Row]) -> Sequence[Row]:
        """The rows with their defaults; the rows themselves when none is left out."""
        if not rows:
            return rows
        constants, factories = self._left_out(rows[0])
        if not constants and not factories:
            return rows
        out = []
        for row in rows:
            full = row | constants
            for key, make in factories:
                full[key] = make()
            out.append(full)
        return out

    def _left_out(self, row: Row) -> tuple[Row, tuple[tuple[str, Callable[[], Any]], ...]]:
        keys = tuple(row)
        found = self._missing.get(keys)
        if found is None:
            found = self._missing[keys] = self._defaults.missing_from(keys)
        return found

    def compiled(self, dialect: sa.Dialect, keys: tuple[str, ...]) -> Compiled:
        """The positional form for rows with ``keys`` (built once per dialect and key set)."""
        found = self._compiled.get((dialect.name, keys))
        if found is None:
            found = self._compiled[(dialect.name, keys)] = self._compile(dialect, keys)
        return found

    def unnested(self, dialect: sa.Dialect, keys: tuple[str, ...]) -> Unnested:
        """The one-statement PostgreSQL form for rows with ``keys`` (built once per key set)."""
        found = self._unnested.get(keys)
        if found is None:
            found = self._unnested[keys] = self._unnest(dialect, keys)
        return found

    def _unnest(self, dialect: sa.Dialect, keys: tuple[str, ...]) -> Unnested:
        # Rendered by the pyformat dialect, whose binds are easy to find and
        # name, then each bind replaced by the column of the unnested rows.
        compiled = self.statement.compile(dialect=_pyformat.dialect(), column_keys=list(keys))  # type: ignore[no-untyped-call]
        names = _BIND.findall(compiled.string)
        if set(names) - set(keys) or not names:
            raise ValueError(f"rows lack {sorted(set(names) - set(keys))} for {compiled.string!r}")
        ordered = tuple(dict.fromkeys(names))
        arrays, processors = [], []
        for i, name in enumerate(ordered, start=1):
            column_type = compiled.binds[name].type
            # JSON travels as text and is cast by the statement itself (the
            # compiled form already says ``::JSON``): no array codec needed.
            json = isinstance(column_type, sa.JSON)
            sql_type = "TEXT" if json else column_type.compile(dialect=dialect)
            arrays.append(f"${i}::{sql_type}[]")
            process = bind_processor(column_type, dialect)
            processors.append(_memo_empty(process) if json and process else process)
        quote = dialect.identifier_preparer.quote_identifier  # always quoted: "type", "timestamp"
        rows = f"unnest({', '.join(arrays)}) AS v({', '.join(quote(n) for n in ordered)})"
        sql = _BIND.sub(lambda m: f"v.{quote(m.group(1))}", compiled.string)
        if self.inserts:
            match = _INSERT_VALUES.match(sql)
            if match is None:
                raise ValueError(f"not a single-row INSERT: {compiled.string!r}")
            sql = f"{match.group(1)} SELECT {match.group(2)} FROM {rows}"
        else:
            head, where, tail = sql.partition(" WHERE ")
            sql = f"{head} FROM {rows}{where}{tail}"
        return Unnested(sql, ordered, tuple(processors))

    def _compile(self, dialect: sa.Dialect, keys: tuple[str, ...]) -> Compiled:
        compiled = self.statement.compile(dialect=dialect, column_keys=list(keys))
        names = list(compiled.positiontup or ())
        unknown = set(names) - set(keys)
        if unknown or not names:
            # A bind the rows do not carry (a default computed in SQL, say): this path would bind the wrong thing.
            raise ValueError(f"rows lack {sorted(unknown)} for {compiled.string!r}")
        processors = tuple(
            (i, _memo_empty(process) if isinstance(compiled.binds[name].type, sa.JSON) else process)
            for i, name in enumerate(names)
            if (process := bind_processor(compiled.binds[name].type, dialect)) is not None
        )
        getter = itemgetter(*names)
        values = getter if len(names) > 1 else (lambda row: (getter(row),))
        return Compiled(compiled.string, values, processors)
