"""Registration use cases: plain async functions over a session.

Owns the project, flow_group and flow tables. Emits, with its writes,
``flowbus.evt.project.<id>.<fact>``, ``flowbus.evt.flow.<id>.<fact>`` and
``flowbus.evt.flow_group.<id>.group_changed`` (published once the write
commits); writes nothing else.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from sqlalchemy import delete, func, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from flowbus import subjects
from flowbus.db.engine import Database, WriteSession
from flowbus.db.tables import Flow, FlowGroup, Project, Task, utcnow
from flowbus.db.views import effective_schedule, flow_group_out, flow_out, load_flow, project_out
from flowbus.schemas.common import MAX_EDGES, MAX_TASKS, Conflict, NotFound, ValidationFailed
from flowbus.schemas.flows import (
    AddFlowTasks,
    ArchiveFlow,
    CreateProject,
    Deleted,
    DeleteProject,
    FlowEvent,
    FlowGroupChanged,
    FlowGroupOut,
    FlowList,
    FlowOut,
    FlowVersion,
    GetFlow,
    GetProject,
    ListFlows,
    ListProjects,
    ParameterSpec,
    ProjectCreated,
    ProjectDeleted,
    ProjectDescribed,
    ProjectList,
    ProjectOut,
    ProjectRef,
    ProjectRenamed,
    RegisterFlow,
    RenameProject,
    ScheduleSpec,
    SetFlowGroupDefaultParameters,
    SetFlowGroupLabels,
    SetFlowGroupSchedule,
    SetFlowScheduleState,
    SetFlowSettings,
    SetProjectDescription,
    TaskSpec,
    UnarchiveFlow,
)

# Concurrent registrations into one group collide on (flow_group_id, version);
# the loser re-reads the highest version and tries again after a short random
# wait, so that a crowd of racers spreads out instead of colliding again.
VERSION_RETRIES = 30
GROUP_NAMESPACE = uuid.UUID("7b0b8a52-6a0e-4c1d-9a57-6f1f2c3e4d5a")


async def create_project(db: Database, cmd: CreateProject) -> ProjectOut:
    async with db.write_session() as session:
        existing = (await session.exec(select(Project).where(col(Project.name) == cmd.name))).first()
        if existing is not None:
            if cmd.skip_if_exists:
                return project_out(existing)
            raise Conflict(f'Project "{cmd.name}" already exists.')
        project = Project(name=cmd.name, description=cmd.description)
        session.add(project)
        await session.flush()
        out = project_out(project)
        session.emit(ProjectCreated(**dict(out)))
    return out


async def _project_by_name(session: AsyncSession, name: str) -> Project:
    project = (await session.exec(select(Project).where(col(Project.name) == name))).first()
    if project is None:
        raise NotFound(f'Project "{name}" not found.')
    return project


async def _project(session: AsyncSession, ref: ProjectRef) -> Project:
    if ref.name is not None:
        return await _project_by_name(session, ref.name)
    project = await session.get(Project, ref.project_id)
    if project is None:
        raise NotFound(f"Project {ref.project_id} not found.")
    return project


async def get_project(db: Database, query: GetProject) -> ProjectOut:
    async with db.read_session() as session:
        return project_out(await _project(session, query))


async def rename_project(db: Database, cmd: RenameProject) -> ProjectOut:
    try:
        async with db.write_session() as session:
            project = await _project(session, cmd.project)
            project.name = cmd.new_name
            session.add(project)
            await session.flush()  # the unique name constraint fires here
            out = project_out(project)
            session.emit(ProjectRenamed(**dict(out)))
    except IntegrityError:
        raise Conflict(f'Project "{cmd.new_name}" already exists.') from None
    return out


async def set_project_description(db: Database, cmd: SetProjectDescription) -> ProjectOut:
    async with db.write_session() as session:
        project = await _project(session, cmd.project)
        project.description = cmd.description
        session.add(project)
        out = project_out(project)
        session.emit(ProjectDescribed(**dict(out)))
    return out


async def delete_project(db: Database, cmd: DeleteProject) -> Deleted:
    """Delete a project; the database cascades to its flows, runs, task runs, states and logs."""
    async with db.write_session() as session:
        project = await _project(session, cmd.project)
        out = Deleted(id=project.id)
        await session.execute(delete(Project).where(col(Project.id) == project.id))
        session.emit(ProjectDeleted(id=project.id))
    return out


async def list_projects(db: Database, query: ListProjects) -> ProjectList:
    async with db.read_session() as session:
        stmt = select(Project).order_by(Project.name, Project.id).limit(query.limit).offset(query.offset)
        rows = (await session.execute(stmt)).all()
        return ProjectList(projects=[project_out(r[0]) for r in rows])


async def register_flow(db: Database, cmd: RegisterFlow) -> FlowOut:
    for _attempt in range(VERSION_RETRIES):
        try:
            return await _register_once(db, cmd)
        except IntegrityError:
            await asyncio.sleep(random.uniform(0.001, 0.02))
    raise Conflict("Too many concurrent registrations into this version group; try again.")


async def _register_once(db: Database, cmd: RegisterFlow) -> FlowOut:
    async with db.write_session() as session:
        project = await _project_by_name(session, cmd.project_name)
        group = await _choose_group(session, project, cmd)
        if cmd.idempotency_key is not None and group.idempotency_key == cmd.idempotency_key:
            newest = await _newest_active_version(session, group)
            if newest is not None:
                return flow_out(newest, group, project, skipped=True)

        highest = (await session.execute(select(func.max(Flow.version)).where(Flow.flow_group_id == group.id))).scalar()
        flow = _new_flow_version(cmd, project, group, (highest or 0) + 1)
        session.add(flow)
        await session.flush()  # the (group, version) constraint fires here
        session.add_all(_task_rows(cmd.serialized_flow.tasks, flow))
        archived = await _archive_other_versions(session, group, flow)
        if cmd.idempotency_key is not None:
            group.idempotency_key = cmd.idempotency_key
            session.add(group)

        out = flow_out(flow, group, project)
        _emit_flow_event(session, out, subjects.FlowFact.REGISTERED)
        for archived_id, archived_version in archived:
            session.emit(
                FlowEvent(
                    flow_id=archived_id,
                    flow_group_id=group.id,
                    project_id=project.id,
                    fact=subjects.FlowFact.ARCHIVED,
                    version=archived_version,
                    archived=True,
                    data={"superseded_by": flow.id},
                )
            )
    return out


async def _newest_active_version(session: AsyncSession, group: FlowGroup) -> Flow | None:
    row = (
        await session.execute(
            select(Flow)
            .where(Flow.flow_group_id == group.id, Flow.archived.is_(False))  # type: ignore[attr-defined]
            .order_by(Flow.version.desc())  # type: ignore[attr-defined]
            .limit(1)
        )
    ).first()
    return None if row is None else row[0]


def _new_flow_version(cmd: RegisterFlow, project: Project, group: FlowGroup, version: int) -> Flow:
    spec = cmd.serialized_flow
    labels = sorted(set(spec.run_config.labels or []) | set(cmd.labels or []))
    run_config = spec.run_config.model_dump(mode="json")
    run_config["labels"] = labels
    return Flow(
        project_id=project.id,
        flow_group_id=group.id,
        name=spec.name,
        version=version,
        description=spec.description,
        serialized_flow=spec.model_dump(mode="json"),
        parameters=[p.model_dump(mode="json") for p in spec.parameters],
        tasks=[t.model_dump(mode="json") for t in spec.tasks],
        edges=[e.model_dump(mode="json") for e in spec.edges],
        storage=spec.storage.model_dump(mode="json"),
        run_config=run_config,
        schedule=spec.schedule.model_dump(mode="json") if spec.schedule else None,
        is_schedule_active=bool(
            cmd.set_schedule_active
            and spec.schedule
            and schedule_covers_required(spec.parameters, group.default_parameters, spec.schedule)
        ),
        core_version=spec.core_version,
    )


def _task_rows(tasks: Iterable[TaskSpec], flow: Flow) -> list[Task]:
    """The flow version's tasks as rows of their own: queries and task runs name them by id."""
    return [
        Task(
            flow_id=flow.id,
            slug=t.slug,
            name=t.name,
            type=t.type,
            max_retries=t.max_retries,
            retry_delay_seconds=t.retry_delay_seconds,
            tags=list(t.tags),
            created=flow.created,
        )
        for t in tasks
    ]


