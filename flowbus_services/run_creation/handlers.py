"""NATS handlers of the run-creation service.

Reads: ``flowbus.cmd.run_creation.create_flow_run`` (queue group ``run_creation``,
through the fast lane into a group committer).
Writes: replies; events and run-queue messages through the outbox.
"""

from __future__ import annotations

from functools import partial

from flowbus.runtime.service import ServiceContext
from flowbus.schemas.runs import CreateFlowRun, FlowRunOut
from flowbus.subjects import RunCreationCommands
from flowbus_services.run_creation import usecases


def register(ctx: ServiceContext) -> None:
    # Concurrent creates share one transaction; their events are published
    # before any of them is answered.
    creates = ctx.group_committer(
        "create_flow_run",
        partial(usecases.create_flow_runs, ctx.db, idempotency_ttl=ctx.settings.idempotency_ttl_seconds),
    )

    ctx.fast_command(
        RunCreationCommands.CREATE_FLOW_RUN,
        queue=RunCreationCommands.QUEUE,
        model=CreateFlowRun,
        reply=FlowRunOut,
        committer=creates,
        title="create_flow_run",
    )
