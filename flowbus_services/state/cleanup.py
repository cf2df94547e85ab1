"""Deleting runs: one by command, and a flow's waiting runs when it is archived or unscheduled.

Emits ``flowbus.evt.flow_run.<id>.deleted`` for each run it deletes;
cancellations go through ``transitions.apply_transitions``, the one path
that changes states.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlmodel import col, select

from flowbus import subjects
from flowbus.db.engine import Database, WriteSession
from flowbus.db.tables import FlowRun
from flowbus.schemas.common import FlowbusError, NotFound, VersionLockingError
from flowbus.schemas.flows import Deleted
from flowbus.schemas.runs import (
    DeleteFlowRun,
    FlowRunDeleted,
    SetFlowRunState,
    StateSpec,
)
from flowbus.states import StateType
from flowbus_services.state.transitions import apply_transitions

ARCHIVED_MESSAGE = "Flow {flow_id} was archived."
CLEANUP_CHUNK = 256


async def delete_as_read(session: WriteSession, run: FlowRun, reason: str) -> bool:
    """Delete ``run`` as it was read (at its version), and say whether it was.

    The read takes no lock on PostgreSQL: an agent's claim or another clean-up
    may move or delete the run before this write. They win; a claimed run
    is never deleted under its agent, and nothing is emitted for it."""
    # Task runs, history, logs and the heartbeat row go with it (ON DELETE CASCADE).
    result = await session.execute(
        sa.delete(FlowRun).where(col(FlowRun.id) == run.id, col(FlowRun.version) == run.version)
    )
    if run in session:
        session.expunge(run)  # gone from the table: the session must not flush it
    if int(getattr(result, "rowcount", 0) or 0) != 1:
        return False
    session.emit(FlowRunDeleted(flow_run_id=run.id, reason=reason))
    return True


async def delete_flow_run(db: Database, cmd: DeleteFlowRun) -> Deleted:
    """Delete one run; NOT_FOUND if there is none, VERSION_LOCKING_ERROR if it moved past ``version``."""
    async with db.write_session() as session:
        run = await session.get(FlowRun, cmd.flow_run_id)
        if run is None:
            raise NotFound(f"Flow run {cmd.flow_run_id} not found")
        if cmd.version is not None and run.version != cmd.version:
            raise VersionLockingError(
                f"Flow run {run.id} is at version {run.version}, not {cmd.version}: it was not deleted."
            )
        if not await delete_as_read(session, run, "deleted by command"):
            raise VersionLockingError(f"Flow run {run.id} changed while it was being deleted: it was not deleted.")
    return Deleted(id=cmd.flow_run_id)


async def clean_up_flow_runs(db: Database, flow_id: str, fact: str) -> int:
    """A flow was archived or its schedule turned off: its not-started
    auto-scheduled runs are deleted; when archived, its ad-hoc Scheduled runs
    are also Cancelled("Flow <id> was archived.") through the transition
    path. Idempotent: a redelivered event finds nothing left to do. Returns
    how many runs were touched."""
    async with db.write_session() as session:
        waiting = (
            await session.exec(
                select(FlowRun).where(col(FlowRun.flow_id) == flow_id, col(FlowRun.state) == StateType.SCHEDULED.value)
            )
        ).all()
        deleted = 0
        for run in waiting:
            if run.auto_scheduled and await delete_as_read(session, run, f"flow {flow_id}: {fact}"):
                deleted += 1
        to_cancel = [(r.id, r.version) for r in waiting if not r.auto_scheduled]
    if fact != subjects.FlowFact.ARCHIVED or not to_cancel:
        return deleted
    message = ARCHIVED_MESSAGE.format(flow_id=flow_id)
    cancel = StateSpec(type=StateType.CANCELLED, message=message)
    cancelled = 0
    for start in range(0, len(to_cancel), CLEANUP_CHUNK):
        commands = [
            SetFlowRunState(flow_run_id=run_id, version=version, state=cancel)
            for run_id, version in to_cancel[start : start + CLEANUP_CHUNK]
        ]
        try:
            outcomes = await apply_transitions(db, commands)
        except Exception:
            # A run changed under the batch (a claim raced it): one by one,
            # the claimed run is refused and left to run.
            outcomes = [o for cmd in commands for o in await apply_transitions(db, [cmd])]
        cancelled += sum(1 for o in outcomes if not isinstance(o, FlowbusError))
    return deleted + cancelled
