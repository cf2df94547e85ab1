"""Bulk statements on both write connections: rows take their defaults from the
table definition, and the inline SQLite path stores exactly what SQLAlchemy stores."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from flowbus.db.bulk import Bulk
from flowbus.db.connection import SqlAlchemyWriteConnection
from flowbus.db.engine import Database
from flowbus.db.migrate import upgrade_async
from flowbus.db.tables import UTCDateTime, new_id, utcnow

_metadata = sa.MetaData()
_thing = sa.Table(
    "bulk_thing",
    _metadata,
    sa.Column("id", sa.String(36), primary_key=True, default=new_id),
    sa.Column("name", sa.String(50), nullable=False),
    sa.Column("count", sa.Integer, nullable=False, default=7),
    sa.Column("tags", sa.JSON, nullable=False, default=list),
    sa.Column("note", sa.String(50), nullable=True),
    sa.Column("seen", UTCDateTime, nullable=False, default=utcnow),
)
_kinds = sa.Table(
    "bulk_kinds",
    _metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Column("whole_second", UTCDateTime, nullable=False),
    sa.Column("doc", sa.JSON, nullable=False),
    sa.Column("flag", sa.Boolean, nullable=False),
    sa.Column("ratio", sa.Float, nullable=True),
    sa.Column("blob", sa.LargeBinary, nullable=False),
    sa.Column("text", sa.String(50), nullable=True),
)


@asynccontextmanager
async def _database(url: str) -> AsyncIterator[Database]:
    await upgrade_async(url)  # the outbox table
    database = Database(url)
    async with database.engine.begin() as conn:
        await conn.run_sync(_metadata.create_all)
    try:
        yield database
    finally:
        await database.dispose()


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    async with _database(database_url) as database:
        yield database


def test_a_row_is_completed_from_the_table_definition() -> None:
    row = Bulk(sa.insert(_thing)).complete({"name": "a", "count": 1})
    assert row.keys() == {"id", "name", "count", "tags", "note", "seen"}
    assert (row["name"], row["count"], row["tags"], row["note"]) == ("a", 1, [], None)
    assert len(row["id"]) == 36
    assert abs(row["seen"] - utcnow()) < timedelta(seconds=5)


async def test_a_bulk_insert_fills_omitted_columns_from_their_defaults(db: Database) -> None:
    before = utcnow()
    async with db.write_connection() as conn:
        insert = Bulk(sa.insert(_thing))
        assert await conn.run_bulk(insert, [{"name": "a"}]) == 1
        assert await conn.run_bulk(insert, [{"name": "b", "note": "given"}, {"name": "c", "note": None}]) == 2
    async with db.read_connection() as conn:
        rows = (await conn.execute(sa.select(_thing).order_by(_thing.c.name))).all()
    got: list[tuple[Any, ...]] = [(r.name, r.count, r.tags, r.note) for r in rows]
    assert got == [
        ("a", 7, [], None),
        ("b", 7, [], "given"),
        ("c", 7, [], None),
    ]
    assert len({r.id for r in rows}) == 3
    assert all(before <= r.seen <= utcnow() for r in rows)


async def test_inserts_are_written_in_order_with_what_follows_them(db: Database) -> None:
    """PostgreSQL holds an INSERT back and sends it with the next statement: what follows
    still sees its rows, a plain statement and the transaction's end send what is held."""
    rename = Bulk(sa.update(_thing).where(_thing.c.id == sa.bindparam("b_id")).values(name=sa.bindparam("name")))
    async with db.write_connection() as conn:
        await conn.run_bulk(Bulk(sa.insert(_thing)), [{"id": "x", "name": "a"}])
        # A plain statement reads what was inserted before it.
        assert (await conn.execute(sa.select(sa.func.count()).select_from(_thing))).scalar_one() == 1
        await conn.run_bulk(Bulk(sa.insert(_thing)), [{"id": "w", "name": "b"}])
        assert await conn.run_bulk(rename, [{"b_id": "x", "name": "z"}]) == 1
        first = await conn.write_outbox("test", b"[]", utcnow(), [])
        second = await conn.write_outbox("test", b"[]", utcnow(), [])
        await conn.run_bulk(Bulk(sa.insert(_thing)), [{"id": "v", "name": "c"}])  # held to the end
        assert first is not None
        assert second is not None
        assert await conn.write_outbox("test", None, utcnow(), [first]) is None
    async with db.read_connection() as conn:
        names = {r.id: r.name for r in (await conn.execute(sa.select(_thing.c.id, _thing.c.name))).all()}
        outbox = (await conn.execute(sa.text("SELECT id FROM outbox WHERE owner = 'test'"))).scalars().all()
    assert names == {"x": "z", "w": "b", "v": "c"}
    assert list(outbox) == [second]


async def test_a_held_insert_that_fails_fails_its_transaction(db: Database) -> None:
    insert = Bulk(sa.insert(_thing))
    async with db.write_connection() as conn:
        await conn.run_bulk(insert, [{"id": "x", "name": "a"}])

    async def taken_again() -> None:
        async with db.write_connection() as writing:
            await writing.run_bulk(insert, [{"id": "y", "name": "b"}])
            await writing.run_bulk(insert, [{"id": "x", "name": "again"}])
            await writing.write_outbox("test", b"[]", utcnow(), [])

    with pytest.raises((sa.exc.IntegrityError, sqlite3.IntegrityError)):  # the inline path: sqlite3's own
        await taken_again()
    async with db.read_connection() as reading:
        names = {r.id: r.name for r in (await reading.execute(sa.select(_thing.c.id, _thing.c.name))).all()}
        outbox = (await reading.execute(sa.text("SELECT count(*) FROM outbox"))).scalar_one()
    assert names == {"x": "a"}
    assert outbox == 0


