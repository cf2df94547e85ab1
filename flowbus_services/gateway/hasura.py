"""Hasura-style reads compiled to SQLAlchemy Core: the model, the compiler and the SDL it implies.

A ``Model`` describes the GraphQL types that read tables: each ``Table`` has
its columns (a SQL expression over an alias of its source, so a column may be
computed: a CASE, a correlated sub-select), its Python-computed fields and
its relations. From it come the SDL (``render_sdl``: types, ``*_bool_exp``,
``*_order_by``, ``*_select_column``, ``*_aggregate``, the root fields) and the
statements that answer a query:

- ``where``: ``_eq _neq _in _nin _gt _gte _lt _lte _is_null`` (+ ``_like
  _ilike _nlike _nilike`` on text; ``_eq _neq _contains _has_key _is_null`` on
  JSON), ``_and _or _not``, relation filters (``EXISTS`` a related row that
  matches, for object and array relations alike). Hasura v1 null semantics:
  an operator given null is no condition, ``{}`` is true, ``_and: []`` true,
  ``_or: []`` false.
- ``order_by``: asc (nulls last) / desc (nulls first) and the explicit
  nulls variants, on columns, object relations' columns and array relations'
  counts; the primary key always breaks ties, so pages are stable.
- ``distinct_on``: the first row (in ``order_by`` order) of each distinct
  value, through ``ROW_NUMBER()`` (both databases; PostgreSQL's ``DISTINCT
  ON`` would demand that ``order_by`` start with the distinct columns).
- nested lists for many parents at once: one statement, the parents' keys
  in an ``IN``, each parent's own page cut by ``ROW_NUMBER() OVER
  (PARTITION BY key)``.

Every value is a bound parameter. Reads and writes nothing on NATS.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.sql import ColumnElement, FromClause, Select

from flowbus_services.gateway.errors import Code, refusal
from flowbus_services.gateway.scalars import parse_datetime

# The key column of a nested statement's rows: which parent a row belongs to.
KEY = "__key"
_DISTINCT = "__d"
_ROW = "__n"


class Kind(StrEnum):
    """What a column holds: decides its comparison type and how values bind."""

    UUID = "uuid"
    KEY = "key"  # an id flowbus does not mint (a version group's, an agent's): any text
    STRING = "String"
    INT = "Int"
    FLOAT = "Float"
    BOOL = "Boolean"
    TIMESTAMP = "timestamptz"
    JSON = "jsonb"
    INTERVAL = "interval"


OUTPUT_TYPE: dict[Kind, str] = {
    Kind.UUID: "uuid",
    Kind.KEY: "uuid",
    Kind.STRING: "String",
    Kind.INT: "Int",
    Kind.FLOAT: "Float",
    Kind.BOOL: "Boolean",
    Kind.TIMESTAMP: "timestamptz",
    Kind.JSON: "jsonb",
    Kind.INTERVAL: "interval",
}
COMPARISON: dict[Kind, str] = {
    Kind.UUID: "uuid_comparison_exp",
    Kind.KEY: "String_comparison_exp",
    Kind.STRING: "String_comparison_exp",
    Kind.INT: "Int_comparison_exp",
    Kind.FLOAT: "Float_comparison_exp",
    Kind.BOOL: "Boolean_comparison_exp",
    Kind.TIMESTAMP: "timestamptz_comparison_exp",
    Kind.JSON: "jsonb_comparison_exp",
}
# Kinds whose values can be compared for equality and sorted on both databases
# (PostgreSQL's json type has neither).
ORDERABLE = frozenset(Kind) - {Kind.JSON}

Expr = ColumnElement[Any]
Alias = FromClause


def column(name: str) -> Callable[[Alias], Expr]:
    """A stored column of the source, by name."""
    return lambda a: a.c[name]


@dataclass(frozen=True)
class Col:
    name: str
    kind: Kind
    sql: Callable[[Alias], Expr]
    nullable: bool = True
    doc: str | None = None
    hidden: bool = False  # selected for computed fields, not part of the schema
    # A Computed of the same name, when the table has one, is what the field answers.
    output: str | None = None  # the GraphQL type when not the kind's

    @property
    def gql_type(self) -> str:
        base = self.output or OUTPUT_TYPE[self.kind]
        return base if self.nullable else f"{base}!"


@dataclass(frozen=True)
class Computed:
    """A field computed in Python from the row's columns (``needs``)."""

    name: str
    gql_type: str
    needs: tuple[str, ...]
    compute: Callable[[Mapping[str, Any]], Any]
    doc: str | None = None


