"""The schema migrations: they build what the models declare, and keep waiting outbox rows."""

from __future__ import annotations

import json
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlmodel import SQLModel

import flowbus.db.tables  # noqa: F401  (registers the tables on SQLModel.metadata)
from flowbus.db.migrate import alembic_config, upgrade


def _sync_url(path: Path) -> str:
    return f"sqlite:///{path}"


def test_the_migrated_schema_matches_the_models(tmp_path: Path) -> None:
    db = tmp_path / "schema.db"
    upgrade(f"sqlite+aiosqlite:///{db}")
    engine = sa.create_engine(_sync_url(db))
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    finally:
        engine.dispose()
    assert diff == []


def test_upgrading_the_outbox_keeps_the_rows_waiting_to_be_published(tmp_path: Path) -> None:
    db = tmp_path / "outbox.db"
    url = f"sqlite+aiosqlite:///{db}"
    upgrade(url, "0001")
    engine = sa.create_engine(_sync_url(db))
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO outbox (owner, subject, msg_id, payload, created) "
                    "VALUES ('state', 'flowbus.evt.flow_run.r1.state', 'r1:state:2', :payload, '2026-11-22 03:00:00')"
                ),
                {"payload": b'{"flow_run_id": "r1", "version": 2}'},
            )
        upgrade(url)
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT owner, messages FROM outbox")).all()
        assert [(owner, json.loads(messages)) for owner, messages in rows] == [
            ("state", [["flowbus.evt.flow_run.r1.state", "r1:state:2", '{"flow_run_id": "r1", "version": 2}']])
        ]

        # And back: the downgrade unpacks it into the old columns.
        command.downgrade(alembic_config(url), "0001")
        with engine.connect() as conn:
            old = conn.execute(sa.text("SELECT owner, subject, msg_id, payload FROM outbox")).all()
        assert [tuple(row) for row in old] == [
            ("state", "flowbus.evt.flow_run.r1.state", "r1:state:2", b'{"flow_run_id": "r1", "version": 2}')
        ]
    finally:
        engine.dispose()
