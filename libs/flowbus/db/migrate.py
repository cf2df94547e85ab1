"""Apply the Alembic migrations in flowbus/db/migrations to a database.

Several processes may start at once (services on their own, or CI), so the
upgrade runs under a lock: a PostgreSQL advisory lock, or a file lock beside
the SQLite file.

A SQLite database whose ``alembic_version`` already names ``HEAD_REVISION``
is left alone without loading Alembic: on every start of ``flowbus up`` and
of each service that check is a single read (a few milliseconds), where
Alembic's upgrade to head, even with nothing to do, imports Alembic, Mako
and Pygments and reads every migration script (hundreds of milliseconds).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.engine import make_url

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).with_name("migrations")
PG_LOCK_KEY = 0x466C6F77  # "Flow"
# The newest revision in migrations/versions (a unit test checks it against Alembic's head).
HEAD_REVISION = "0008"


def alembic_config(url: str) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.attributes["advisory_lock"] = PG_LOCK_KEY
    return cfg


@contextmanager
def _file_lock(url: str) -> Iterator[None]:
    database = make_url(url).database
    if not database or database == ":memory:":
        yield
        return
    path = Path(database + ".migrate.lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def sqlite_revision(url: str) -> str | None:
    """The revision a SQLite database at ``url`` is at; None when it has none yet (or is no SQLite file)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    path = Path(parsed.database)
    if not path.exists():
        return None
    with contextlib.closing(sqlite3.connect(path, timeout=30)) as conn:
        try:
            row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
        except sqlite3.OperationalError:  # no such table: never migrated
            return None
    return None if row is None else str(row[0])


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the schema at ``url`` to ``revision`` (blocking; call off the loop)."""
    if revision == "head" and sqlite_revision(url) == HEAD_REVISION:
        return
    from alembic import command

    with _file_lock(url) if make_url(url).get_backend_name() == "sqlite" else _noop():
        command.upgrade(alembic_config(url), revision)


@contextmanager
def _noop() -> Iterator[None]:
    yield


async def upgrade_async(url: str) -> None:
    # Alembic's env runs its own event loop, so it must run in a thread.
    await asyncio.to_thread(upgrade, url)
