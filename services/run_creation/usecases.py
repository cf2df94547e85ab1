"""Creating flow runs (SEMANTICS.md, "Creating flow runs").

Inserts the flow_run row (Scheduled, version 1), its task runs (Pending)
and the first state-history entry in one transaction, and stages in the
outbox: ``flowbus.evt.flow_run.<id>.created``, ``...<id>.state`` and, when
the run is already due, its ``flowbus.runq.<label-set key>`` message
(message id ``runq:<run>:<version>``, the same one the scheduler uses, so
the run is queued once).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlmodel import col
from sqlmodel.ext.asyncio.session import AsyncSession

from flowbus import subjects
from flowbus.db.engine import Database
from flowbus.db.tables import Flow, FlowGroup, FlowRun, Project, StateHistory, TaskRun, utcnow
from flowbus.db.views import flow_run_out, load_flow, load_flow_run, state_out_of_run
from flowbus.names import generate_run_name
from flowbus.runtime.outbox import stage
from flowbus.schemas.common import Archived, Conflict, NotFound, ValidationFailed
from flowbus.schemas.flows import ParameterSpec, RunConfigSpec
from flowbus.schemas.runs import CreateFlowRun, FlowRunCreated, FlowRunOut, RunQueued, StateChanged
from flowbus.states import StateType

OWNER = "run_creation"
SCHEDULED_MESSAGE = "Flow run scheduled."


async def create_flow_run(db: Database, cmd: CreateFlowRun, idempotency_ttl: float | None) -> FlowRunOut:
    try:
        return await _create(db, cmd, idempotency_ttl)
    except IntegrityError:
        # A concurrent create with the same idempotency key won the insert.
        if cmd.idempotency_key is None:
            raise
        async with db.session() as session:
            flow, _group, _project = await _resolve_flow(session, cmd)
            existing = await _existing(session, flow.id, cmd.idempotency_key)
            if existing is None:
                raise
            run, flow, _g, project = await load_flow_run(session, existing.id)
            return flow_run_out(run, flow, project)


async def _create(db: Database, cmd: CreateFlowRun, idempotency_ttl: float | None) -> FlowRunOut:
    now = utcnow()
    async with db.transaction() as session:
        flow, group, project = await _resolve_flow(session, cmd)

        if cmd.idempotency_key is not None:
            existing = await _existing(session, flow.id, cmd.idempotency_key)
            if existing is not None:
                expired = existing.idempotency_expires is not None and existing.idempotency_expires <= now
                if not expired:
                    if idempotency_ttl is not None:
                        # Seed 002's sliding window: every hit refreshes the key.
                        existing.idempotency_expires = now + timedelta(seconds=idempotency_ttl)
                        session.add(existing)
                    return flow_run_out(existing, flow, project)
                # The old run keeps its history but gives up the key.
                existing.idempotency_key = None
                existing.idempotency_expires = None
                session.add(existing)
                await session.flush()

        parameters = merge_parameters(
            [ParameterSpec.model_validate(p) for p in flow.parameters],
            group.default_parameters,
            cmd.parameters,
        )
        labels = resolve_labels(cmd, group, RunConfigSpec.model_validate(flow.run_config or {}))
        start = cmd.scheduled_start_time or now
        run = FlowRun(
            flow_id=flow.id,
            flow_group_id=group.id,
            name=cmd.run_name or generate_run_name(),
            parameters=parameters,
            context=dict(cmd.context),
            labels=labels,
            run_config=cmd.run_config.model_dump(mode="json") if cmd.run_config else None,
            scheduled_start_time=start,
            idempotency_key=cmd.idempotency_key,
            idempotency_expires=(
                now + timedelta(seconds=idempotency_ttl)
                if cmd.idempotency_key is not None and idempotency_ttl is not None
                else None
            ),
            state=StateType.SCHEDULED.value,
            state_message=SCHEDULED_MESSAGE,
            state_timestamp=now,
            version=1,
            created=now,
            updated=now,
        )
        session.add(run)
        await session.flush()
        for task in flow.tasks:
            session.add(
                TaskRun(
                    flow_run_id=run.id,
                    task_slug=task["slug"],
                    task_name=task["name"],
                    max_retries=task.get("max_retries", 0),
                    retry_delay_seconds=task.get("retry_delay_seconds"),
                    state=StateType.PENDING.value,
                    state_timestamp=now,
                )
            )
        session.add(
            StateHistory(flow_run_id=run.id, type=run.state, message=SCHEDULED_MESSAGE, version=1, timestamp=now)
        )
        await session.flush()
        out = flow_run_out(run, flow, project)
        stage(
            session,
            OWNER,
            subjects.flow_run_event(run.id, "created"),
            FlowRunCreated(
                flow_run_id=run.id,
                flow_id=flow.id,
                name=run.name,
                labels=labels,
                scheduled_start_time=start,
            ),
            f"flow_run:{run.id}:created",
        )
        stage(
            session,
            OWNER,
            subjects.flow_run_event(run.id, "state"),
            StateChanged(flow_run_id=run.id, version=1, state=state_out_of_run(run)),
            f"flow_run:{run.id}:state:1",
        )
        if start <= now:
            stage(
                session,
                OWNER,
                subjects.run_queue(labels),
                RunQueued(
                    flow_run_id=run.id,
                    flow_id=flow.id,
                    version=1,
                    labels=labels,
                    scheduled_start_time=start,
                ),
                f"runq:{run.id}:1",
            )
    return out


async def _existing(session: AsyncSession, flow_id: str, key: str) -> FlowRun | None:
    row = (
        await session.execute(
            select(FlowRun).where(FlowRun.flow_id == flow_id, FlowRun.idempotency_key == key)  # type: ignore[arg-type]
        )
    ).first()
    return row[0] if row else None


async def _resolve_flow(session: AsyncSession, cmd: CreateFlowRun) -> tuple[Flow, FlowGroup, Project]:
    """The flow a create targets: by id, by version group, or by name (+ project)."""
    if cmd.flow_id is not None:
        flow, group, project = await load_flow(session, cmd.flow_id)
        if flow.archived:
            raise Archived(f"Flow {flow.id} is archived.")
        return flow, group, project

    stmt = (
        select(col(Flow.id))
        .join(Project, Project.id == Flow.project_id)  # type: ignore[arg-type]
        .where(Flow.archived.is_(False))  # type: ignore[attr-defined]
    )
    if cmd.version_group_id is not None:
        ids = (await session.execute(stmt.where(Flow.flow_group_id == cmd.version_group_id))).scalars().all()  # type: ignore[arg-type]
        if not ids:
            if await session.get(FlowGroup, cmd.version_group_id) is None:
                raise NotFound(f"Version group {cmd.version_group_id} not found")
            raise NotFound(f"Version group {cmd.version_group_id} has no unarchived flows.")
        if len(ids) > 1:
            raise Conflict(f"Version group {cmd.version_group_id} has {len(ids)} unarchived flows; give a flow id.")
        return await load_flow(session, ids[0])

    stmt = stmt.where(Flow.name == cmd.flow_name)  # type: ignore[arg-type]
    if cmd.project_name is not None:
        stmt = stmt.where(Project.name == cmd.project_name)  # type: ignore[arg-type]
    ids = (await session.execute(stmt.order_by(Flow.version.desc()))).scalars().all()  # type: ignore[attr-defined]
    where = f' in project "{cmd.project_name}"' if cmd.project_name else ""
    if not ids:
        raise NotFound(f'No unarchived flow named "{cmd.flow_name}"{where} found.')
    candidates = [await load_flow(session, flow_id) for flow_id in ids]
    groups = {flow.flow_group_id for flow, _g, _p in candidates}
    if len(groups) > 1:
        projects = sorted({p.name for _f, _g, p in candidates})
        raise Conflict(f'Flow name "{cmd.flow_name}" is not unique (projects: {", ".join(projects)}); give a project.')
    if len(candidates) > 1:
        raise Conflict(f'Flow "{cmd.flow_name}" has {len(candidates)} unarchived versions; give a flow id.')
    return candidates[0]


def merge_parameters(
    declared: list[ParameterSpec], group_defaults: dict[str, Any], supplied: dict[str, Any]
) -> dict[str, Any]:
    """Flow defaults, then group defaults, then the supplied values.

    Unknown names are refused (1.x silently accepted them), and so is a
    required parameter that nothing supplies.
    """
    names = {p.name for p in declared}
    unknown = sorted(set(supplied) - names)
    if unknown:
        raise ValidationFailed(f"Unknown parameters were supplied: {unknown}")
    merged: dict[str, Any] = {p.name: p.default for p in declared if not p.required}
    merged.update({k: v for k, v in group_defaults.items() if k in names})
    merged.update(supplied)
    missing = sorted(p.name for p in declared if p.required and p.name not in merged)
    if missing:
        raise ValidationFailed(f"Required parameters were not supplied: {set(missing)}")
    return merged


def resolve_labels(cmd: CreateFlowRun, group: FlowGroup, flow_run_config: RunConfigSpec) -> list[str]:
    """The first label set that is given wins (SEMANTICS.md order)."""
    group_run_config = RunConfigSpec.model_validate(group.run_config or {})
    for candidate in (
        cmd.labels,
        cmd.run_config.labels if cmd.run_config else None,
        group.labels,
        group_run_config.labels,
        flow_run_config.labels,
    ):
        if candidate is not None:
            return sorted(set(candidate))
    return []
