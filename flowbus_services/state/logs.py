"""Log storage: the state service persists the log batches of the LOGS stream.

Owns the log table. ``handlers.write_logs`` feeds it the batches of
``flowbus.logs.<flow_run_id>``, each keeping only the records of the run its
subject names (``records_of``); ``wait_for_logs`` asks JetStream (the LOGS
stream and the log writer's durable) whether a run's shipped logs are stored;
``prune_logs`` deletes records stored longer ago than the retention.
"""

from __future__ import annotations

import asyncio
import logging
import re
from datetime import datetime

from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from flowbus import subjects
from flowbus.db.engine import Database
from flowbus.db.tables import FlowRun, Log
from flowbus.runtime.nats import last_sequence
from flowbus.schemas.runs import LogBatch, LogRecord

log = logging.getLogger(__name__)
# How long a logs query waits for the writer to store what a run has shipped.
CATCH_UP_SECONDS = 2.0
CATCH_UP_POLL = 0.02
_SUBJECT_TOKEN = re.compile(r"[A-Za-z0-9_-]+")
_LOGS_PREFIX = subjects.logs("")


def records_of(subject: str, batch: LogBatch) -> list[LogRecord]:
    """The records of a batch that belong to the run its subject names.

    The subject ``flowbus.logs.<flow_run_id>`` is what publish permissions
    and stream limits apply to; a record naming another run would land in
    that run's logs, so it is dropped (one warning per batch that had any).
    """
    run_id = subject.removeprefix(_LOGS_PREFIX)
    kept = [r for r in batch.records if r.flow_run_id == run_id]
    dropped = len(batch.records) - len(kept)
    if dropped:
        log.warning(
            "dropped %d of %d log records published on %s: they name another flow run",
            dropped,
            len(batch.records),
            subject,
        )
    return kept


def _log_row(record: LogRecord) -> Log:
    return Log(**record.model_dump())


async def store_logs(db: Database, records: list[LogRecord]) -> int:
    """Persist a batch in one transaction; records of unknown runs are dropped."""
    if not records:
        return 0
    try:
        async with db.write_session() as session:
            session.add_all([_log_row(r) for r in records])
        return len(records)
    except IntegrityError:
        pass
    async with db.write_session() as session:
        run_ids = {r.flow_run_id for r in records}
        known = set(
            (await session.execute(select(col(FlowRun.id)).where(col(FlowRun.id).in_(run_ids)))).scalars().all()
        )
        kept = [r for r in records if r.flow_run_id in known]
        dropped = len(records) - len(kept)
        if dropped:
            log.warning("dropped %d log records of unknown flow runs", dropped)
        session.add_all([_log_row(r) for r in kept])
    return len(kept)


async def prune_logs(db: Database, older_than: datetime, batch: int) -> int:
    """Delete the records stored before ``older_than``, ``batch`` rows per
    transaction (a long delete would hold the write lock); how many."""
    oldest = select(col(Log.id)).where(col(Log.created) < older_than).order_by(col(Log.created)).limit(batch)
    deleted = 0
    while True:
        async with db.write_session() as session:
            result = await session.execute(delete(Log).where(col(Log.id).in_(oldest.scalar_subquery())))
        count = int(getattr(result, "rowcount", 0) or 0)
        deleted += count
        if count < batch:
            return deleted
        await asyncio.sleep(0)  # let the hot paths write between batches


async def wait_for_logs(js: JetStreamContext, flow_run_id: str, timeout: float = CATCH_UP_SECONDS) -> bool:
    """Wait until the log writer has stored every batch the run shipped so far.

    The writer stores batches asynchronously, so a run that has finished may
    still have its last batch in flight; a reader that waits here reads its
    own run's logs whole. True when caught up; False after ``timeout`` (the
    caller answers with what is stored).
    """
    if not _SUBJECT_TOKEN.fullmatch(flow_run_id):
        return True  # not a run id that could ship logs: nothing to wait for
    try:
        last = await last_sequence(js, subjects.LOGS_STREAM, subjects.logs(flow_run_id))
    except NatsError:
        return False
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            info = await js.consumer_info(subjects.LOGS_STREAM, subjects.LOGS_DURABLE)
            if (info.ack_floor.stream_seq or 0) >= last:
                return True
        except NatsError:
            pass
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(CATCH_UP_POLL)
