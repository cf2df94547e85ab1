"""The Hasura-style compiler on its own: the checked-in SDL is the model's, every filter and
ordering compiles on both databases with bound parameters only, LIKE patterns translate to GLOB."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect

from flowbus_services.gateway import queries
from flowbus_services.gateway.hasura import COMPARISON, Compiler, Kind, _like_to_glob, page

SDL = Path(queries.__file__).parent / "graphql" / "queries.graphql"

SAMPLE: dict[Kind, object] = {
    Kind.UUID: "5f0c1d2e-7a3b-4c8d-9e1f-0a2b3c4d5e6f",
    Kind.KEY: "group-1",
    Kind.STRING: "x'; DROP TABLE flow; --",
    Kind.INT: 3,
    Kind.FLOAT: 1.5,
    Kind.BOOL: True,
    Kind.TIMESTAMP: "2030-01-01T12:00:00",
}


def test_the_checked_in_sdl_is_the_models() -> None:
    assert SDL.read_text() == queries.render(), "regenerate: python -m flowbus_services.gateway.queries"


@pytest.mark.parametrize("name", ["sqlite", "postgresql"])
def test_every_column_filters_and_orders_with_bound_values_only(name: str) -> None:
    dialect: Dialect = sqlite.dialect() if name == "sqlite" else postgresql.dialect()  # type: ignore[no-untyped-call]
    compiler = Compiler(queries.MODEL, name)
    for table in queries.MODEL.tables.values():
        for col in table.columns.values():
            if col.hidden or col.kind not in SAMPLE:
                continue
            value = SAMPLE[col.kind]
            where = {col.name: {"_eq": value, "_in": [value], "_is_null": False}, "_not": {col.name: {"_neq": value}}}
            args = page({"where": where, "order_by": [{col.name: "desc_nulls_last"}], "distinct_on": [col.name]}, 10)
            columns = [c.name for c in table.columns.values() if not c.hidden]
            for stmt in (
                compiler.rows(table, args, columns),
                compiler.rows(table, args, columns, parent=(table.pk, ["a", "b"])),
                compiler.count(table, args, [col.name], True),
            ):
                text = str(stmt.compile(dialect=dialect))
                assert "DROP TABLE" not in text, text


def test_every_kind_with_a_filter_has_its_comparison_type() -> None:
    sdl = SDL.read_text()
    for name in set(COMPARISON.values()):
        assert f"input {name} " in sdl


@pytest.mark.parametrize(
    ("like", "glob"),
    [("a%", "a*"), ("_b", "?b"), ("100\\%", "100%"), ("a\\_b", "a_b"), ("*?[", "[*][?][[]"), ("\\*x", "[*]x")],
)
def test_like_patterns_become_glob_patterns(like: str, glob: str) -> None:
    assert _like_to_glob(like) == glob
