"""NATS handlers of the run-creation service.

Reads: ``flowbus.cmd.run_creation.create_flow_run`` (queue group ``run_creation``).
Writes: replies; events and run-queue messages through the outbox.
"""

from __future__ import annotations

from flowbus import subjects
from flowbus.runtime.service import ServiceContext
from flowbus.schemas.common import Reply
from flowbus.schemas.runs import CreateFlowRun, FlowRunOut
from services.run_creation import usecases

S = subjects.RunCreation


def register(ctx: ServiceContext) -> None:
    @ctx.broker.subscriber(S.CREATE_FLOW_RUN, queue=S.QUEUE, title="create_flow_run")
    async def create_flow_run(cmd: CreateFlowRun) -> Reply[FlowRunOut]:
        out = await usecases.create_flow_run(ctx.db, cmd, ctx.settings.idempotency_ttl_seconds)
        await ctx.publish_outbox()
        return Reply.success(out)
