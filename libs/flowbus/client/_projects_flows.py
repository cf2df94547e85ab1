"""Projects and flows: the client's side of the registration service's commands.

Writes: ``flowbus.cmd.registration.*`` requests.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import JsonValue

from flowbus import subjects
from flowbus.client._commands import build
from flowbus.client._transport import Transport
from flowbus.schemas.common import LIST_LIMIT_DEFAULT
from flowbus.schemas.flows import (
    AddFlowTasks,
    ArchiveFlow,
    CreateProject,
    Deleted,
    DeleteProject,
    EdgeSpec,
    FlowGroupOut,
    FlowList,
    FlowOut,
    GetFlow,
    GetProject,
    ListFlows,
    ListProjects,
    ProjectList,
    ProjectOut,
    ProjectRef,
    RegisterFlow,
    RenameProject,
    ScheduleSpec,
    SerializedFlow,
    SetFlowGroupDefaultParameters,
    SetFlowGroupLabels,
    SetFlowGroupSchedule,
    SetFlowScheduleState,
    SetFlowSettings,
    SetProjectDescription,
    TaskSpec,
    UnarchiveFlow,
)


def _ref(name: str | None, project_id: str | None) -> ProjectRef:
    """A project named by name or by id; VALIDATION_ERROR unless exactly one is given."""
    return build(ProjectRef, name=name, project_id=project_id)


class ProjectsAndFlows(Transport):
    async def create_project(
        self, name: str, description: str | None = None, skip_if_exists: bool = False
    ) -> ProjectOut:
        cmd = build(CreateProject, name=name, description=description, skip_if_exists=skip_if_exists)
        return await self.request(subjects.RegistrationCommands.CREATE_PROJECT, cmd, ProjectOut)

    async def get_project(self, name: str | None = None, *, project_id: str | None = None) -> ProjectOut:
        """A project by name or by ``project_id`` (exactly one)."""
        query = build(GetProject, name=name, project_id=project_id)
        return await self.request(subjects.RegistrationCommands.GET_PROJECT, query, ProjectOut, idempotent=True)

    async def get_projects(self, *, limit: int = LIST_LIMIT_DEFAULT, offset: int = 0) -> list[ProjectOut]:
        """Projects by name: ``limit`` of them (at most ``LIST_LIMIT_MAX``) from ``offset`` on."""
        query = build(ListProjects, limit=limit, offset=offset)
        out = await self.request(subjects.RegistrationCommands.LIST_PROJECTS, query, ProjectList, idempotent=True)
        return out.projects

    async def register(
        self,
        serialized_flow: SerializedFlow,
        project_name: str,
        version_group_id: str | None = None,
        idempotency_key: str | None = None,
        labels: list[str] | None = None,
        set_schedule_active: bool = True,
    ) -> FlowOut:
        cmd = build(
            RegisterFlow,
            project_name=project_name,
            serialized_flow=serialized_flow,
            version_group_id=version_group_id,
            idempotency_key=idempotency_key,
            labels=labels,
            set_schedule_active=set_schedule_active,
        )
        return await self.request(
            subjects.RegistrationCommands.REGISTER_FLOW, cmd, FlowOut, idempotent=idempotency_key is not None
        )

    async def add_flow_tasks(
        self, flow_id: str, tasks: Sequence[TaskSpec] = (), edges: Sequence[EdgeSpec] = ()
    ) -> FlowOut:
        """Add tasks and edges to a registered flow version; known ones are skipped (safe to resend)."""
        cmd = build(AddFlowTasks, flow_id=flow_id, tasks=list(tasks), edges=list(edges))
        return await self.request(subjects.RegistrationCommands.ADD_FLOW_TASKS, cmd, FlowOut, idempotent=True)

    async def get_flow(self, flow_id: str) -> FlowOut:
        return await self.request(
            subjects.RegistrationCommands.GET_FLOW, build(GetFlow, flow_id=flow_id), FlowOut, idempotent=True
        )

    async def rename_project(self, name: str | None, new_name: str, *, project_id: str | None = None) -> ProjectOut:
        """Rename the project ``name`` (or, with ``name=None``, the one of ``project_id``)."""
        cmd = build(RenameProject, project=_ref(name, project_id), new_name=new_name)
        return await self.request(subjects.RegistrationCommands.RENAME_PROJECT, cmd, ProjectOut)

    async def set_project_description(
        self, name: str | None, description: str | None, *, project_id: str | None = None
    ) -> ProjectOut:
        cmd = build(SetProjectDescription, project=_ref(name, project_id), description=description)
        return await self.request(subjects.RegistrationCommands.SET_PROJECT_DESCRIPTION, cmd, ProjectOut)

    async def delete_project(self, name: str | None, *, project_id: str | None = None) -> Deleted:
        cmd = build(DeleteProject, project=_ref(name, project_id))
        return await self.request(subjects.RegistrationCommands.DELETE_PROJECT, cmd, Deleted)

    async def archive_flow(self, flow_id: str) -> FlowOut:
        return await self.request(
            subjects.RegistrationCommands.ARCHIVE_FLOW, build(ArchiveFlow, flow_id=flow_id), FlowOut, idempotent=True
        )

    async def unarchive_flow(self, flow_id: str) -> FlowOut:
        return await self.request(
            subjects.RegistrationCommands.UNARCHIVE_FLOW,
            build(UnarchiveFlow, flow_id=flow_id),
            FlowOut,
            idempotent=True,
        )

    async def set_flow_settings(
        self,
        flow_id: str,
        *,
        heartbeat_enabled: bool | None = None,
        lazarus_enabled: bool | None = None,
        version_locking_enabled: bool | None = None,
    ) -> FlowOut:
        cmd = build(
            SetFlowSettings,
            flow_id=flow_id,
            heartbeat_enabled=heartbeat_enabled,
            lazarus_enabled=lazarus_enabled,
            version_locking_enabled=version_locking_enabled,
        )
        return await self.request(subjects.RegistrationCommands.SET_FLOW_SETTINGS, cmd, FlowOut, idempotent=True)

    # The three 1.x mutations, by their GraphQL names.
    async def disable_flow_heartbeat(self, flow_id: str, value: bool = True) -> FlowOut:
        return await self.set_flow_settings(flow_id, heartbeat_enabled=not value)

    async def disable_lazarus_for_flow(self, flow_id: str, value: bool = True) -> FlowOut:
        return await self.set_flow_settings(flow_id, lazarus_enabled=not value)

    async def enable_flow_version_locking(self, flow_id: str, value: bool = True) -> FlowOut:
        return await self.set_flow_settings(flow_id, version_locking_enabled=value)

    async def set_flow_schedule_state(self, flow_id: str, active: bool) -> FlowOut:
        cmd = build(SetFlowScheduleState, flow_id=flow_id, active=active)
        return await self.request(subjects.RegistrationCommands.SET_FLOW_SCHEDULE_STATE, cmd, FlowOut, idempotent=True)

    async def set_flow_group_labels(self, flow_group_id: str, labels: list[str] | None) -> FlowGroupOut:
        cmd = build(SetFlowGroupLabels, flow_group_id=flow_group_id, labels=labels)
        return await self.request(
            subjects.RegistrationCommands.SET_FLOW_GROUP_LABELS, cmd, FlowGroupOut, idempotent=True
        )

    async def set_flow_group_default_parameters(
        self, flow_group_id: str, parameters: dict[str, JsonValue]
    ) -> FlowGroupOut:
        cmd = build(SetFlowGroupDefaultParameters, flow_group_id=flow_group_id, parameters=parameters)
        return await self.request(
            subjects.RegistrationCommands.SET_FLOW_GROUP_DEFAULT_PARAMETERS, cmd, FlowGroupOut, idempotent=True
        )

    async def set_flow_group_schedule(self, flow_group_id: str, schedule: ScheduleSpec | None) -> FlowGroupOut:
        """Set the group's schedule (it overrides its flows' own); None clears it.
        VALIDATION_ERROR, nothing stored, when a live version with its schedule on
        has a required parameter some clock does not supply."""
        cmd = build(SetFlowGroupSchedule, flow_group_id=flow_group_id, schedule=schedule)
        return await self.request(
            subjects.RegistrationCommands.SET_FLOW_GROUP_SCHEDULE, cmd, FlowGroupOut, idempotent=True
        )

    async def get_flows(
        self,
        project_name: str | None = None,
        name: str | None = None,
        archived: bool | None = None,
        newest_only: bool = True,
        *,
        limit: int = LIST_LIMIT_DEFAULT,
        offset: int = 0,
    ) -> list[FlowOut]:
        """Flows by project, name and newest version first: ``limit`` of them
        (at most ``LIST_LIMIT_MAX``) from ``offset`` on."""
        query = build(
            ListFlows,
            project_name=project_name,
            name=name,
            archived=archived,
            newest_only=newest_only,
            limit=limit,
            offset=offset,
        )
        return (await self.request(subjects.RegistrationCommands.LIST_FLOWS, query, FlowList, idempotent=True)).flows