async def add_flow_tasks(db: Database, cmd: AddFlowTasks) -> FlowOut:
    """Add tasks and edges to a flow version (Prefect 1.x registers them after
    the flow); known task slugs and known edges are left as they are."""
    async with db.write_session() as session:
        # Writers of one flow version take turns, each reading the lists the one
        # before wrote: on PostgreSQL two at once would each add to the lists they
        # read, and the later commit would drop the other's tasks and edges.
        # (SQLite has one writer at a time; there the lock is no clause at all.)
        await session.execute(select(Flow.id).where(col(Flow.id) == cmd.flow_id).with_for_update())
        flow, group, project = await load_flow(session, cmd.flow_id)
        known = {t["slug"] for t in flow.tasks}
        new_tasks = [t for t in cmd.tasks if t.slug not in known]
        slugs = known | {t.slug for t in new_tasks}
        missing = sorted({s for e in cmd.edges for s in (e.upstream, e.downstream)} - slugs)
        if missing:
            raise ValidationFailed(f"edges name tasks the flow does not have: {missing[:20]}")
        seen = {(e["upstream"], e["downstream"], e.get("key")) for e in flow.edges}
        new_edges = []
        for edge in cmd.edges:
            key = (edge.upstream, edge.downstream, edge.key)
            if key not in seen:
                seen.add(key)
                new_edges.append(edge)
        if len(flow.tasks) + len(new_tasks) > MAX_TASKS or len(flow.edges) + len(new_edges) > MAX_EDGES:
            raise ValidationFailed(f"A flow has at most {MAX_TASKS} tasks and {MAX_EDGES} edges.")
        if new_tasks or new_edges:
            tasks = [*flow.tasks, *(t.model_dump(mode="json") for t in new_tasks)]
            edges = [*flow.edges, *(e.model_dump(mode="json") for e in new_edges)]
            # New lists (not appends): the JSON columns see a change only on assignment.
            flow.tasks, flow.edges = tasks, edges
            flow.serialized_flow = {**flow.serialized_flow, "tasks": tasks, "edges": edges}
            session.add(flow)
            session.add_all(_task_rows(new_tasks, flow))
        out = flow_out(flow, group, project)
    return out