@dataclass(frozen=True)
class Rel:
    """``local`` column of the parent equals ``remote`` column of ``target``'s rows."""

    name: str
    target: str
    local: str
    remote: str
    array: bool
    aggregate: bool = False  # also a ``<name>_aggregate`` field
    doc: str | None = None


@dataclass
class Table:
    name: str
    source: Callable[[], Alias]  # a fresh alias on each call: sub-selects correlate by alias
    pk: str
    columns: dict[str, Col]
    relations: dict[str, Rel] = field(default_factory=dict)
    computed: dict[str, Computed] = field(default_factory=dict)
    # Which of the source's rows are this type's (one table may back two types).
    rows: Callable[[Alias], ColumnElement[bool]] | None = None
    doc: str = ""

    def col(self, name: str) -> Col:
        return self.columns[name]


class Model:
    def __init__(self, tables: Iterable[Table]) -> None:
        self.tables = {t.name: t for t in tables}

    def __getitem__(self, name: str) -> Table:
        return self.tables[name]


# ---- arguments ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Page:
    """A list field's arguments, checked; ``limit`` None only for what is counted, not listed."""

    where: Mapping[str, Any] | None
    order_by: Sequence[Mapping[str, Any]]
    limit: int | None
    offset: int
    distinct_on: tuple[str, ...]

    def cache_key(self) -> str:
        return json.dumps(
            [self.where, list(self.order_by), self.limit, self.offset, self.distinct_on], default=str, sort_keys=False
        )


def page(args: Mapping[str, Any], max_page_size: int, *, capped: bool = True) -> Page:
    """A list field's arguments; ``capped``: no limit means ``max_page_size`` (lists, not counts)."""
    limit = args.get("limit")
    offset = args.get("offset")
    if limit is not None and limit < 0:
        raise refusal(f"limit must not be negative (got {limit}).", Code.VALIDATION_ERROR)
    if offset is not None and offset < 0:
        raise refusal(f"offset must not be negative (got {offset}).", Code.VALIDATION_ERROR)
    if limit is not None and limit > max_page_size:
        raise refusal(
            f"limit {limit} is over the page size limit of {max_page_size}: page with limit and offset.",
            Code.VALIDATION_ERROR,
        )
    order_by = args.get("order_by") or []
    distinct = args.get("distinct_on") or []
    return Page(
        where=args.get("where"),
        order_by=[o for o in order_by if o],
        limit=limit if limit is not None else (max_page_size if capped else None),
        offset=offset or 0,
        distinct_on=tuple(distinct),
    )


# ---- where -------------------------------------------------------------------------------------------------------


