"""Log retention: the state service deletes log records stored longer ago than
``logs.retention_seconds`` (default: the LOGS stream's max age), in batches,
under the lease ``state.log_retention``; fresher records stay."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from nats.aio.client import Client

from flowbus.client import AsyncClient
from flowbus.db.engine import Database
from flowbus.db.tables import Log
from flowbus.runtime.lease import lease_status
from flowbus.schemas.runs import LogRecord
from flowbus.settings import LogSettings, Settings
from flowbus_services.state import logs
from flowbus_services.state.main import LOG_RETENTION_LEASE
from tests.helpers.builders import register, unique
from tests.helpers.waiting import eventually

RETENTION = timedelta(hours=1)


@pytest.fixture
def settings(settings: Settings, database_url: str) -> Settings:
    # (database_url named again: pytest parametrizes an overriding fixture only by what it names.)
    logs = LogSettings(retention_seconds=RETENTION.total_seconds(), prune_interval_seconds=0.1, prune_batch=2)
    return settings.model_copy(update={"logs": logs})


@pytest.fixture
async def db(stack: Settings) -> AsyncIterator[Database]:
    database = Database(stack.resolved_database_url())
    try:
        yield database
    finally:
        await database.dispose()


async def store_old(db: Database, run_id: str, count: int, age: timedelta, prefix: str = "old") -> None:
    """Records as if the log writer had stored them ``age`` ago."""
    stored = datetime.now(UTC) - age
    async with db.write_session() as session:
        session.add_all(
            [
                Log(
                    flow_run_id=run_id,
                    timestamp=stored,
                    name="t",
                    level="INFO",
                    message=f"{prefix}-{i}",
                    created=stored,
                )
                for i in range(count)
            ]
        )


def fresh(run_id: str, message: str) -> LogRecord:
    # An old timestamp of its own: retention counts from storage, not from what the sender wrote.
    return LogRecord(
        flow_run_id=run_id, timestamp=datetime.now(UTC) - 2 * RETENTION, name="t", level="INFO", message=message
    )


async def test_records_stored_before_the_retention_are_pruned(client: AsyncClient, nc: Client, db: Database) -> None:
    run_id = await client.create_flow_run((await register(client, unique("p"), unique("f"))).id)
    await client.write_logs([fresh(run_id, "fresh")])
    await store_old(db, run_id, 5, RETENTION + timedelta(minutes=1))

    async def messages() -> list[str]:
        return sorted(r.message for r in await client.get_flow_run_logs(run_id))

    assert await eventually(messages, "the old records pruned", until=lambda got: got == ["fresh"]) == ["fresh"]
    # The leases bucket is the services' to read: the harness looks with their credential.
    assert (await lease_status(nc, LOG_RETENTION_LEASE)).held_here


async def test_prune_logs_deletes_in_batches_only_what_is_older(client: AsyncClient, db: Database) -> None:
    run_id = await client.create_flow_run((await register(client, unique("p"), unique("f"))).id)
    await store_old(db, run_id, 7, timedelta(days=30))
    # Within the service's retention (an hour), so only this test's cut-off reaches them.
    await store_old(db, run_id, 3, timedelta(minutes=30), prefix="recent")
    await logs.prune_logs(db, datetime.now(UTC) - timedelta(minutes=40), batch=3)
    left = sorted(r.message for r in await client.get_flow_run_logs(run_id))
    assert left == ["recent-0", "recent-1", "recent-2"]
    assert await logs.prune_logs(db, datetime.now(UTC) - timedelta(minutes=20), batch=2) == 3
    assert await client.get_flow_run_logs(run_id) == []
