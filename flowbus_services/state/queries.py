"""State queries: the read side of the state service (flow runs, state history, logs).

Serves, through flowbus_services/state/handlers.py, ``flowbus.cmd.state.get_flow_run``,
``...list_flow_runs``, ``...get_flow_run_history`` and ``...get_flow_run_logs``.
Reads flow_run, task_run, state_history and log (this service's tables) and
flow, flow_group and project (registration's, through flowbus.db.views);
writes nothing. The statements are built once at import; a query only binds
its values and adds its optional filters.
"""

from __future__ import annotations

from sqlalchemy import bindparam, select
from sqlmodel import col

from flowbus.db.engine import Database
from flowbus.db.tables import Flow, FlowRun, Log, Project, StateHistory, TaskRun
from flowbus.db.views import flow_run_out, late_cutoff, late_filter, load_flow_run, task_run_out
from flowbus.schemas.common import NotFound
from flowbus.schemas.flows import RunConfigSpec, StorageSpec, TaskSpec
from flowbus.schemas.runs import (
    LOG_LEVELS,
    FlowRunDetail,
    FlowRunList,
    GetFlowRunHistory,
    GetFlowRunLogs,
    HistoryEntry,
    ListFlowRuns,
    LogList,
    LogRecord,
    StateHistoryList,
)
from flowbus.states import StateType

_RUN_EXISTS = select(col(FlowRun.id)).where(col(FlowRun.id) == bindparam("flow_run_id"))

_TASK_RUNS = (
    select(TaskRun)
    .where(col(TaskRun.flow_run_id) == bindparam("flow_run_id"))
    .order_by(col(TaskRun.created), col(TaskRun.task_slug), col(TaskRun.map_index))
)

_PROJECT_ID = select(col(Project.id)).where(col(Project.name) == bindparam("name"))

# Newest scheduled first; created and id break ties so that pages never overlap.
_RUNS = (
    select(FlowRun, Flow, Project)
    .join(Flow, col(Flow.id) == col(FlowRun.flow_id))
    .join(Project, col(Project.id) == col(Flow.project_id))
    .order_by(col(FlowRun.scheduled_start_time).desc(), col(FlowRun.created).desc(), col(FlowRun.id))
)

# Insertion order: a run's next version is written only after its previous one
# committed, so per run (flow or task) this is version order, and across runs it
# is the order in which the states were accepted.
_HISTORY = (
    select(StateHistory).where(col(StateHistory.flow_run_id) == bindparam("flow_run_id")).order_by(col(StateHistory.id))
)
_FLOW_RUN_HISTORY = _HISTORY.where(col(StateHistory.task_run_id).is_(None))

_LOGS = (
    select(Log)
    .where(col(Log.flow_run_id) == bindparam("flow_run_id"))
    .order_by(col(Log.timestamp), col(Log.id))
    .limit(bindparam("limit"))
)


def _run_not_found(flow_run_id: str) -> NotFound:
    return NotFound(f"Flow run {flow_run_id} not found")


async def get_flow_run(db: Database, flow_run_id: str, late_after: float) -> FlowRunDetail:
    """A run with its task runs and what its runner needs (storage, tasks, settings);
    late when still Scheduled ``late_after`` seconds past its start time."""
    async with db.read_session() as session:
        run, flow, group, project = await load_flow_run(session, flow_run_id)
        task_runs = (await session.execute(_TASK_RUNS, {"flow_run_id": run.id})).scalars().all()
        return FlowRunDetail(
            run=flow_run_out(run, flow.name, project.name, late_cutoff(late_after)),
            task_runs=[task_run_out(t) for t in task_runs],
            storage=StorageSpec.model_validate(flow.storage),
            tasks=[TaskSpec.model_validate(t) for t in flow.tasks],
            run_config=RunConfigSpec.model_validate(run.run_config or flow.run_config or {}),
            heartbeat_enabled=group.heartbeat_enabled,
            version_locking_enabled=group.version_locking_enabled,
        )


async def list_flow_runs(db: Database, query: ListFlowRuns, late_after: float) -> FlowRunList:
    """Runs filtered by flow, flow group, project, state and lateness, newest scheduled first;
    late when still Scheduled ``late_after`` seconds past their start time."""
    cutoff = late_cutoff(late_after)
    stmt = _RUNS
    if query.flow_id is not None:
        stmt = stmt.where(col(FlowRun.flow_id) == query.flow_id)
    if query.flow_group_id is not None:
        stmt = stmt.where(col(FlowRun.flow_group_id) == query.flow_group_id)
    if query.project_name is not None:
        stmt = stmt.where(col(Project.name) == query.project_name)
    if query.states is not None:
        stmt = stmt.where(col(FlowRun.state).in_([s.value for s in query.states]))
    if query.late is not None:
        stmt = stmt.where(late_filter(cutoff, query.late))
    stmt = stmt.limit(query.limit).offset(query.offset)
    async with db.read_session() as session:
        if query.project_name is not None:
            project_id = (await session.execute(_PROJECT_ID, {"name": query.project_name})).scalar_one_or_none()
            if project_id is None:
                raise NotFound(f'Project "{query.project_name}" not found.')
        rows = (await session.execute(stmt)).all()
        return FlowRunList(runs=[flow_run_out(run, flow.name, project.name, cutoff) for run, flow, project in rows])


async def get_flow_run_history(db: Database, query: GetFlowRunHistory) -> StateHistoryList:
    """Every accepted state of a run (and of its task runs when asked), oldest first."""
    stmt = _HISTORY if query.include_task_runs else _FLOW_RUN_HISTORY
    async with db.read_session() as session:
        if (await session.execute(_RUN_EXISTS, {"flow_run_id": query.flow_run_id})).first() is None:
            raise _run_not_found(query.flow_run_id)
        rows = (await session.execute(stmt, {"flow_run_id": query.flow_run_id})).scalars().all()
        return StateHistoryList(
            entries=[
                HistoryEntry(
                    flow_run_id=row.flow_run_id,
                    task_run_id=row.task_run_id,
                    version=row.version,
                    type=StateType(row.type),
                    message=row.message,
                    timestamp=row.timestamp,
                    result=row.result,
                )
                for row in rows
            ]
        )


async def get_flow_run_logs(db: Database, query: GetFlowRunLogs) -> LogList:
    """A run's stored logs in time order: at least ``level``, between ``since`` and ``until`` inclusive."""
    stmt = _LOGS
    if query.level is not None:
        stmt = stmt.where(col(Log.level).in_(LOG_LEVELS[LOG_LEVELS.index(query.level) :]))
    if query.since is not None:
        stmt = stmt.where(col(Log.timestamp) >= query.since)
    if query.until is not None:
        stmt = stmt.where(col(Log.timestamp) <= query.until)
    async with db.read_session() as session:
        if (await session.execute(_RUN_EXISTS, {"flow_run_id": query.flow_run_id})).first() is None:
            raise _run_not_found(query.flow_run_id)
        rows = (await session.execute(stmt, {"flow_run_id": query.flow_run_id, "limit": query.limit})).scalars().all()
        return LogList(records=[LogRecord.model_validate(r, from_attributes=True) for r in rows])
