"""Read models: table rows turned into the published messages, and the
shared look-ups several services read (a service writes only its own
tables, but any may read)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, func, not_, select
from sqlmodel import col
from sqlmodel.ext.asyncio.session import AsyncSession

from flowbus.db.tables import Flow, FlowGroup, FlowRun, Project, TaskRun, utcnow
from flowbus.schemas.common import NotFound
from flowbus.schemas.flows import (
    EdgeSpec,
    FlowGroupOut,
    FlowOut,
    FlowSettings,
    FlowVersion,
    ParameterSpec,
    ProjectOut,
    RunConfigSpec,
    ScheduleSpec,
    StorageSpec,
    TaskSpec,
)
from flowbus.schemas.runs import FlowRunOut, StateOut, TaskRunOut
from flowbus.states import StateType


def project_out(project: Project) -> ProjectOut:
    return ProjectOut(id=project.id, name=project.name, description=project.description, created=project.created)


def flow_settings(group: FlowGroup) -> FlowSettings:
    return FlowSettings(
        heartbeat_enabled=group.heartbeat_enabled,
        lazarus_enabled=group.lazarus_enabled,
        version_locking_enabled=group.version_locking_enabled,
    )


def flow_group_out(group: FlowGroup) -> FlowGroupOut:
    return FlowGroupOut(
        id=group.id,
        project_id=group.project_id,
        name=group.name,
        labels=group.labels,
        default_parameters=group.default_parameters,
        settings=flow_settings(group),
        schedule=ScheduleSpec.model_validate(group.schedule) if group.schedule else None,
    )


def effective_schedule(flow: Flow, group: FlowGroup) -> ScheduleSpec | None:
    """The group's schedule overrides the flow's own when set."""
    raw = group.schedule or flow.schedule
    return ScheduleSpec.model_validate(raw) if raw else None


def flow_out(
    flow: Flow,
    group: FlowGroup,
    project: Project,
    *,
    skipped: bool = False,
    versions: list[FlowVersion] | None = None,
) -> FlowOut:
    run_config = RunConfigSpec.model_validate(flow.run_config or {})
    return FlowOut(
        id=flow.id,
        project_id=flow.project_id,
        project_name=project.name,
        flow_group_id=flow.flow_group_id,
        name=flow.name,
        version=flow.version,
        description=flow.description,
        archived=flow.archived,
        labels=sorted(group.labels if group.labels is not None else (run_config.labels or [])),
        parameters=[ParameterSpec.model_validate(p) for p in flow.parameters],
        tasks=[TaskSpec.model_validate(t) for t in flow.tasks],
        edges=[EdgeSpec.model_validate(e) for e in flow.edges],
        storage=StorageSpec.model_validate(flow.storage),
        run_config=run_config,
        schedule=effective_schedule(flow, group),
        is_schedule_active=flow.is_schedule_active,
        core_version=flow.core_version,
        settings=flow_settings(group),
        default_parameters=group.default_parameters,
        created=flow.created,
        skipped=skipped,
        versions=versions,
    )


def state_out_of_run(row: Any) -> StateOut:
    """The current state of a flow or task run: an ORM row or anything with its columns as attributes."""
    return StateOut(
        type=StateType(row.state),
        message=row.state_message,
        timestamp=row.state_timestamp,
        version=row.version,
    )


def late_cutoff(late_after: float) -> datetime:
    """Runs still Scheduled with a start time before this are late (``scheduler.late_after`` seconds ago)."""
    return utcnow() - timedelta(seconds=late_after)


def is_late(state: str, scheduled_start_time: datetime, cutoff: datetime) -> bool:
    return state == StateType.SCHEDULED.value and scheduled_start_time < cutoff


def late_filter(cutoff: datetime, late: bool = True) -> ColumnElement[bool]:
    """The SQL form of ``is_late`` (``late=False``: its negation), served by the ix_flow_run_due index."""
    condition = and_(col(FlowRun.state) == StateType.SCHEDULED.value, col(FlowRun.scheduled_start_time) < cutoff)
    return condition if late else not_(condition)


async def count_late_runs(session: AsyncSession, late_after: float) -> int:
    """How many runs are late now."""
    stmt = select(func.count()).select_from(FlowRun).where(late_filter(late_cutoff(late_after)))
    return int((await session.execute(stmt)).scalar_one())


def flow_run_out(run: Any, flow_name: str, project_name: str, late_before: datetime | None = None) -> FlowRunOut:
    """A run as published: ``run`` is a FlowRun, a Core row of flow_run, or anything with its columns.

    ``late_before`` (``late_cutoff()``) flags a late run; without it (a run
    just created, which cannot be late) ``late`` is False and costs nothing."""
    return FlowRunOut(
        id=run.id,
        flow_id=run.flow_id,
        flow_name=flow_name,
        flow_group_id=run.flow_group_id,
        project_name=project_name,
        name=run.name,
        parameters=run.parameters,
        context=run.context,
        labels=run.labels,
        scheduled_start_time=run.scheduled_start_time,
        auto_scheduled=run.auto_scheduled,
        idempotency_key=run.idempotency_key,
        version=run.version,
        state=state_out_of_run(run),
        agent_id=run.agent_id,
        start_time=run.start_time,
        end_time=run.end_time,
        times_resurrected=run.times_resurrected,
        created=run.created,
        updated=run.updated,
        late=late_before is not None and is_late(run.state, run.scheduled_start_time, late_before),
    )


def task_run_out(task_run: TaskRun) -> TaskRunOut:
    return TaskRunOut(
        id=task_run.id,
        flow_run_id=task_run.flow_run_id,
        task_slug=task_run.task_slug,
        task_name=task_run.task_name,
        map_index=task_run.map_index,
        version=task_run.version,
        state=state_out_of_run(task_run),
        max_retries=task_run.max_retries,
        retry_delay_seconds=task_run.retry_delay_seconds,
    )


async def load_flow(session: AsyncSession, flow_id: str) -> tuple[Flow, FlowGroup, Project]:
    row = (
        await session.execute(
            select(Flow, FlowGroup, Project)
            .join(FlowGroup, FlowGroup.id == Flow.flow_group_id)  # type: ignore[arg-type]
            .join(Project, Project.id == Flow.project_id)  # type: ignore[arg-type]
            .where(Flow.id == flow_id)  # type: ignore[arg-type]
        )
    ).first()
    if row is None:
        raise NotFound(f"Flow {flow_id} not found")
    return row[0], row[1], row[2]


async def load_flow_run(session: AsyncSession, flow_run_id: str) -> tuple[FlowRun, Flow, FlowGroup, Project]:
    row = (
        await session.execute(
            select(FlowRun, Flow, FlowGroup, Project)
            .join(Flow, Flow.id == FlowRun.flow_id)  # type: ignore[arg-type]
            .join(FlowGroup, FlowGroup.id == Flow.flow_group_id)  # type: ignore[arg-type]
            .join(Project, Project.id == Flow.project_id)  # type: ignore[arg-type]
            .where(FlowRun.id == flow_run_id)  # type: ignore[arg-type]
        )
    ).first()
    if row is None:
        raise NotFound(f"Flow run {flow_run_id} not found")
    return row[0], row[1], row[2], row[3]
