"""NATS handlers and the log-writer loop of the state service.

Reads: ``flowbus.cmd.state.*`` (queue group ``state``); the LOGS stream
through the durable pull consumer ``state-log-writer``.
Writes: replies; state events and re-queued runs through the outbox.
"""

from __future__ import annotations

import asyncio
import logging

from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import AckPolicy, ConsumerConfig
from pydantic import ValidationError

from flowbus import subjects
from flowbus.runtime.service import ServiceContext
from flowbus.schemas.common import Reply
from flowbus.schemas.runs import (
    FlowRunDetail,
    GetFlowRun,
    GetFlowRunLogs,
    LogBatch,
    LogList,
    LogRecord,
    SetFlowRunState,
    SetTaskRunState,
    StateSet,
)
from services.state import usecases

S = subjects.State
log = logging.getLogger(__name__)
LOG_FETCH_BATCH = 256


def register(ctx: ServiceContext) -> None:
    sub = ctx.broker.subscriber
    db = ctx.db

    @sub(S.SET_FLOW_RUN_STATE, queue=S.QUEUE, title="set_flow_run_state")
    async def set_flow_run_state(cmd: SetFlowRunState) -> Reply[StateSet]:
        out = await usecases.set_flow_run_state(db, cmd)
        ctx.kick_outbox()
        return Reply.success(out)

    @sub(S.SET_TASK_RUN_STATE, queue=S.QUEUE, title="set_task_run_state")
    async def set_task_run_state(cmd: SetTaskRunState) -> Reply[StateSet]:
        out = await usecases.set_task_run_state(db, cmd)
        ctx.kick_outbox()
        return Reply.success(out)

    @sub(S.GET_FLOW_RUN, queue=S.QUEUE, title="get_flow_run")
    async def get_flow_run(query: GetFlowRun) -> Reply[FlowRunDetail]:
        return Reply.success(await usecases.get_flow_run(db, query.flow_run_id))

    @sub(S.GET_FLOW_RUN_LOGS, queue=S.QUEUE, title="get_flow_run_logs")
    async def get_flow_run_logs(query: GetFlowRunLogs) -> Reply[LogList]:
        return Reply.success(await usecases.get_flow_run_logs(db, query))


async def write_logs(ctx: ServiceContext) -> None:
    """Persist log batches from the LOGS stream; every instance shares one durable."""
    js = ctx.jetstream
    psub = await js.pull_subscribe(
        subjects.LOGS_ALL,
        durable=subjects.LOGS_DURABLE,
        stream=subjects.LOGS_STREAM,
        config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, max_ack_pending=10_000, ack_wait=30),
    )
    while True:
        try:
            msgs = await psub.fetch(LOG_FETCH_BATCH, timeout=1.0)
        except (TimeoutError, NatsTimeout):
            continue
        records: list[LogRecord] = []
        for msg in msgs:
            try:
                records.extend(LogBatch.model_validate_json(msg.data).records)
            except ValidationError:
                # A malformed batch can never succeed: drop it for good.
                log.warning("dropping a malformed log batch on %s", msg.subject)
                await msg.term()
        await usecases.store_logs(ctx.db, records)
        await asyncio.gather(*(m.ack() for m in msgs if not m._ackd))