class Compiler:
    """Statements for one dialect (``sqlite`` or ``postgresql``)."""

    def __init__(self, model: Model, dialect: str) -> None:
        self.model = model
        self.sqlite = dialect == "sqlite"

    def where(self, table: Table, a: Alias, exp: Mapping[str, Any] | None) -> ColumnElement[bool] | None:
        """The condition of a ``*_bool_exp``; None when it is no condition at all."""
        if exp is None:
            return None
        parts: list[ColumnElement[bool]] = []
        for key, value in exp.items():
            if value is None:  # null collapse: no condition
                continue
            if key == "_and":
                conds = [c for c in (self.where(table, a, e) for e in _as_list(value)) if c is not None]
                if conds:
                    parts.append(sa.and_(*conds))
            elif key == "_or":
                items = _as_list(value)
                ors = [self.where(table, a, e) for e in items]
                if not items:
                    parts.append(sa.false())
                elif all(c is not None for c in ors):
                    parts.append(sa.or_(*[c for c in ors if c is not None]))
                # else: one alternative is no condition, so the whole _or is true
            elif key == "_not":
                inner = self.where(table, a, value)
                parts.append(sa.false() if inner is None else sa.not_(inner))
            elif key in table.columns:
                parts.extend(self.compare(table.columns[key], table.columns[key].sql(a), value))
            elif key in table.relations:
                parts.append(self.related(table, table.relations[key], a, value))
            else:  # the schema admits no other field
                raise refusal(f"{table.name} cannot be filtered on {key}.", Code.VALIDATION_ERROR)
        if not parts:
            return None
        return parts[0] if len(parts) == 1 else sa.and_(*parts)

    def related(self, table: Table, rel: Rel, a: Alias, exp: Mapping[str, Any]) -> ColumnElement[bool]:
        """Some row of the relation (the one row of an object relation) matches ``exp``."""
        target = self.model[rel.target]
        b = target.source()
        conds = [target.col(rel.remote).sql(b) == table.col(rel.local).sql(a)]
        if target.rows is not None:
            conds.append(target.rows(b))
        inner = self.where(target, b, exp)
        if inner is not None:
            conds.append(inner)
        return sa.select(sa.literal(1)).select_from(b).where(*conds).correlate(a).exists()

    def compare(self, col: Col, expr: Expr, ops: Mapping[str, Any]) -> list[ColumnElement[bool]]:
        out: list[ColumnElement[bool]] = []
        for op, raw in ops.items():
            if raw is None:
                continue
            if op == "_is_null":
                null = self._null(col, expr)
                out.append(null if raw else sa.not_(null))
            elif col.kind is Kind.JSON:
                out.append(self._json(expr, op, raw))
            elif op in ("_in", "_nin"):
                values = [_value(col, v) for v in raw]
                out.append(expr.in_(values) if op == "_in" else expr.not_in(values))
            elif op in _LIKE:
                out.append(self._like(expr, op, _value(col, raw)))
            else:
                value = _value(col, raw)
                out.append(_COMPARE[op](expr, value))
        return out

    def _null(self, col: Col, expr: Expr) -> ColumnElement[bool]:
        if col.kind is not Kind.JSON:
            return expr.is_(None)
        # A JSON column may hold JSON's null rather than SQL's: both are null here.
        typeof = sa.func.json_type(expr) if self.sqlite else sa.func.json_typeof(sa.cast(expr, sa.JSON))
        return sa.or_(expr.is_(None), typeof == "null")

    def _like(self, expr: Expr, op: str, pattern: str) -> ColumnElement[bool]:
        negate = op.startswith("_n")
        if op in ("_like", "_nlike"):
            # SQLite's LIKE ignores case: GLOB, with the pattern translated, does not.
            cond = expr.op("GLOB")(_like_to_glob(pattern)) if self.sqlite else expr.like(pattern)
        else:
            cond = expr.ilike(pattern, escape="\\") if self.sqlite else expr.ilike(pattern)
        return sa.not_(cond) if negate else cond

    def _json(self, expr: Expr, op: str, value: Any) -> ColumnElement[bool]:
        if self.sqlite:
            if op in ("_eq", "_neq"):
                cond = sa.func.json(expr) == sa.func.json(json.dumps(value))
                return sa.not_(cond) if op == "_neq" else cond
            if op == "_has_key":
                return sa.func.json_type(expr, _json_path(value)).is_not(None)
            if op == "_contains":
                return _sqlite_contains(expr, value)
        else:
            doc = sa.cast(expr, JSONB)
            given = sa.bindparam(None, value, type_=JSONB)  # JSONB's own processor encodes it
            if op in ("_eq", "_neq"):
                cond = doc == given
                return sa.not_(cond) if op == "_neq" else cond
            if op == "_has_key":
                return sa.func.jsonb_exists(doc, value)
            if op == "_contains":
                return doc.op("@>")(given)
        raise refusal(f"{op} does not apply to JSON columns.", Code.VALIDATION_ERROR)

    # ---- order_by --------------------------------------------------------------------------------------------------

    def order(self, table: Table, a: Alias, items: Sequence[Mapping[str, Any]]) -> list[tuple[Expr, str]]:
        """(expression, direction) pairs, the primary key last (stable pages)."""
        terms: list[tuple[Expr, str]] = []
        for item in items:
            for key, value in item.items():
                if value is None:
                    continue
                if key in table.columns:
                    terms.append((table.columns[key].sql(a), value))
                elif key in table.relations:
                    terms.extend(self._related_order(table, table.relations[key], a, value))
                elif key.endswith("_aggregate") and key.removesuffix("_aggregate") in table.relations:
                    rel = table.relations[key.removesuffix("_aggregate")]
                    direction = value.get("count")
                    if direction is not None:
                        terms.append((self._related_count(table, rel, a), direction))
                else:
                    raise refusal(f"{table.name} cannot be ordered by {key}.", Code.VALIDATION_ERROR)
        terms.append((table.col(table.pk).sql(a), "asc"))
        return terms

    def _related_order(self, table: Table, rel: Rel, a: Alias, value: Mapping[str, Any]) -> list[tuple[Expr, str]]:
        target = self.model[rel.target]
        out: list[tuple[Expr, str]] = []
        for key, direction in value.items():
            if direction is None:
                continue
            if key not in target.columns:
                raise refusal(f"{table.name} cannot be ordered by {rel.name}.{key}.", Code.VALIDATION_ERROR)
            b = target.source()
            sub = (
                sa.select(target.col(key).sql(b))
                .where(target.col(rel.remote).sql(b) == table.col(rel.local).sql(a))
                .limit(1)
                .correlate(a)
                .scalar_subquery()
            )
            out.append((sub, direction))
        return out

    def _related_count(self, table: Table, rel: Rel, a: Alias) -> Expr:
        target = self.model[rel.target]
        b = target.source()
        conds = [target.col(rel.remote).sql(b) == table.col(rel.local).sql(a)]
        if target.rows is not None:
            conds.append(target.rows(b))
        return sa.select(sa.func.count()).select_from(b).where(*conds).correlate(a).scalar_subquery()

    # ---- statements ------------------------------------------------------------------------------------------------

    def rows(
        self,
        table: Table,
        args: Page,
        columns: Sequence[str],
        *,
        parent: tuple[str, Sequence[Any]] | None = None,
    ) -> Select[Any]:
        """The rows of a list field: for the root, or (``parent``: the target's key column
        and the parents' keys) for many parents at once, each parent's rows a page of
        their own and the key in ``KEY``."""
        a = table.source()
        conds: list[ColumnElement[bool]] = []
        if table.rows is not None:
            conds.append(table.rows(a))
        cond = self.where(table, a, args.where)
        if cond is not None:
            conds.append(cond)
        key: Expr | None = None
        if parent is not None:
            key = table.col(parent[0]).sql(a)
            conds.append(key.in_(list(parent[1])))
        selected = [table.col(c).sql(a).label(c) for c in columns]
        if key is not None:
            selected.append(key.label(KEY))
        terms = self.order(table, a, args.order_by)
        for d in args.distinct_on:
            if d not in table.columns or table.columns[d].kind not in ORDERABLE:
                raise refusal(f"{table.name} has no distinct_on column {d}.", Code.VALIDATION_ERROR)

        windowed = bool(args.distinct_on) or (key is not None and (args.limit is not None or args.offset))
        if not windowed:
            stmt = sa.select(*selected).where(*conds).order_by(*[_direct(e, d) for e, d in terms])
            if args.limit is not None:
                stmt = stmt.limit(args.limit)
            return stmt.offset(args.offset) if args.offset else stmt

        # Order expressions become columns, so that outer statements can sort on them.
        order_labels = [f"__o{i}" for i in range(len(terms))]
        inner_cols = [*selected, *[e.label(n) for (e, _), n in zip(terms, order_labels, strict=True)]]
        if args.distinct_on:
            partition = ([key] if key is not None else []) + [table.col(d).sql(a) for d in args.distinct_on]
            ranked = sa.func.row_number().over(partition_by=partition, order_by=[_direct(e, d) for e, d in terms])
            inner_cols.append(ranked.label(_DISTINCT))
        s = sa.select(*inner_cols).where(*conds).subquery()
        keep: list[ColumnElement[bool]] = [s.c[_DISTINCT] == 1] if args.distinct_on else []
        outer_terms = [_direct(s.c[n], d) for n, (_, d) in zip(order_labels, terms, strict=True)]
        names = [*columns, *([KEY] if key is not None else [])]
        if key is None:
            stmt = sa.select(*[s.c[n] for n in names]).where(*keep).order_by(*outer_terms)
            if args.limit is not None:
                stmt = stmt.limit(args.limit)
            return stmt.offset(args.offset) if args.offset else stmt
        numbered = sa.func.row_number().over(partition_by=s.c[KEY], order_by=outer_terms).label(_ROW)
        n = sa.select(*[s.c[c] for c in names], numbered).where(*keep).subquery()
        bounds: list[ColumnElement[bool]] = [n.c[_ROW] > args.offset]
        if args.limit is not None:
            bounds.append(n.c[_ROW] <= args.offset + args.limit)
        return sa.select(*[n.c[c] for c in names]).where(*bounds).order_by(n.c[KEY], n.c[_ROW])

    def count(
        self,
        table: Table,
        args: Page,
        columns: Sequence[str] = (),
        distinct: bool = False,
        *,
        parent: tuple[str, Sequence[Any]] | None = None,
    ) -> Select[Any]:
        """``count`` of an aggregate: of the rows (non-null ``columns``; their distinct
        values with ``distinct``), grouped by ``KEY`` for many parents."""
        for c in columns:
            if c not in table.columns or table.columns[c].kind not in ORDERABLE:
                raise refusal(f"{table.name} cannot count column {c}.", Code.VALIDATION_ERROR)
        rows = self.rows(table, args, [*columns] or [table.pk], parent=parent).subquery()
        group = [rows.c[KEY]] if parent is not None else []
        base: FromClause = rows
        if columns:
            not_null = [rows.c[c].is_not(None) for c in columns]
            if distinct:
                base = sa.select(*group, *[rows.c[c] for c in columns]).where(*not_null).distinct().subquery()
            else:
                base = sa.select(*group, sa.literal(1).label("one")).where(*not_null).subquery()
        if parent is None:
            return sa.select(sa.func.count()).select_from(base)
        return sa.select(base.c[KEY], sa.func.count().label("count")).group_by(base.c[KEY])


