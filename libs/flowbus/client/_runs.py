"""Flow runs and task runs: creation, queries and state changes.

Writes: ``flowbus.cmd.run_creation.create_flow_run`` and ``flowbus.cmd.state.*`` requests,
log batches on ``flowbus.logs.<flow_run_id>`` and heartbeats on ``flowbus.hb.flow_run.<id>``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime

from opentelemetry.trace import SpanKind
from pydantic import JsonValue

from flowbus import subjects
from flowbus.client._commands import StateLike, build, state_spec
from flowbus.client._run_info import FlowRunInfo
from flowbus.client._transport import Transport
from flowbus.ids import uuid7
from flowbus.runtime import telemetry
from flowbus.schemas.agents import RunHeartbeat
from flowbus.schemas.common import ValidationFailed
from flowbus.schemas.flows import Deleted, RunConfigSpec
from flowbus.schemas.runs import (
    CancelFlowRun,
    CreatedFlowRuns,
    CreateFlowRun,
    CreateFlowRuns,
    CreateOutcome,
    DeleteFlowRun,
    EnsureTaskRun,
    FlowRunDetail,
    FlowRunList,
    FlowRunOut,
    GetFlowRun,
    GetFlowRunHistory,
    GetFlowRunLogs,
    HistoryEntry,
    ListFlowRuns,
    LogList,
    LogRecord,
    Renamed,
    RenameRun,
    SetFlowRunState,
    SetTaskRunState,
    StateHistoryList,
    StateSet,
    TaskRunInfo,
    pack_log_batch,
)
from flowbus.states import StateType

# A run id that fits in one subject token (logs and heartbeats are published on subjects naming the run).
_SUBJECT_TOKEN = re.compile(r"[A-Za-z0-9_-]+")


def _subject_token(run_id: str) -> str:
    if not _SUBJECT_TOKEN.fullmatch(run_id):
        raise ValidationFailed(f"Not a flow run id: {run_id!r}")
    return run_id


class Runs(Transport):
    """Create runs, read them, and change their states."""

    async def create_flow_run(
        self,
        flow_id: str | None = None,
        *,
        version_group_id: str | None = None,
        flow_name: str | None = None,
        project_name: str | None = None,
        parameters: dict[str, JsonValue] | None = None,
        context: dict[str, JsonValue] | None = None,
        labels: list[str] | None = None,
        run_name: str | None = None,
        scheduled_start_time: datetime | None = None,
        idempotency_key: str | None = None,
        run_config: RunConfigSpec | None = None,
    ) -> str:
        """Create a run (Scheduled, version 1) and return its id, as the 1.x client did;
        ``scheduled_start_time`` must be timezone-aware; ``run_config`` (its labels
        and env) replaces the flow's for this run. :meth:`create_flow_run_out`
        returns the whole run instead."""
        created = await self.create_flow_run_out(
            flow_id,
            version_group_id=version_group_id,
            flow_name=flow_name,
            project_name=project_name,
            parameters=parameters,
            context=context,
            labels=labels,
            run_name=run_name,
            scheduled_start_time=scheduled_start_time,
            idempotency_key=idempotency_key,
            run_config=run_config,
        )
        return created.id

    async def create_flow_run_out(
        self,
        flow_id: str | None = None,
        *,
        version_group_id: str | None = None,
        flow_name: str | None = None,
        project_name: str | None = None,
        parameters: dict[str, JsonValue] | None = None,
        context: dict[str, JsonValue] | None = None,
        labels: list[str] | None = None,
        run_name: str | None = None,
        scheduled_start_time: datetime | None = None,
        idempotency_key: str | None = None,
        run_config: RunConfigSpec | None = None,
    ) -> FlowRunOut:
        """:meth:`create_flow_run`, returning the new run as a ``FlowRunOut`` (its name,
        version, state, labels, scheduled start time, ...) rather than its id: one
        request where the id alone would need a ``get_flow_run`` after it."""
        cmd = build(
            CreateFlowRun,
            flow_id=flow_id,
            version_group_id=version_group_id,
            flow_name=flow_name,
            project_name=project_name,
            parameters=parameters or {},
            context=context or {},
            labels=labels,
            run_name=run_name,
            scheduled_start_time=scheduled_start_time,
            run_config=run_config,
            # A random key per call makes the client's own retries safe.
            idempotency_key=idempotency_key or f"client-{uuid7()}",
        )
        # The run's trace starts here (or under the caller's span: the CLI's, a parent run's).
        with telemetry.tracer().start_as_current_span("create_flow_run", kind=SpanKind.CLIENT) as span:
            out = await self.request(subjects.RunCreationCommands.CREATE_FLOW_RUN, cmd, FlowRunOut, idempotent=True)
            span.set_attributes(telemetry.attributes(out.id, out.flow_id))
            return out

    async def create_flow_runs(self, runs: Sequence[CreateFlowRun]) -> list[CreateOutcome]:
        """Create up to 500 runs in one command, each decided as if sent alone;
        one outcome per run, in order: its id, or its refusal as an error code
        and message. Resent after a lost reply only when every run has an
        idempotency key."""
        cmd = build(CreateFlowRuns, runs=list(runs))
        idempotent = all(run.idempotency_key is not None for run in runs)
        reply = await self.request(
            subjects.RunCreationCommands.CREATE_FLOW_RUNS, cmd, CreatedFlowRuns, idempotent=idempotent
        )
        return reply.outcomes

    async def get_flow_run(self, flow_run_id: str) -> FlowRunDetail:
        """The run (with its version and state), its task runs, and what a runner needs."""
        return await self.request(
            subjects.StateCommands.GET_FLOW_RUN,
            build(GetFlowRun, flow_run_id=flow_run_id),
            FlowRunDetail,
            idempotent=True,
        )

    async def ensure_task_run(self, flow_run_id: str, task_id: str, map_index: int = -1) -> TaskRunInfo:
        """The task run of task ``task_id`` at ``map_index`` in the flow run, made
        Pending if there is none yet (a mapped child); safe to resend."""
        cmd = build(EnsureTaskRun, flow_run_id=flow_run_id, task_id=task_id, map_index=map_index)
        return await self.request(subjects.StateCommands.ENSURE_TASK_RUN, cmd, TaskRunInfo, idempotent=True)

    async def set_flow_run_name(self, flow_run_id: str, name: str) -> Renamed:
        """Rename a flow run."""
        cmd = build(RenameRun, flow_run_id=flow_run_id, name=name)
        return await self.request(subjects.StateCommands.RENAME_RUN, cmd, Renamed, idempotent=True)

    async def set_task_run_name(self, task_run_id: str, name: str) -> Renamed:
        """Name a task run (one without a name goes by its task's)."""
        cmd = build(RenameRun, task_run_id=task_run_id, name=name)
        return await self.request(subjects.StateCommands.RENAME_RUN, cmd, Renamed, idempotent=True)

    async def get_flow_run_info(self, flow_run_id: str) -> FlowRunInfo:
        """The run as Prefect 1.x's ``get_flow_run_info`` gave it: flat (``.version``,
        ``.state`` as a ``flowbus.states`` object, ``.task_runs``, ...), the
        former nested shape still at ``.run``; see ``FlowRunInfo``."""
        return FlowRunInfo.of(await self.get_flow_run(flow_run_id))

    async def get_flow_runs(
        self,
        flow_id: str | None = None,
        flow_group_id: str | None = None,
        project_name: str | None = None,
        states: Sequence[StateType | str] | None = None,
        limit: int = 50,
        offset: int = 0,
        late: bool | None = None,
    ) -> list[FlowRunOut]:
        """Runs, newest scheduled first; NOT_FOUND for an unknown project. ``late=True``:
        only runs still Scheduled ``scheduler.late_after`` past their start time (False: the others)."""
        query = build(
            ListFlowRuns,
            flow_id=flow_id,
            flow_group_id=flow_group_id,
            project_name=project_name,
            states=list(states) if states is not None else None,
            limit=limit,
            offset=offset,
            late=late,
        )
        return (await self.request(subjects.StateCommands.LIST_FLOW_RUNS, query, FlowRunList, idempotent=True)).runs

    async def set_flow_run_state(
        self,
        flow_run_id: str,
        version: int | None,
        state: StateLike,
        message: str | None = None,
        agent_id: str | None = None,
        *,
        resurrect: bool = False,
    ) -> StateSet:
        """Set a state at the run's current ``version`` (optimistic locking);
        ``None`` sets it at whatever version the run is at.

        ``state`` is a State object (``Success(message="It worked!")``), its JSON
        form (``{"type": "Success", "message": "It worked!"}``) or a StateType;
        ``message``, when given, replaces the state's own. ``resurrect``: a
        Lazarus reschedule (Scheduled only), counted in ``times_resurrected``.
        """
        cmd = build(
            SetFlowRunState,
            flow_run_id=flow_run_id,
            version=version,
            state=state_spec(state, message),
            agent_id=agent_id,
            resurrect=resurrect,
        )
        return await self.request(subjects.StateCommands.SET_FLOW_RUN_STATE, cmd, StateSet)

    async def set_task_run_state(
        self, task_run_id: str, version: int | None, state: StateLike, message: str | None = None
    ) -> StateSet:
        """Set a task run's state at its current ``version``; ``state`` as for set_flow_run_state."""
        cmd = build(SetTaskRunState, task_run_id=task_run_id, version=version, state=state_spec(state, message))
        return await self.request(subjects.StateCommands.SET_TASK_RUN_STATE, cmd, StateSet)

    async def cancel_flow_run(self, flow_run_id: str, message: str | None = None) -> StateSet:
        """Cancel a run: Cancelling while it runs, Cancelled before; a finished run is
        left as it is (``changed`` is False)."""
        cmd = build(CancelFlowRun, flow_run_id=flow_run_id, message=message)
        return await self.request(subjects.StateCommands.CANCEL_FLOW_RUN, cmd, StateSet, idempotent=True)

    async def delete_flow_run(self, flow_run_id: str, version: int | None = None) -> Deleted:
        """Delete a run (any state) with its task runs, history and logs; with
        ``version``, only if the run has not changed since (else VERSION_LOCKING)."""
        cmd = build(DeleteFlowRun, flow_run_id=flow_run_id, version=version)
        return await self.request(subjects.StateCommands.DELETE_FLOW_RUN, cmd, Deleted)

    async def get_flow_run_history(self, flow_run_id: str, include_task_runs: bool = False) -> list[HistoryEntry]:
        """Every accepted state of the run (and of its task runs), oldest first."""
        query = build(GetFlowRunHistory, flow_run_id=flow_run_id, include_task_runs=include_task_runs)
        return (
            await self.request(subjects.StateCommands.GET_FLOW_RUN_HISTORY, query, StateHistoryList, idempotent=True)
        ).entries

    async def get_flow_run_logs(
        self,
        flow_run_id: str,
        level: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 1000,
    ) -> list[LogRecord]:
        """Stored logs in time order: ``level`` and above, ``since``/``until`` inclusive (timezone-aware)."""
        query = build(
            GetFlowRunLogs,
            flow_run_id=flow_run_id,
            level=level.upper() if level else None,
            since=since,
            until=until,
            limit=limit,
        )
        return (await self.request(subjects.StateCommands.GET_FLOW_RUN_LOGS, query, LogList, idempotent=True)).records

    async def write_logs(self, records: Sequence[LogRecord]) -> int:
        """Ship log records to the LOGS stream, where the state service stores them
        (records of a run that does not exist are dropped there): batches per
        run of at most 1,000 records and ``LOG_BATCH_MAX_BYTES``, each acknowledged by JetStream
        before this returns. How many records were shipped."""
        by_run: dict[str, list[LogRecord]] = {}
        for record in records:
            by_run.setdefault(_subject_token(record.flow_run_id), []).append(record)
        js = (await self.connect()).jetstream()
        for flow_run_id, run_records in by_run.items():
            start = 0
            while start < len(run_records):
                payload, count = pack_log_batch(run_records[start:])
                await js.publish(subjects.logs(flow_run_id), payload)
                start += count
        return len(records)

    async def send_flow_run_heartbeat(self, flow_run_id: str, task_run_id: str | None = None) -> None:
        """Publish one heartbeat of the run now, as its runner does (fire and forget:
        the heartbeat service records it; one for an unknown run is dropped there)."""
        beat = build(RunHeartbeat, flow_run_id=flow_run_id, task_run_id=task_run_id, timestamp=datetime.now(UTC))
        nc = await self.connect()
        await nc.publish(subjects.flow_run_heartbeat(_subject_token(flow_run_id)), beat.model_dump_json().encode())
