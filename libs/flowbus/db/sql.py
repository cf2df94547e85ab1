"""SQL constructs that each database writes its own way, for the use cases' prebuilt statements.

:func:`in_list`: "column is one of a list given at execution". SQLAlchemy's
expanding ``IN`` renders one placeholder per value, so a list of another
length is another statement: compiled again on every execution, and on
PostgreSQL prepared again (a round trip) whenever that length is not in the
connection's statement cache, which batches of every size from 1 to 64
kept evicting. On PostgreSQL it is ``column = ANY($1)`` with the list as one
array parameter: one statement whatever the length, prepared once per
connection. Elsewhere it is the expanding ``IN``.

Touches no subject.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.visitors import InternalTraversal


class InList(ColumnElement[bool]):
    """``column`` is one of the values of the execution parameter ``name`` (a list)."""

    type = sa.Boolean()
    inherit_cache = True
    _traverse_internals = [  # noqa: RUF012 (SQLAlchemy's own declaration)
        ("column", InternalTraversal.dp_clauseelement),
        ("name", InternalTraversal.dp_string),
    ]

    def __init__(self, column: ColumnElement[Any], name: str) -> None:
        self.column = column
        self.name = name


def in_list(column: ColumnElement[Any], name: str) -> InList:
    return InList(column, name)


@compiles(InList)
def _expanding_in(element: InList, compiler: SQLCompiler, **kw: Any) -> str:
    return compiler.process(element.column.in_(sa.bindparam(element.name, expanding=True)), **kw)


@compiles(InList, "postgresql")
def _any(element: InList, compiler: SQLCompiler, **kw: Any) -> str:
    values = sa.bindparam(element.name, type_=ARRAY(element.column.type))
    return compiler.process(element.column == sa.any_(values), **kw)
