"""The schema's revision check that lets a start skip Alembic (flowbus.db.migrate)."""

from __future__ import annotations

from pathlib import Path

from alembic.script import ScriptDirectory

from flowbus.db.migrate import HEAD_REVISION, alembic_config, sqlite_revision, upgrade


def test_head_revision_is_alembics_head() -> None:
    script = ScriptDirectory.from_config(alembic_config("sqlite+aiosqlite://"))
    assert script.get_current_head() == HEAD_REVISION


def test_a_missing_database_has_no_revision(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'none.db'}"
    assert sqlite_revision(url) is None
    assert not (tmp_path / "none.db").exists()  # the check created nothing


def test_an_upgraded_database_is_at_head_and_a_second_upgrade_keeps_it(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'flowbus.db'}"
    upgrade(url)
    assert sqlite_revision(url) == HEAD_REVISION
    upgrade(url)
    assert sqlite_revision(url) == HEAD_REVISION


def test_an_older_database_is_upgraded(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'flowbus.db'}"
    upgrade(url, "0006")
    assert sqlite_revision(url) == "0006"
    upgrade(url)
    assert sqlite_revision(url) == HEAD_REVISION


def test_a_database_without_migrations_has_no_revision(tmp_path: Path) -> None:
    (tmp_path / "empty.db").touch()
    assert sqlite_revision(f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}") is None
