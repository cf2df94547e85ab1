"""A counter in a SQLite file that several processes increment at once.

Each increment is a read-modify-write in its own write transaction, so a lost
update shows in the final count. The write-lock test runs one process per
writer: ``python -m tests.helpers.sqlite_counter URL TIMES``.
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
from pathlib import Path

import sqlalchemy as sa

from flowbus.db.engine import Database


def create(path: Path) -> None:
    """The counter, at 0, in a new database file in WAL mode (as flowbus's SQLite databases are)."""
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE counter (n INTEGER NOT NULL)")
        conn.execute("INSERT INTO counter VALUES (0)")


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


if __name__ == "__main__":
    asyncio.run(increment(sys.argv[1], int(sys.argv[2])))
