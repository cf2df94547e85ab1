"""Task runs made on demand (a mapped child's, when a runner first asks for
it), and the names of runs.

A flow run's task runs (map index -1) are made with it by run_creation; a
mapped task's children exist only once a runner asks for one
(``ensure_task_run``), as Prefect 1.x's runner does for each child. Made
Pending at version 1; ``flowbus.evt.flow_run.<id>.task_state`` announces it
(through the outbox).
"""

from __future__ import annotations

from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from flowbus.db.engine import Database
from flowbus.db.tables import FlowRun, Task, TaskRun, utcnow
from flowbus.db.views import state_out_of_run, task_run_out
from flowbus.schemas.common import NotFound, ValidationFailed
from flowbus.schemas.runs import EnsureTaskRun, Renamed, RenameRun, StateChanged, TaskRunInfo
from flowbus.states import StateType

CREATED_MESSAGE = "Task run created"
# One retry: a second writer's insert lost to ours, or ours to theirs.
ATTEMPTS = 2


async def ensure_task_run(db: Database, cmd: EnsureTaskRun) -> TaskRunInfo:
    """The task run of ``cmd.task_id`` at ``cmd.map_index`` in the flow run, made if missing."""
    for attempt in range(ATTEMPTS):
        try:
            return await _ensure_once(db, cmd)
        except IntegrityError:
            if attempt == ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


async def _ensure_once(db: Database, cmd: EnsureTaskRun) -> TaskRunInfo:
    async with db.write_session() as session:
        run = await session.get(FlowRun, cmd.flow_run_id)
        if run is None:
            raise NotFound(f"Flow run {cmd.flow_run_id} not found")
        task = await session.get(Task, cmd.task_id)
        if task is None or task.flow_id != run.flow_id:
            raise ValidationFailed(f"Invalid task ID: {cmd.task_id} is not a task of flow run {run.id}'s flow.")
        found = (
            await session.exec(
                select(TaskRun).where(
                    col(TaskRun.flow_run_id) == run.id,
                    col(TaskRun.task_slug) == task.slug,
                    col(TaskRun.map_index) == cmd.map_index,
                )
            )
        ).first()
        if found is not None:
            return TaskRunInfo(task_run=task_run_out(found), serialized_state=found.state_serialized)
        now = utcnow()
        made = TaskRun(
            flow_run_id=run.id,
            task_slug=task.slug,
            task_name=task.name,
            map_index=cmd.map_index,
            max_retries=task.max_retries,
            retry_delay_seconds=task.retry_delay_seconds,
            state=StateType.PENDING.value,
            state_message=CREATED_MESSAGE,
            state_timestamp=now,
            created=now,
            updated=now,
        )
        session.add(made)
        await session.flush()
        session.emit(
            StateChanged(flow_run_id=run.id, task_run_id=made.id, version=made.version, state=state_out_of_run(made))
        )
        return TaskRunInfo(task_run=task_run_out(made))


async def rename_run(db: Database, cmd: RenameRun) -> Renamed:
    """Give a flow run or a task run a new name (no event: names are not states)."""
    table: type[FlowRun] | type[TaskRun]
    table, run_id, what = (
        (FlowRun, cmd.flow_run_id, "Flow run")
        if cmd.flow_run_id is not None
        else (TaskRun, cmd.task_run_id, "Task run")
    )
    assert run_id is not None  # RenameRun names exactly one
    async with db.write_session() as session:
        row = await session.get(table, run_id)
        if row is None:
            raise NotFound(f"{what} {run_id} not found")
        row.name, row.updated = cmd.name, utcnow()
        session.add(row)
    return Renamed(id=run_id, name=cmd.name)
