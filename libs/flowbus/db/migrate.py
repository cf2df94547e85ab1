"""Apply the Alembic migrations in flowbus/db/migrations to a database.

Several processes may start at once (services on their own, or CI), so the
upgrade runs under a lock: a PostgreSQL advisory lock, or a file lock beside
the SQLite file.
"""

from __future__ import annotations

import asyncio
import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import make_url

MIGRATIONS = Path(__file__).with_name("migrations")
PG_LOCK_KEY = 0x466C6F77  # "Flow"


def alembic_config(url: str) -> Config:
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


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the schema at ``url`` to ``revision`` (blocking; call off the loop)."""
    with _file_lock(url) if make_url(url).get_backend_name() == "sqlite" else _noop():
        command.upgrade(alembic_config(url), revision)


@contextmanager
def _noop() -> Iterator[None]:
    yield


async def upgrade_async(url: str) -> None:
    # Alembic's env runs its own event loop, so it must run in a thread.
    await asyncio.to_thread(upgrade, url)
