"""SQLite's write lock across processes: services in several processes
(the layout of ``flowbus up``) share one database file and lose no write."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from flowbus.db.engine import Database, SqliteWriteLock

ROOT = Path(__file__).resolve().parents[2]
PROCESSES = 3
INCREMENTS = 200

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="flock is POSIX")


async def increment(url: str, times: int) -> None:
    """Read-modify-write a counter ``times`` times, each in its own write transaction."""
    db = Database(url)
    try:
        for _ in range(times):
            async with db.write_connection() as conn:
                value = (await conn.execute(sa.text("SELECT n FROM counter"))).scalar_one()
                await asyncio.sleep(0)  # a turn for anyone the lock did not keep out
                await conn.execute(sa.text("UPDATE counter SET n = :n"), {"n": value + 1})
    finally:
        await db.dispose()


def _counter_db(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE counter (n INTEGER NOT NULL)")
        conn.execute("INSERT INTO counter VALUES (0)")


def test_writers_in_several_processes_lose_no_update(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    _counter_db(path)
    url = f"sqlite+aiosqlite:///{path}"
    code = (
        "import asyncio; from tests.integration.test_write_lock import increment; "
        f"asyncio.run(increment({url!r}, {INCREMENTS}))"
    )
    writers = [
        subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stderr=subprocess.PIPE, text=True)
        for _ in range(PROCESSES)
    ]
    for writer in writers:
        _out, err = writer.communicate(timeout=300)
        assert writer.returncode == 0, err
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT n FROM counter").fetchone() == (PROCESSES * INCREMENTS,)
    assert Path(f"{path}-writer.lock").exists()


async def test_a_writer_that_gives_up_waiting_leaves_the_lock_free(tmp_path: Path) -> None:
    path = str(tmp_path / "any.db")
    holder, quitter, next_writer = SqliteWriteLock(path), SqliteWriteLock(path), SqliteWriteLock(path)
    await holder.__aenter__()
    waiting = asyncio.create_task(quitter.__aenter__())
    await asyncio.sleep(0)  # the quitter tries the file lock, fails, and waits on a thread
    assert not waiting.done()
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await holder.__aexit__(None, None, None)
    # The quitter's thread takes the lock once the holder lets go, and hands it straight back.
    await asyncio.wait_for(next_writer.__aenter__(), timeout=30)
    await next_writer.__aexit__(None, None, None)
