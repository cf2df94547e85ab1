"""NATS handlers of the registration service: message in, one use case, reply out.

Reads: ``flowbus.cmd.registration.*`` (queue group ``registration``).
Writes: replies; a write's events are published before its reply by its
unit of work (see usecases), with nothing to do here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from flowbus.db.engine import Database
from flowbus.runtime.service import ServiceContext
from flowbus.schemas.common import Message, Reply
from flowbus.schemas.flows import (
    AddFlowTasks,
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
    ListProjects,
    ProjectList,
    ProjectOut,
    RegisterFlow,
    RenameProject,
    SetFlowGroupDefaultParameters,
    SetFlowGroupLabels,
    SetFlowGroupSchedule,
    SetFlowScheduleState,
    SetFlowSettings,
    SetProjectDescription,
    UnarchiveFlow,
)
from flowbus.subjects import RegistrationCommands
from flowbus_services.registration import usecases

UseCase = Callable[[Database, Any], Awaitable[Message]]


# (subject, command, reply, use case): every registration command is one use case call.
COMMANDS: tuple[tuple[str, type[Message], type[Message], UseCase], ...] = (
    (RegistrationCommands.CREATE_PROJECT, CreateProject, ProjectOut, usecases.create_project),
    (RegistrationCommands.GET_PROJECT, GetProject, ProjectOut, usecases.get_project),
    (RegistrationCommands.LIST_PROJECTS, ListProjects, ProjectList, usecases.list_projects),
    (RegistrationCommands.RENAME_PROJECT, RenameProject, ProjectOut, usecases.rename_project),
    (RegistrationCommands.SET_PROJECT_DESCRIPTION, SetProjectDescription, ProjectOut, usecases.set_project_description),
    (RegistrationCommands.DELETE_PROJECT, DeleteProject, Deleted, usecases.delete_project),
    (RegistrationCommands.REGISTER_FLOW, RegisterFlow, FlowOut, usecases.register_flow),
    (RegistrationCommands.ADD_FLOW_TASKS, AddFlowTasks, FlowOut, usecases.add_flow_tasks),
    (RegistrationCommands.GET_FLOW, GetFlow, FlowOut, usecases.get_flow),
    (RegistrationCommands.LIST_FLOWS, ListFlows, FlowList, usecases.list_flows),
    (RegistrationCommands.ARCHIVE_FLOW, ArchiveFlow, FlowOut, usecases.archive_flow),
    (RegistrationCommands.UNARCHIVE_FLOW, UnarchiveFlow, FlowOut, usecases.unarchive_flow),
    (RegistrationCommands.SET_FLOW_SETTINGS, SetFlowSettings, FlowOut, usecases.set_flow_settings),
    (RegistrationCommands.SET_FLOW_SCHEDULE_STATE, SetFlowScheduleState, FlowOut, usecases.set_flow_schedule_state),
    (RegistrationCommands.SET_FLOW_GROUP_LABELS, SetFlowGroupLabels, FlowGroupOut, usecases.set_flow_group_labels),
    (
        RegistrationCommands.SET_FLOW_GROUP_DEFAULT_PARAMETERS,
        SetFlowGroupDefaultParameters,
        FlowGroupOut,
        usecases.set_flow_group_default_parameters,
    ),
    (
        RegistrationCommands.SET_FLOW_GROUP_SCHEDULE,
        SetFlowGroupSchedule,
        FlowGroupOut,
        usecases.set_flow_group_schedule,
    ),
)


def register(ctx: ServiceContext) -> None:
    for subject, model, reply, usecase in COMMANDS:
        _serve(ctx, subject, model, reply, usecase)


def _serve(ctx: ServiceContext, subject: str, model: type[Message], reply: type[Message], usecase: UseCase) -> None:
    """Subscribe one handler: the command validated as ``model``, the use case's result as ``reply``."""
    db = ctx.db

    async def handle(cmd: Any) -> Reply[Any]:
        return Reply.success(await usecase(db, cmd))

    # faststream validates the payload and documents the subject from the annotations.
    handle.__annotations__ = {"cmd": model, "return": Reply[reply]}  # type: ignore[valid-type]
    handle.__name__ = handle.__qualname__ = subject.rsplit(".", 1)[1]
    ctx.subscriber(subject, queue=RegistrationCommands.QUEUE, title=handle.__name__)(handle)