async def _archive_other_versions(session: AsyncSession, group: FlowGroup, flow: Flow) -> list[tuple[str, int]]:
    """Archive every other version of ``flow``'s group (a new version supersedes them); their ids and versions."""
    rows = (
        await session.execute(
            update(Flow)
            .where(col(Flow.flow_group_id) == group.id, col(Flow.id) != flow.id, col(Flow.archived).is_(False))
            # The schedule switch is kept, so unarchiving restores it.
            .values(archived=True)
            .returning(col(Flow.id), col(Flow.version))
        )
    ).all()
    return [(row[0], row[1]) for row in rows]


def _emit_flow_event(session: WriteSession, out: FlowOut, fact: str) -> None:
    session.emit(
        FlowEvent(
            flow_id=out.id,
            flow_group_id=out.flow_group_id,
            project_id=out.project_id,
            fact=fact,
            version=out.version,
            archived=out.archived,
        )
    )


async def _choose_group(session: AsyncSession, project: Project, cmd: RegisterFlow) -> FlowGroup:
    """The group a registration joins: the given id, else the newest same-named flow's, else new."""
    if cmd.version_group_id is not None:
        group = await session.get(FlowGroup, cmd.version_group_id)
        if group is not None:
            if group.project_id != project.id:
                raise Conflict(f"Version group {cmd.version_group_id} belongs to another project.")
            return group
        group = FlowGroup(id=cmd.version_group_id, project_id=project.id, name=cmd.serialized_flow.name)
    else:
        row = (
            await session.execute(
                select(FlowGroup)
                .join(Flow, Flow.flow_group_id == FlowGroup.id)  # type: ignore[arg-type]
                .where(Flow.project_id == project.id, Flow.name == cmd.serialized_flow.name)
                .order_by(Flow.created.desc())  # type: ignore[attr-defined]
                .limit(1)
            )
        ).first()
        if row is not None:
            found: FlowGroup = row[0]
            return found
        # A first registration of a name: the group id is derived from the
        # project and name, so two racing first registrations collide on the
        # primary key (and the loser retries into the winner's group) instead
        # of each creating a group of its own.
        group = FlowGroup(
            id=str(uuid.uuid5(GROUP_NAMESPACE, f"{project.id}/{cmd.serialized_flow.name}")),
            project_id=project.id,
            name=cmd.serialized_flow.name,
        )
    session.add(group)
    await session.flush()
    return group