_COMPARE: dict[str, Callable[[Expr, Any], ColumnElement[bool]]] = {
    "_eq": lambda e, v: e == v,
    "_neq": lambda e, v: e != v,
    "_gt": lambda e, v: e > v,
    "_gte": lambda e, v: e >= v,
    "_lt": lambda e, v: e < v,
    "_lte": lambda e, v: e <= v,
}
_LIKE = frozenset({"_like", "_ilike", "_nlike", "_nilike"})
_DIRECTIONS: dict[str, Callable[[Expr], Any]] = {
    # PostgreSQL's defaults (and Hasura's): nulls sort as if larger than any value.
    "asc": lambda e: e.asc().nulls_last(),
    "asc_nulls_last": lambda e: e.asc().nulls_last(),
    "asc_nulls_first": lambda e: e.asc().nulls_first(),
    "desc": lambda e: e.desc().nulls_first(),
    "desc_nulls_first": lambda e: e.desc().nulls_first(),
    "desc_nulls_last": lambda e: e.desc().nulls_last(),
}


def _direct(expr: Expr, direction: str) -> Any:
    return _DIRECTIONS[direction](expr)


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else [value]


def _value(col: Col, value: Any) -> Any:
    if col.kind is Kind.TIMESTAMP:
        return parse_datetime(value)
    return value


