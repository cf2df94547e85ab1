"""NATS handlers and the loops of the state service (log writer, run clean-up, log retention).

Reads: ``flowbus.cmd.state.*`` (queue group ``state``); the LOGS stream
through the durable ``state-log-writer``; ``flowbus.evt.flow.*.archived`` and
``...schedule_off`` through the durable ``state-flow-run-cleanup``.
Writes: replies; state events and re-queued runs through the outbox. The log
retention (``prune_logs``) runs under the lease ``state.log_retention``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from flowbus import subjects
from flowbus.runtime.consumer import consume
from flowbus.runtime.service import ServiceContext
from flowbus.schemas.common import Reply
from flowbus.schemas.flows import Deleted, FlowEvent
from flowbus.schemas.runs import (
    CancelFlowRun,
    DeleteFlowRun,
    EnsureTaskRun,
    FlowRunDetail,
    FlowRunList,
    GetFlowRun,
    GetFlowRunHistory,
    GetFlowRunLogs,
    ListFlowRuns,
    LogBatch,
    LogList,
    Renamed,
    RenameRun,
    SetFlowRunState,
    SetTaskRunState,
    StateHistoryList,
    StateSet,
    TaskRunInfo,
)
from flowbus.subjects import StateCommands
from flowbus_services.state import cleanup, logs, queries, task_runs
from flowbus_services.state.transitions import apply_transitions

log = logging.getLogger(__name__)
LOG_FETCH_BATCH = 256


def _span_name(title: str) -> Callable[[Any], str]:
    """A state write's span: ``set_flow_run_state Running``; a cancel's: ``cancel_flow_run``."""
    if title == "cancel_flow_run":
        return lambda _command: title
    return lambda command: f"{title} {command.state.type.value}"


def register(ctx: ServiceContext) -> None:
    sub = ctx.subscriber
    queue = StateCommands.QUEUE
    db = ctx.db
    late_after = ctx.settings.scheduler.late_after

    # Every state write goes through one group committer, fed by the fast
    # lane: concurrent writes share a transaction, and their events are
    # published before any reply.
    transitions = ctx.group_committer("transitions", partial(apply_transitions, db))

    for subject, model, title in (
        (StateCommands.SET_FLOW_RUN_STATE, SetFlowRunState, "set_flow_run_state"),
        (StateCommands.SET_TASK_RUN_STATE, SetTaskRunState, "set_task_run_state"),
        (StateCommands.CANCEL_FLOW_RUN, CancelFlowRun, "cancel_flow_run"),
    ):
        ctx.fast_command(
            subject,
            queue=queue,
            model=model,
            reply=StateSet,
            committer=transitions,
            title=title,
            span_name=_span_name(title),
        )

    @sub(StateCommands.GET_FLOW_RUN, queue=queue, title="get_flow_run")
    async def get_flow_run(query: GetFlowRun) -> Reply[FlowRunDetail]:
        return Reply.success(await queries.get_flow_run(db, query.flow_run_id, late_after))

    @sub(StateCommands.GET_FLOW_RUN_LOGS, queue=queue, title="get_flow_run_logs")
    async def get_flow_run_logs(query: GetFlowRunLogs) -> Reply[LogList]:
        await logs.wait_for_logs(ctx.jetstream, query.flow_run_id)
        return Reply.success(await queries.get_flow_run_logs(db, query))

    @sub(StateCommands.GET_FLOW_RUN_HISTORY, queue=queue, title="get_flow_run_history")
    async def get_flow_run_history(query: GetFlowRunHistory) -> Reply[StateHistoryList]:
        return Reply.success(await queries.get_flow_run_history(db, query))

    @sub(StateCommands.ENSURE_TASK_RUN, queue=queue, title="ensure_task_run")
    async def ensure_task_run(cmd: EnsureTaskRun) -> Reply[TaskRunInfo]:
        return Reply.success(await task_runs.ensure_task_run(db, cmd))

    @sub(StateCommands.RENAME_RUN, queue=queue, title="rename_run")
    async def rename_run(cmd: RenameRun) -> Reply[Renamed]:
        return Reply.success(await task_runs.rename_run(db, cmd))

    @sub(StateCommands.DELETE_FLOW_RUN, queue=queue, title="delete_flow_run")
    async def delete_flow_run(cmd: DeleteFlowRun) -> Reply[Deleted]:
        return Reply.success(await cleanup.delete_flow_run(db, cmd))

    @sub(StateCommands.LIST_FLOW_RUNS, queue=queue, title="list_flow_runs")
    async def list_flow_runs(query: ListFlowRuns) -> Reply[FlowRunList]:
        return Reply.success(await queries.list_flow_runs(db, query, late_after))


async def write_logs(ctx: ServiceContext) -> None:
    """Persist log batches from the LOGS stream."""
    stored = ctx.metrics.counter("flowbus_log_records_stored", "Flow-run log records stored.")

    async def store(batches: list[tuple[str, LogBatch]]) -> None:
        stored.value += await logs.store_logs(
            ctx.db, [r for subject, b in batches for r in logs.records_of(subject, b)]
        )

    await consume(
        ctx.jetstream,
        stream=subjects.LOGS_STREAM,
        durable=subjects.LOGS_DURABLE,
        filter_subjects=[subjects.LOGS_ALL],
        model=LogBatch,
        handle=store,
        span_name="store_logs",
        service="state",
    )


async def prune_logs(ctx: ServiceContext) -> None:
    """Delete stored log records older than the retention, every ``logs.prune_interval_seconds``."""
    settings = ctx.settings
    while True:
        older_than = datetime.now(UTC) - timedelta(seconds=settings.log_retention_seconds)
        deleted = await logs.prune_logs(ctx.db, older_than, settings.logs.prune_batch)
        if deleted:
            log.info("pruned %d log records stored before %s", deleted, older_than.isoformat())
        await asyncio.sleep(settings.logs.prune_interval_seconds)


async def clean_up_flow_runs(ctx: ServiceContext) -> None:
    """Delete or cancel a flow's waiting runs when it is archived or unscheduled."""

    async def apply(events: list[tuple[str, FlowEvent]]) -> None:
        for _subject, event in events:
            await cleanup.clean_up_flow_runs(ctx.db, event.flow_id, event.fact)

    await consume(
        ctx.jetstream,
        stream=subjects.EVENTS_STREAM,
        durable=subjects.FLOW_RUN_CLEANUP_DURABLE,
        filter_subjects=subjects.FLOW_RUN_CLEANUP_FILTERS,
        model=FlowEvent,
        handle=apply,
        batch=64,
    )