async def _versions(session: AsyncSession, group_id: str) -> list[FlowVersion]:
    rows = (
        await session.exec(select(Flow).where(col(Flow.flow_group_id) == group_id).order_by(col(Flow.version).desc()))
    ).all()
    return [FlowVersion(id=f.id, version=f.version, archived=f.archived, created=f.created) for f in rows]


async def get_flow(db: Database, query: GetFlow) -> FlowOut:
    async with db.read_session() as session:
        flow, group, project = await load_flow(session, query.flow_id)
        return flow_out(flow, group, project, versions=await _versions(session, group.id))


async def _change_flow(db: Database, flow_id: str, fact: str, change: Callable[[Flow, FlowGroup], bool]) -> FlowOut:
    """Apply ``change`` to a flow and its group in one transaction; publish ``fact`` if it changed anything."""
    async with db.write_session() as session:
        flow, group, project = await load_flow(session, flow_id)
        if change(flow, group):
            group.updated = utcnow()
            session.add_all([flow, group])
            await session.flush()
            out = flow_out(flow, group, project)
            _emit_flow_event(session, out, fact)
        versions = await _versions(session, group.id)
    return flow_out(flow, group, project, versions=versions)


def _set_archived(archived: bool) -> Callable[[Flow, FlowGroup], bool]:
    """A flow change that sets ``archived``; no change (and no event) when it already is."""

    def change(flow: Flow, _group: FlowGroup) -> bool:
        if flow.archived == archived:
            return False
        flow.archived = archived
        return True

    return change


async def archive_flow(db: Database, cmd: ArchiveFlow) -> FlowOut:
    """Archive a flow. The state service reacts to the event: it deletes the
    flow's not-started auto-scheduled runs and cancels its ad-hoc Scheduled ones."""
    return await _change_flow(db, cmd.flow_id, subjects.FlowFact.ARCHIVED, _set_archived(True))


async def unarchive_flow(db: Database, cmd: UnarchiveFlow) -> FlowOut:
    """Make a flow runnable again; its schedule switch is as it was (two versions may both be live)."""
    return await _change_flow(db, cmd.flow_id, subjects.FlowFact.UNARCHIVED, _set_archived(False))


async def set_flow_settings(db: Database, cmd: SetFlowSettings) -> FlowOut:
    def change(_flow: Flow, group: FlowGroup) -> bool:
        before = (group.heartbeat_enabled, group.lazarus_enabled, group.version_locking_enabled)
        if cmd.heartbeat_enabled is not None:
            group.heartbeat_enabled = cmd.heartbeat_enabled
        if cmd.lazarus_enabled is not None:
            group.lazarus_enabled = cmd.lazarus_enabled
        if cmd.version_locking_enabled is not None:
            group.version_locking_enabled = cmd.version_locking_enabled
        return before != (group.heartbeat_enabled, group.lazarus_enabled, group.version_locking_enabled)

    return await _change_flow(db, cmd.flow_id, subjects.FlowFact.SETTINGS, change)


async def set_flow_schedule_state(db: Database, cmd: SetFlowScheduleState) -> FlowOut:
    """Turn auto-scheduling on (refused while a required parameter is not covered
    by every clock) or off (the state service then deletes the flow's
    not-started auto-scheduled runs)."""

    def change(flow: Flow, group: FlowGroup) -> bool:
        if cmd.active:
            schedule = effective_schedule(flow, group)
            if schedule is None:
                raise ValidationFailed(f"Flow {flow.id} has no schedule.")
            declared = [ParameterSpec.model_validate(p) for p in flow.parameters]
            if not schedule_covers_required(declared, group.default_parameters, schedule):
                raise ValidationFailed("Can not schedule a flow that has required parameters.")
        if flow.is_schedule_active == cmd.active:
            return False
        flow.is_schedule_active = cmd.active
        return True

    fact = subjects.FlowFact.SCHEDULE_ON if cmd.active else subjects.FlowFact.SCHEDULE_OFF
    return await _change_flow(db, cmd.flow_id, fact, change)


def schedule_covers_required(
    declared: list[ParameterSpec], group_defaults: dict[str, Any], schedule: ScheduleSpec
) -> bool:
    """True when every clock, with the group's defaults, supplies every required parameter."""
    required = {p.name for p in declared if p.required} - set(group_defaults)
    return all(required <= set(clock.parameter_defaults) for clock in schedule.clocks)