def _like_to_glob(pattern: str) -> str:
    """A LIKE pattern (``%``, ``_``, backslash escapes) as the GLOB pattern that matches the same text."""
    out: list[str] = []
    chars = iter(pattern)
    for ch in chars:
        if ch == "\\":
            escaped = next(chars, "\\")
            out.append(f"[{escaped}]" if escaped in "*?[" else escaped)
        elif ch == "%":
            out.append("*")
        elif ch == "_":
            out.append("?")
        else:
            out.append(f"[{ch}]" if ch in "*?[" else ch)
    return "".join(out)


def _json_path(key: Any) -> str:
    if not isinstance(key, str) or '"' in key or "\\" in key:
        raise refusal(f"_has_key takes a key without quotes or backslashes (got {key!r}).", Code.VALIDATION_ERROR)
    return f'$."{key}"'


def _sqlite_contains(expr: Expr, value: Any) -> ColumnElement[bool]:
    """``@>`` for the shapes SQLite can test: a list of scalars, an object of scalars."""
    if isinstance(value, list) and all(_scalar(v) for v in value):
        conds: list[ColumnElement[bool]] = [sa.func.json_type(expr) == "array"]
        for v in value:
            each = sa.func.json_each(expr).table_valued("value", "type").alias()
            conds.append(sa.exists(sa.select(sa.literal(1)).select_from(each).where(*_json_matches(each.c, v))))
        return sa.and_(*conds)
    if isinstance(value, dict) and all(_scalar(v) for v in value.values()):
        conds = [sa.func.json_type(expr) == "object"]
        for k, v in value.items():
            path = _json_path(k)
            if v is None:
                conds.append(sa.func.json_type(expr, path) == "null")
            elif isinstance(v, bool):
                conds.append(sa.func.json_type(expr, path) == ("true" if v else "false"))
            else:
                conds.append(sa.func.json_extract(expr, path) == v)
        return sa.and_(*conds)
    raise refusal("_contains on SQLite takes a list of scalars or an object of scalars.", Code.VALIDATION_ERROR)


