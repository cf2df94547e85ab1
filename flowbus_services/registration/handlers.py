"""NATS handlers of the registration service: message in, one use case, reply out.

Reads: ``flowbus.cmd.registration.*`` (queue group ``registration``).
Writes: replies; a write's events are published before its reply by its
unit of work (see usecases), with nothing to do here.
"""

from __future__ import annotations

from flowbus.runtime.service import ServiceContext
from flowbus.schemas.common import Empty, Reply
from flowbus.schemas.flows import (
    ArchiveFlow,
    CreateProject,
    Deleted,
    DeleteProject,
    FlowGroupOut,
    FlowList,
    FlowOut,
    GetFlow,
    GetProject,
    ListFlows,
    ProjectList,
    ProjectOut,
    RegisterFlow,
    RenameProject,
    SetFlowGroupDefaultParameters,
    SetFlowGroupLabels,
    SetFlowScheduleState,
    SetFlowSettings,
    SetProjectDescription,
    UnarchiveFlow,
)
from flowbus.subjects import RegistrationCommands
from flowbus_services.registration import usecases


def register(ctx: ServiceContext) -> None:
    _register_projects(ctx)
    _register_flows(ctx)


def _register_projects(ctx: ServiceContext) -> None:
    sub = ctx.subscriber
    queue = RegistrationCommands.QUEUE
    db = ctx.db

    @sub(RegistrationCommands.CREATE_PROJECT, queue=queue, title="create_project")
    async def create_project(cmd: CreateProject) -> Reply[ProjectOut]:
        return Reply.success(await usecases.create_project(db, cmd))

    @sub(RegistrationCommands.GET_PROJECT, queue=queue, title="get_project")
    async def get_project(query: GetProject) -> Reply[ProjectOut]:
        return Reply.success(await usecases.get_project(db, query))

    @sub(RegistrationCommands.LIST_PROJECTS, queue=queue, title="list_projects")
    async def list_projects(query: Empty) -> Reply[ProjectList]:
        return Reply.success(await usecases.list_projects(db))

    @sub(RegistrationCommands.RENAME_PROJECT, queue=queue, title="rename_project")
    async def rename_project(cmd: RenameProject) -> Reply[ProjectOut]:
        return Reply.success(await usecases.rename_project(db, cmd))

    @sub(RegistrationCommands.SET_PROJECT_DESCRIPTION, queue=queue, title="set_project_description")
    async def set_project_description(cmd: SetProjectDescription) -> Reply[ProjectOut]:
        return Reply.success(await usecases.set_project_description(db, cmd))

    @sub(RegistrationCommands.DELETE_PROJECT, queue=queue, title="delete_project")
    async def delete_project(cmd: DeleteProject) -> Reply[Deleted]:
        return Reply.success(await usecases.delete_project(db, cmd))


def _register_flows(ctx: ServiceContext) -> None:
    sub = ctx.subscriber
    queue = RegistrationCommands.QUEUE
    db = ctx.db

    @sub(RegistrationCommands.REGISTER_FLOW, queue=queue, title="register_flow")
    async def register_flow(cmd: RegisterFlow) -> Reply[FlowOut]:
        return Reply.success(await usecases.register_flow(db, cmd))

    @sub(RegistrationCommands.GET_FLOW, queue=queue, title="get_flow")
    async def get_flow(query: GetFlow) -> Reply[FlowOut]:
        return Reply.success(await usecases.get_flow(db, query))

    @sub(RegistrationCommands.LIST_FLOWS, queue=queue, title="list_flows")
    async def list_flows(query: ListFlows) -> Reply[FlowList]:
        return Reply.success(await usecases.list_flows(db, query))

    @sub(RegistrationCommands.ARCHIVE_FLOW, queue=queue, title="archive_flow")
    async def archive_flow(cmd: ArchiveFlow) -> Reply[FlowOut]:
        return Reply.success(await usecases.archive_flow(db, cmd))

    @sub(RegistrationCommands.UNARCHIVE_FLOW, queue=queue, title="unarchive_flow")
    async def unarchive_flow(cmd: UnarchiveFlow) -> Reply[FlowOut]:
        return Reply.success(await usecases.unarchive_flow(db, cmd))

    @sub(RegistrationCommands.SET_FLOW_SETTINGS, queue=queue, title="set_flow_settings")
    async def set_flow_settings(cmd: SetFlowSettings) -> Reply[FlowOut]:
        return Reply.success(await usecases.set_flow_settings(db, cmd))

    @sub(RegistrationCommands.SET_FLOW_SCHEDULE_STATE, queue=queue, title="set_flow_schedule_state")
    async def set_flow_schedule_state(cmd: SetFlowScheduleState) -> Reply[FlowOut]:
        return Reply.success(await usecases.set_flow_schedule_state(db, cmd))

    @sub(RegistrationCommands.SET_FLOW_GROUP_LABELS, queue=queue, title="set_flow_group_labels")
    async def set_flow_group_labels(cmd: SetFlowGroupLabels) -> Reply[FlowGroupOut]:
        return Reply.success(await usecases.set_flow_group_labels(db, cmd))

    @sub(
        RegistrationCommands.SET_FLOW_GROUP_DEFAULT_PARAMETERS,
        queue=queue,
        title="set_flow_group_default_parameters",
    )
    async def set_flow_group_default_parameters(cmd: SetFlowGroupDefaultParameters) -> Reply[FlowGroupOut]:
        return Reply.success(await usecases.set_flow_group_default_parameters(db, cmd))