async def _change_group(
    db: Database,
    group_id: str,
    change: Callable[[FlowGroup], None],
    check: Callable[[AsyncSession, FlowGroup], Awaitable[None]] | None = None,
) -> FlowGroupOut:
    """Apply ``change`` to a group and publish ``group_changed``; ``check``, run
    first in the same transaction, may refuse the change by raising."""
    async with db.write_session() as session:
        group = await session.get(FlowGroup, group_id)
        if group is None:
            raise NotFound(f"Flow group {group_id} not found")
        if check is not None:
            await check(session, group)
        schedule_before = group.schedule
        change(group)
        group.updated = utcnow()
        session.add(group)
        await session.flush()
        out = flow_group_out(group)
        session.emit(FlowGroupChanged(**dict(out), schedule_changed=group.schedule != schedule_before))
    return out


async def set_flow_group_labels(db: Database, cmd: SetFlowGroupLabels) -> FlowGroupOut:
    def change(group: FlowGroup) -> None:
        group.labels = sorted(set(cmd.labels)) if cmd.labels is not None else None

    return await _change_group(db, cmd.flow_group_id, change)


async def set_flow_group_default_parameters(db: Database, cmd: SetFlowGroupDefaultParameters) -> FlowGroupOut:
    def change(group: FlowGroup) -> None:
        group.default_parameters = dict(cmd.parameters)

    return await _change_group(db, cmd.flow_group_id, change)


async def set_flow_group_schedule(db: Database, cmd: SetFlowGroupSchedule) -> FlowGroupOut:
    """Set or clear the group's schedule. Refused while a live version with its
    switch on would be left with a clock that misses a required parameter."""
    stored = cmd.schedule.model_dump(mode="json") if cmd.schedule is not None else None

    async def check(session: AsyncSession, group: FlowGroup) -> None:
        live = (
            await session.exec(
                select(Flow).where(
                    col(Flow.flow_group_id) == group.id,
                    col(Flow.archived).is_(False),
                    col(Flow.is_schedule_active).is_(True),
                )
            )
        ).all()
        for flow in live:
            # Cleared, the flow's own schedule applies again.
            schedule = cmd.schedule or (ScheduleSpec.model_validate(flow.schedule) if flow.schedule else None)
            declared = [ParameterSpec.model_validate(p) for p in flow.parameters]
            if schedule is not None and not schedule_covers_required(declared, group.default_parameters, schedule):
                raise ValidationFailed(
                    f"Flow {flow.id} (version {flow.version}) has its schedule on and required parameters "
                    "that this schedule does not supply; give every clock their values or turn its schedule off."
                )

    def change(group: FlowGroup) -> None:
        group.schedule = stored

    return await _change_group(db, cmd.flow_group_id, change, check)


async def list_flows(db: Database, query: ListFlows) -> FlowList:
    filters = []
    if query.project_name is not None:
        filters.append(col(Project.name) == query.project_name)
    if query.name is not None:
        filters.append(col(Flow.name) == query.name)
    if query.archived is not None:
        filters.append(col(Flow.archived).is_(query.archived))
    stmt = (
        select(Flow, FlowGroup, Project)
        .join(FlowGroup, col(FlowGroup.id) == col(Flow.flow_group_id))
        .join(Project, col(Project.id) == col(Flow.project_id))
        .where(*filters)
    )
    if query.newest_only:
        # The newest of each group's matching versions, chosen in the query so
        # that limit and offset count flows, not versions.
        newest = (
            select(col(Flow.flow_group_id).label("group_id"), func.max(col(Flow.version)).label("version"))
            .join(Project, col(Project.id) == col(Flow.project_id))
            .where(*filters)
            .group_by(col(Flow.flow_group_id))
            .subquery()
        )
        stmt = stmt.join(
            newest, (newest.c.group_id == col(Flow.flow_group_id)) & (newest.c.version == col(Flow.version))
        )
    stmt = (
        stmt.order_by(col(Project.name), col(Flow.name), col(Flow.version).desc(), col(Flow.id))
        .limit(query.limit)
        .offset(query.offset)
    )
    async with db.read_session() as session:
        rows = (await session.execute(stmt)).all()
        return FlowList(flows=[flow_out(flow, group, project) for flow, group, project in rows])