def _json_matches(c: Any, v: Any) -> list[ColumnElement[bool]]:
    if v is None:
        return [c.type == "null"]
    if isinstance(v, bool):
        return [c.type == ("true" if v else "false")]
    return [c.value == v, c.type.not_in(["true", "false", "null"])]


def _scalar(v: Any) -> bool:
    return v is None or isinstance(v, str | int | float | bool)


# ---- SDL ---------------------------------------------------------------------------------------------------------

_LIST_ARGS = (
    "(distinct_on: [{t}_select_column!], limit: Int, offset: Int, order_by: [{t}_order_by!], where: {t}_bool_exp)"
)

COMPARISON_SDL = '''\
"""Sort direction: asc puts nulls last, desc puts them first (PostgreSQL's and Hasura's defaults)."""
enum order_by { asc asc_nulls_first asc_nulls_last desc desc_nulls_first desc_nulls_last }

# Comparison expressions. An operator given null is no condition (Hasura v1);
# _in: [] matches nothing, _nin: [] everything.
input String_comparison_exp {
  _eq: String _neq: String _in: [String!] _nin: [String!]
  _gt: String _gte: String _lt: String _lte: String _is_null: Boolean
  "LIKE, case-sensitive: % any text, _ one character, \\\\ escapes"
  _like: String _nlike: String
  "LIKE ignoring case"
  _ilike: String _nilike: String
}
input Int_comparison_exp {
  _eq: Int _neq: Int _in: [Int!] _nin: [Int!] _gt: Int _gte: Int _lt: Int _lte: Int _is_null: Boolean
}
input Float_comparison_exp {
  _eq: Float _neq: Float _in: [Float!] _nin: [Float!] _gt: Float _gte: Float _lt: Float _lte: Float _is_null: Boolean
}
input Boolean_comparison_exp { _eq: Boolean _neq: Boolean _in: [Boolean!] _nin: [Boolean!] _is_null: Boolean }
input uuid_comparison_exp {
  _eq: uuid _neq: uuid _in: [uuid!] _nin: [uuid!] _gt: uuid _gte: uuid _lt: uuid _lte: uuid _is_null: Boolean
}
"Timestamps compare as instants; a time without an offset is UTC."
input timestamptz_comparison_exp {
  _eq: timestamptz _neq: timestamptz _in: [timestamptz!] _nin: [timestamptz!]
  _gt: timestamptz _gte: timestamptz _lt: timestamptz _lte: timestamptz _is_null: Boolean
}
input jsonb_comparison_exp {
  _eq: jsonb _neq: jsonb _is_null: Boolean
  "The column holds this value (on SQLite: a list of scalars or an object of scalars)"
  _contains: jsonb
  "The column is an object with this top-level key"
  _has_key: String
}
'''