async def test_a_bulk_update_counts_the_rows_it_matched(db: Database) -> None:
    rename = Bulk(sa.update(_thing).where(_thing.c.id == sa.bindparam("b_id")).values(name=sa.bindparam("name")))
    async with db.write_connection() as conn:
        await conn.run_bulk(Bulk(sa.insert(_thing)), [{"id": "x", "name": "a"}, {"id": "w", "name": "b"}])
        assert await conn.run_bulk(rename, [{"b_id": "x", "name": "z"}]) == 1
        assert await conn.run_bulk(rename, [{"b_id": "missing", "name": "y"}]) == 0
        # Exact on every backend (versioned updates count on it), however many rows.
        assert await conn.run_bulk(rename, [{"b_id": "x", "name": "y"}, {"b_id": "missing", "name": "y"}]) == 1
        assert await conn.run_bulk(rename, [{"b_id": "x", "name": "v"}, {"b_id": "w", "name": "v"}]) == 2
    async with db.read_connection() as conn:
        names = {r.id: r.name for r in (await conn.execute(sa.select(_thing.c.id, _thing.c.name))).all()}
    assert names == {"x": "v", "w": "v"}


def _stored(path: str, table: str, id_: Any) -> list[tuple[str, Any]]:
    """Each column of one row as SQLite keeps it: its storage class and raw value."""
    with sqlite3.connect(path) as conn:
        names = [c[1] for c in conn.execute(f"PRAGMA table_info({table})") if c[1] != "id"]
        row = conn.execute(f"SELECT {', '.join(f'typeof({n}), {n}' for n in names)} FROM {table} WHERE id = ?", (id_,))
        values = row.fetchone()
    return list(zip(values[::2], values[1::2], strict=True))


@pytest.mark.parametrize(
    "doc", [{"a": [1, 2.5, None]}, {}, [], None, "text"], ids=["object", "empty-object", "empty-array", "null", "str"]
)
async def test_the_inline_sqlite_path_stores_what_sqlalchemy_stores(tmp_path: Path, doc: Any) -> None:
    """The inline path binds with each column type's own processor for the dialect; this pins that
    it stores, byte for byte, what SQLAlchemy's own execution stores (on a SQLAlchemy upgrade too)."""
    path = str(tmp_path / "inline.db")
    whole_second = datetime(2026, 3, 4, 5, 6, 7, tzinfo=timezone(timedelta(hours=2)))
    at = whole_second + timedelta(microseconds=123)
    row = {"at": at, "whole_second": whole_second, "doc": doc, "flag": True, "ratio": 0.25, "blob": b"\x00\xff"}
    insert = Bulk(sa.insert(_kinds))
    async with _database(f"sqlite+aiosqlite:///{path}") as db:
        async with db.write_connection() as inline:
            await inline.run_bulk(insert, [{"id": 1, **row}])
            outbox_inline = await inline.write_outbox("test", b"[]", at, [])
        async with db.engine.begin() as conn:
            generic = SqlAlchemyWriteConnection(conn)
            await generic.run_bulk(insert, [{"id": 2, **row}])
            outbox_generic = await generic.write_outbox("test", b"[]", at, [])
    assert _stored(path, "bulk_kinds", 1) == _stored(path, "bulk_kinds", 2)
    assert _stored(path, "outbox", outbox_inline) == _stored(path, "outbox", outbox_generic)


@pytest.mark.parametrize("database_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)
@pytest.mark.parametrize(
    "doc", [{"a": [1, 2.5, None]}, {}, [], None, "text"], ids=["object", "empty-object", "empty-array", "null", "str"]
)
async def test_the_postgres_one_statement_path_stores_what_sqlalchemy_stores(database_url: str, doc: Any) -> None:
    """On PostgreSQL a Bulk is one statement over column arrays (unnest); this pins
    that each column stores what SQLAlchemy's own executemany stores."""
    whole_second = datetime(2026, 3, 4, 5, 6, 7, tzinfo=timezone(timedelta(hours=2)))
    at = whole_second + timedelta(microseconds=123)
    row = {"at": at, "whole_second": whole_second, "doc": doc, "flag": True, "ratio": 0.25, "blob": b"\x00\xff"}
    insert = Bulk(sa.insert(_kinds))
    async with _database(database_url) as db:
        async with db.write_connection() as conn:
            assert await conn.run_bulk(insert, [{"id": 1, **row}, {"id": 3, **row, "text": "third"}]) == 2
        async with db.engine.begin() as plain:
            await plain.execute(sa.insert(_kinds), [{"id": 2, **row}])
        async with db.read_connection() as conn:
            columns = [sa.cast(c, sa.Text) for c in _kinds.c if c.key not in ("id", "text")]
            stored = {r[0]: r[1:] for r in (await conn.execute(sa.select(_kinds.c.id, *columns))).all()}
    assert stored[1] == stored[2] == stored[3]
