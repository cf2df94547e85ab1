"""NATS handlers of the registration service: message in, one use case, reply out.

Reads: ``flowbus.cmd.registration.*`` (queue group ``registration``).
Writes: replies; events go through the outbox (see usecases).
"""

from __future__ import annotations

from flowbus import subjects
from flowbus.runtime.service import ServiceContext
from flowbus.schemas.common import Empty, Reply
from flowbus.schemas.flows import (
    CreateProject,
    FlowList,
    FlowOut,
    GetFlow,
    GetProject,
    ListFlows,
    ProjectList,
    ProjectOut,
    RegisterFlow,
)
from services.registration import usecases

S = subjects.Registration


def register(ctx: ServiceContext) -> None:
    sub = ctx.broker.subscriber
    db = ctx.db

    @sub(S.CREATE_PROJECT, queue=S.QUEUE, title="create_project")
    async def create_project(cmd: CreateProject) -> Reply[ProjectOut]:
        out = await usecases.create_project(db, cmd)
        ctx.kick_outbox()
        return Reply.success(out)

    @sub(S.GET_PROJECT, queue=S.QUEUE, title="get_project")
    async def get_project(query: GetProject) -> Reply[ProjectOut]:
        return Reply.success(await usecases.get_project(db, query))

    @sub(S.LIST_PROJECTS, queue=S.QUEUE, title="list_projects")
    async def list_projects(query: Empty) -> Reply[ProjectList]:
        return Reply.success(await usecases.list_projects(db))

    @sub(S.REGISTER_FLOW, queue=S.QUEUE, title="register_flow")
    async def register_flow(cmd: RegisterFlow) -> Reply[FlowOut]:
        out = await usecases.register_flow(db, cmd)
        ctx.kick_outbox()
        return Reply.success(out)

    @sub(S.GET_FLOW, queue=S.QUEUE, title="get_flow")
    async def get_flow(query: GetFlow) -> Reply[FlowOut]:
        return Reply.success(await usecases.get_flow(db, query))

    @sub(S.LIST_FLOWS, queue=S.QUEUE, title="list_flows")
    async def list_flows(query: ListFlows) -> Reply[FlowList]:
        return Reply.success(await usecases.list_flows(db, query))
