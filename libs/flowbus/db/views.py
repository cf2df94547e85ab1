"""Read models: table rows turned into the published messages, and the
shared look-ups several services read (a service writes only its own
tables, but any may read)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlmodel.ext.asyncio.session import AsyncSession

from flowbus.db.tables import Flow, FlowGroup, FlowRun, Project, TaskRun
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


def flow_run_out(run: Any, flow_name: str, project_name: str) -> FlowRunOut:
    """A run as published: ``run`` is a FlowRun, a Core row of flow_run, or anything with its columns."""
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
