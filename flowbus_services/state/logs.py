"""Log storage: the state service persists the log batches of the LOGS stream.

Owns the log table. Reads nothing from NATS itself: ``handlers.write_logs``
feeds it the batches of ``flowbus.logs.<flow_run_id>``.
"""

from __future__ import annotations

import logging

from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from flowbus.db.engine import Database
from flowbus.db.tables import FlowRun, Log
from flowbus.schemas.runs import LogRecord

log = logging.getLogger(__name__)


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
