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


def test_upgrading_to_task_rows_backfills_the_tasks_of_existing_flows(tmp_path: Path) -> None:
    db = tmp_path / "tasks.db"
    url = f"sqlite+aiosqlite:///{db}"
    upgrade(url, "0003")
    engine = sa.create_engine(_sync_url(db))
    tasks = [
        {"slug": "extract", "name": "extract", "max_retries": 2, "retry_delay_seconds": 5.0, "tags": ["io"]},
        {"slug": "load", "name": "load", "max_retries": 0, "retry_delay_seconds": None, "tags": []},
    ]
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO project (id, name, created) VALUES ('p1', 'p', '2026-12-01 10:00:00')"))
            conn.execute(
                sa.text(
                    "INSERT INTO flow_group (id, project_id, name, default_parameters, heartbeat_enabled, "
                    "lazarus_enabled, version_locking_enabled, created, updated) "
                    "VALUES ('g1', 'p1', 'etl', '{}', 1, 1, 0, '2026-12-01 10:00:00', '2026-12-01 10:00:00')"
                )
            )
            conn.execute(
                sa.text(
                    "INSERT INTO flow (id, project_id, flow_group_id, name, version, serialized_flow, parameters, "
                    "tasks, edges, storage, run_config, is_schedule_active, archived, core_version, created) "
                    "VALUES ('f1', 'p1', 'g1', 'etl', 1, '{}', '[]', :tasks, '[]', '{}', '{}', 0, 0, '', "
                    "'2026-12-01 10:00:00.000000')"
                ),
                {"tasks": json.dumps(tasks)},
            )
        upgrade(url)
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text("SELECT flow_id, slug, name, max_retries, retry_delay_seconds, tags, created FROM task")
            ).all()
        assert sorted((r[0], r[1], r[2], r[3], r[4], json.loads(r[5]), r[6]) for r in rows) == [
            ("f1", "extract", "extract", 2, 5.0, ["io"], "2026-12-01 10:00:00.000000"),
            ("f1", "load", "load", 0, None, [], "2026-12-01 10:00:00.000000"),
        ]
    finally:
        engine.dispose()


def _insert(conn: sa.Connection, table: str, **values: object) -> None:
    """A row of ``table`` with ``values``; every other required column gets a filler of its type."""
    for _cid, name, declared, notnull, default, pk in conn.execute(sa.text(f"PRAGMA table_info({table})")).all():
        if name in values or not notnull or default is not None or pk:
            continue
        kind = declared.upper()
        values[name] = (
            "2026-12-01 10:00:00.000000"
            if "DATETIME" in kind
            else 0
            if kind in {"INTEGER", "BOOLEAN", "FLOAT"}
            else "{}"
            if kind == "JSON"
            else f"{table}-{name}"
        )
    columns = ", ".join(values)
    conn.execute(sa.text(f"INSERT INTO {table} ({columns}) VALUES ({', '.join(':' + c for c in values)})"), values)


def test_upgrading_the_log_dates_existing_records_by_their_timestamp(tmp_path: Path) -> None:
    db = tmp_path / "log.db"
    url = f"sqlite+aiosqlite:///{db}"
    upgrade(url, "0005")
    engine = sa.create_engine(_sync_url(db))
    try:
        with engine.begin() as conn:
            _insert(conn, "project", id="p1")
            _insert(conn, "flow_group", id="g1", project_id="p1")
            _insert(conn, "flow", id="f1", project_id="p1", flow_group_id="g1")
            _insert(conn, "flow_run", id="r1", flow_id="f1")
            for message, timestamp in (("past", "2026-11-22 03:00:00.000000"), ("ahead", "2999-01-01 00:00:00.000000")):
                _insert(conn, "log", flow_run_id="r1", timestamp=timestamp, message=message)
        upgrade(url)
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT message, created FROM log")).tuples().all()
        created: dict[str, str] = dict(rows)
        # The past one ages from its timestamp; one dated ahead from the upgrade.
        assert created["past"] == "2026-11-22 03:00:00.000000"
        assert "2026" <= created["ahead"][:4] < "2999"
    finally:
        engine.dispose()
