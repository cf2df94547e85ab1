"""NATS handlers of the run-creation service.

Reads: ``flowbus.cmd.run_creation.create_flow_run`` (queue group ``run_creation``,
through the fast lane into a group committer) and
``flowbus.cmd.run_creation.create_flow_runs`` (a batch, into the same committer).
Writes: replies; events and run-queue messages through the outbox.
"""

from __future__ import annotations

import asyncio
from functools import partial

from opentelemetry import context as otel_context
from opentelemetry import trace

from flowbus.runtime import telemetry
from flowbus.runtime.service import ServiceContext
from flowbus.schemas.common import FlowbusError, Reply
from flowbus.schemas.runs import CreatedFlowRuns, CreateFlowRun, CreateFlowRuns, CreateOutcome, FlowRunOut
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
        starts_traces=True,
    )

    @ctx.subscriber(RunCreationCommands.CREATE_FLOW_RUNS, queue=RunCreationCommands.QUEUE, title="create_flow_runs")
    async def create_flow_runs(cmd: CreateFlowRuns) -> Reply[CreatedFlowRuns]:
        # Through the committer, so a batch is decided exactly as its creates
        # sent one by one would be (and shares transactions with them).
        # One trace per run, each linked to the batch's (the scheduler's pass, a client's call).
        spans = [_new_trace(run) for run in cmd.runs]
        results: list[FlowRunOut | BaseException] = []
        try:
            results = await asyncio.gather(*(creates.submit(run) for run in cmd.runs), return_exceptions=True)
        finally:
            _end(spans, results)
        outcomes: list[CreateOutcome] = []
        for result in results:
            if isinstance(result, FlowRunOut):
                outcomes.append(CreateOutcome(id=result.id))
            elif isinstance(result, FlowbusError):
                outcomes.append(CreateOutcome(error=result.info()))
            else:
                # The store failed: the whole command fails, and is safe to resend (keys).
                raise result
        return Reply.success(CreatedFlowRuns(outcomes=outcomes))


def _new_trace(run: CreateFlowRun) -> trace.Span:
    """A batched create's ``create_flow_run`` span: the root of the run's own trace, linked to the batch's span."""
    caller = trace.get_current_span().get_span_context()
    span = telemetry.tracer("run_creation").start_span(
        "create_flow_run",
        context=otel_context.Context(),  # a new trace, not the batch's
        kind=trace.SpanKind.SERVER,
        links=[trace.Link(caller)] if caller.is_valid else None,
    )
    run.set_traceparent(telemetry.traceparent(span))
    return span


def _end(spans: list[trace.Span], results: list[FlowRunOut | BaseException]) -> None:
    for span, result in zip(spans, results, strict=False):
        if isinstance(result, FlowRunOut):
            span.set_attributes(telemetry.attributes(result.id, result.flow_id))
    for span in spans:
        span.end()