def _desc(doc: str | None, indent: str = "  ") -> str:
    return f"{indent}{json.dumps(doc, ensure_ascii=False)}\n" if doc else ""


def render_sdl(model: Model, header: str) -> str:
    """The SDL of every table's type, inputs and root fields (``extend type Query``)."""
    out = [header, COMPARISON_SDL]
    roots: list[str] = []
    for t in model.tables.values():
        lines = [f'"""{t.doc}"""', f"type {t.name} {{"] if t.doc else [f"type {t.name} {{"]
        fields: list[tuple[str, str, str | None]] = []
        for c in t.columns.values():
            # A computed field of a column's name shows the column its own way
            # (the column still filters and sorts).
            if not c.hidden and c.name not in t.computed:
                fields.append((c.name, c.gql_type, c.doc))
        for comp in t.computed.values():
            fields.append((comp.name, comp.gql_type, comp.doc))
        for r in t.relations.values():
            if r.array:
                fields.append((r.name + _LIST_ARGS.format(t=r.target), f"[{r.target}!]!", r.doc))
                if r.aggregate:
                    fields.append(
                        (f"{r.name}_aggregate" + _LIST_ARGS.format(t=r.target), f"{r.target}_aggregate!", None)
                    )
            else:
                fields.append((r.name, r.target, r.doc))
        lines += [_desc(doc) + f"  {name}: {typ}" for name, typ, doc in fields]
        lines.append("}")
        visible = [c for c in t.columns.values() if not c.hidden]
        filters = [f"  {c.name}: {COMPARISON[c.kind]}" for c in visible if c.kind in COMPARISON]
        filters += [f"  {r.name}: {r.target}_bool_exp" for r in t.relations.values()]
        lines += [
            f"input {t.name}_bool_exp {{",
            f"  _and: [{t.name}_bool_exp!]",
            f"  _or: [{t.name}_bool_exp!]",
            f"  _not: {t.name}_bool_exp",
            *filters,
            "}",
        ]
        orders = [f"  {c.name}: order_by" for c in visible if c.kind in ORDERABLE]
        for r in t.relations.values():
            if not r.array:
                orders.append(f"  {r.name}: {r.target}_order_by")
            elif r.aggregate:
                orders.append(f"  {r.name}_aggregate: {r.target}_aggregate_order_by")
        lines += [f"input {t.name}_order_by {{", *orders, "}"]
        lines += [f"input {t.name}_aggregate_order_by {{ count: order_by }}"]
        selectable = " ".join(c.name for c in visible if c.kind in ORDERABLE)
        lines += [f"enum {t.name}_select_column {{ {selectable} }}"]
        lines += [
            f"type {t.name}_aggregate {{ aggregate: {t.name}_aggregate_fields nodes: [{t.name}!]! }}",
            f"type {t.name}_aggregate_fields {{ count(columns: [{t.name}_select_column!], distinct: Boolean): Int! }}",
        ]
        out.append("\n".join(lines) + "\n")
        pk = t.columns[t.pk]
        roots.append(f"  {t.name}{_LIST_ARGS.format(t=t.name)}: [{t.name}!]!")
        key_type = "String" if pk.kind is Kind.KEY else pk.output or OUTPUT_TYPE[pk.kind]
        roots.append(f"  {t.name}_by_pk(id: {key_type}!): {t.name}")
        roots.append(f"  {t.name}_aggregate{_LIST_ARGS.format(t=t.name)}: {t.name}_aggregate!")
    out.append("extend type Query {\n" + "\n".join(roots) + "\n}\n")
    return "\n".join(out)
