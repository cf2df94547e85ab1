"""Messages about flow runs: creation, states, queries, logs and the run queue."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any, Final

from pydantic import AwareDatetime, Field, JsonValue, PrivateAttr, StringConstraints, field_validator, model_validator
from pydantic_core import to_json

from flowbus import subjects
from flowbus.schemas.common import (
    INT_COLUMN_MAX,
    LIST_LIMIT_DEFAULT,
    TEXT_MAX,
    ErrorInfo,
    Json,
    Message,
    at_most,
    is_none,
)
from flowbus.schemas.flows import (
    CheckedRunConfig,
    JsonObject,
    Key,
    Labels,
    Limit,
    Name,
    Offset,
    ParameterValues,
    RunConfigSpec,
    StorageSpec,
    TaskSpec,
)
from flowbus.states import StateType

# The flow-run facts as plain strings: formatting an enum member into a
# subject costs more than the rest of it, a few times per run on the hot paths.
_CREATED: Final = subjects.FlowRunFact.CREATED.value
_STATE: Final = subjects.FlowRunFact.STATE.value
_TASK_STATE: Final = subjects.FlowRunFact.TASK_STATE.value
_DELETED: Final = subjects.FlowRunFact.DELETED.value

# In severity order: a minimum level keeps itself and every level after it.
LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LogLevel = Annotated[str, StringConstraints(pattern=rf"^({'|'.join(LOG_LEVELS)})$")]


class StateSpec(Message):
    type: StateType
    message: str | None = Field(default=None, max_length=TEXT_MAX)
    result: Json = None
    # The state as a Prefect 1.x client serialized it (``State.serialize()``:
    # its start time, run count, cached inputs, result location...), kept with
    # the run's current state and handed back to Prefect clients as it came.
    serialized: JsonObject | None = Field(default=None, exclude_if=is_none)


class StateOut(Message):
    type: StateType
    message: str | None
    timestamp: datetime
    version: int


# ---- creation --------------------------------------------------------------


class CreateFlowRun(Message):
    """Create a run. Give ``flow_id``, or ``version_group_id``, or ``flow_name``."""

    flow_id: Key | None = None
    version_group_id: Key | None = None
    flow_name: Name | None = None
    project_name: Name | None = None
    parameters: ParameterValues = Field(default_factory=dict)
    context: JsonObject = Field(default_factory=dict)
    labels: Labels | None = None
    run_config: CheckedRunConfig | None = None
    run_name: Name | None = None
    # Timezone-aware only: a naive time would be a guess about the caller's zone.
    scheduled_start_time: AwareDatetime | None = None
    idempotency_key: Key | None = None
    # The scheduler's runs: their key is unique in the flow's group (not per
    # flow) and never expires, so one clock time makes one run whatever happens.
    auto_scheduled: bool = False
    # The W3C traceparent of the span that created the run, set by the service
    # (flowbus.runtime.fastlane), never sent: stored with the run.
    _traceparent: str | None = PrivateAttr(default=None)

    def set_traceparent(self, value: str | None) -> None:
        self._traceparent = value

    @property
    def traceparent(self) -> str | None:
        return self._traceparent

    @model_validator(mode="after")
    def _target(self) -> CreateFlowRun:
        given = [x for x in (self.flow_id, self.version_group_id, self.flow_name) if x is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of flow_id, version_group_id and flow_name")
        if self.auto_scheduled and (self.idempotency_key is None or self.scheduled_start_time is None):
            raise ValueError("an auto-scheduled run needs an idempotency_key and a scheduled_start_time")
        return self


# Creates per create_flow_runs command: a batch stays well under nats.max_command_bytes.
MAX_CREATES_PER_COMMAND: Final = 500


class CreateFlowRuns(Message):
    """Several creates in one command, each decided as if sent alone (its own
    target, key and refusal); for callers that create many runs at once."""

    runs: list[CreateFlowRun] = Field(min_length=1, max_length=MAX_CREATES_PER_COMMAND)


class CreateOutcome(Message):
    """One create of a batch: the run's id, or why it was refused."""

    id: str | None = None
    error: ErrorInfo | None = None


class CreatedFlowRuns(Message):
    outcomes: list[CreateOutcome]


class TaskRunOut(Message):
    id: str
    flow_run_id: str
    task_slug: str
    task_name: str
    map_index: int
    version: int
    state: StateOut
    max_retries: int
    retry_delay_seconds: float | None


class FlowRunOut(Message):
    id: str
    flow_id: str
    flow_name: str
    flow_group_id: str
    project_name: str
    name: str
    parameters: dict[str, Any]
    context: dict[str, Any]
    labels: list[str]
    scheduled_start_time: datetime
    auto_scheduled: bool
    idempotency_key: str | None
    version: int
    state: StateOut
    agent_id: str | None
    start_time: datetime | None
    end_time: datetime | None
    times_resurrected: int
    created: datetime
    updated: datetime
    # Still Scheduled ``scheduler.late_after`` past its start time (computed when read).
    late: bool = False


class FlowRunDetail(Message):
    """A run with what its runner needs: the flow's storage, tasks and settings."""

    run: FlowRunOut
    task_runs: list[TaskRunOut]
    storage: StorageSpec
    tasks: list[TaskSpec]
    run_config: RunConfigSpec
    heartbeat_enabled: bool
    version_locking_enabled: bool


class GetFlowRun(Message):
    flow_run_id: Key


class EnsureTaskRun(Message):
    """The task run of ``task_id`` (a task of the run's flow version, by its id)
    at ``map_index`` in a flow run; created Pending (version 1) when there is
    none yet, as Prefect 1.x's runner asks for each mapped child."""

    flow_run_id: Key
    task_id: Key
    map_index: int = Field(default=-1, ge=-1, le=INT_COLUMN_MAX)


class TaskRunInfo(Message):
    task_run: TaskRunOut
    # Its current state as a Prefect client set it (StateSpec.serialized), if one did.
    serialized_state: dict[str, Any] | None = None


class RunQueued(Message):
    """Published on ``flowbus.runq.<label-set key>`` when a run is due."""

    flow_run_id: str
    flow_id: str
    version: int
    labels: list[str]
    scheduled_start_time: datetime
    # The W3C traceparent of the span that queued the run, in the run's trace:
    # the agent's spans continue it (the outbox keeps payloads, not headers).
    traceparent: str | None = None

    def subject(self) -> str:
        return subjects.run_queue(self.labels)

    def msg_id(self) -> str:
        return subjects.run_queue_msg_id(self.flow_run_id, self.version)


# ---- states ----------------------------------------------------------------


class SetFlowRunState(Message):
    flow_run_id: Key
    # None: at whatever version the run is at (Prefect 1.x clients send no
    # version for most states, as Prefect Server and Cloud accept); a version
    # given is always checked, whatever the group's version_locking_enabled.
    version: int | None = Field(default=None, ge=1)
    state: StateSpec
    agent_id: Key | None = None
    # A Lazarus resurrection: Submitted or Running back to Scheduled, counted
    # in the run's times_resurrected and starting its task runs over, in the
    # same transaction (docs/architecture.md, "Lazarus").
    resurrect: bool = False

    @model_validator(mode="after")
    def _resurrect_to_scheduled(self) -> SetFlowRunState:
        if self.resurrect and self.state.type is not StateType.SCHEDULED:
            raise ValueError("a resurrection sets Scheduled")
        return self


class RenameRun(Message):
    """Name a flow run, or a task run (Prefect 1.x's runner names a task's run
    from its ``task_run_name`` template); exactly one of the two ids."""

    flow_run_id: Key | None = None
    task_run_id: Key | None = None
    name: Name

    @model_validator(mode="after")
    def _one(self) -> RenameRun:
        if (self.flow_run_id is None) == (self.task_run_id is None):
            raise ValueError("give exactly one of flow_run_id and task_run_id")
        return self


class Renamed(Message):
    id: str
    name: str


class DeleteFlowRun(Message):
    """Delete a run with its task runs, history and logs; with ``version``,
    only while the run is still at that version (the scheduler deletes a
    waiting run it planned, never one an agent claimed meanwhile)."""

    flow_run_id: Key
    version: int | None = Field(default=None, ge=1)


class SetTaskRunState(Message):
    task_run_id: Key
    # None: at the task run's current version, as for SetFlowRunState.
    version: int | None = Field(default=None, ge=1)
    state: StateSpec


class StateSet(Message):
    id: str
    version: int
    state: StateOut
    # False when the command asked for nothing new (cancelling a finished run).
    changed: bool = True


class CancelFlowRun(Message):
    """Cancel a run: finished -> nothing; running -> Cancelling; otherwise -> Cancelled."""

    flow_run_id: Key
    message: str | None = Field(default=None, max_length=TEXT_MAX)


class ListFlowRuns(Message):
    """Runs, newest scheduled first, filtered by flow, flow group, project, state and lateness."""

    flow_id: Key | None = None
    flow_group_id: Key | None = None
    project_name: Name | None = None
    states: Annotated[list[StateType], at_most(len(StateType), "states")] | None = None
    # True: only late runs; False: only runs that are not late.
    late: bool | None = None
    limit: int = Field(default=50, ge=1, le=1000)
    offset: Offset = 0


class FlowRunList(Message):
    runs: list[FlowRunOut]


class GetFlowRunHistory(Message):
    """Every accepted state of a run (and, when asked, of its task runs), oldest first."""

    flow_run_id: Key
    include_task_runs: bool = False


class HistoryEntry(Message):
    flow_run_id: str
    task_run_id: str | None
    version: int
    type: StateType
    message: str | None
    timestamp: datetime
    result: JsonValue = None


class StateHistoryList(Message):
    entries: list[HistoryEntry]


class StateChanged(Message):
    """Published on ``flowbus.evt.flow_run.<id>.state`` (and task_run) after commit."""

    flow_run_id: str
    task_run_id: str | None = None
    version: int
    state: StateOut
    previous: StateType | None = None

    def subject(self) -> str:
        return subjects.flow_run_event(self.flow_run_id, _STATE if self.task_run_id is None else _TASK_STATE)

    def tally_key(self) -> tuple[str, str]:
        return ("flow_run" if self.task_run_id is None else "task_run", self.state.type.value)

    def msg_id(self) -> str:
        return subjects.state_event_msg_id(self.task_run_id or self.flow_run_id, self.version)


class FlowRunDeleted(Message):
    """Published on ``flowbus.evt.flow_run.<id>.deleted``."""

    flow_run_id: str
    reason: str

    def subject(self) -> str:
        return subjects.flow_run_event(self.flow_run_id, _DELETED)

    def msg_id(self) -> str:
        return subjects.event_msg_id("flow_run", self.flow_run_id, _DELETED)


class FlowRunCreated(Message):
    """Published on ``flowbus.evt.flow_run.<id>.created``."""

    flow_run_id: str
    flow_id: str
    name: str
    labels: list[str]
    scheduled_start_time: datetime

    def subject(self) -> str:
        return subjects.flow_run_event(self.flow_run_id, _CREATED)

    def tally_key(self) -> tuple[str, str]:
        return ("created", "")

    def msg_id(self) -> str:
        return subjects.event_msg_id("flow_run", self.flow_run_id, _CREATED)


# ---- logs ------------------------------------------------------------------


LOG_MESSAGE_MAX_CHARS: Final = 100_000
LOG_INFO_MAX_BYTES: Final = 64 << 10
LOG_BATCH_MAX_RECORDS: Final = 1000
# A batch's JSON fits the LOGS stream's message limit (nats.logs_max_msg_bytes,
# 1 MiB, which the settings keep above this), so a valid batch is never refused.
LOG_BATCH_MAX_BYTES: Final = 1000 << 10
# JSON spends at most 6 bytes on a character (a control character as \u00XX),
# and a record's field names, timestamp and level take under 200.
_JSON_BYTES_PER_CHAR: Final = 6
_RECORD_FRAME_BYTES: Final = 200
_BATCH_OPEN: Final = b'{"records":['
_BATCH_CLOSE: Final = b"]}"


class LogRecord(Message):
    flow_run_id: Key
    task_run_id: Key | None = None
    timestamp: datetime
    name: str = Field(max_length=255)
    level: LogLevel
    message: str = Field(max_length=LOG_MESSAGE_MAX_CHARS)
    info: JsonObject | None = None

    @field_validator("info")
    @classmethod
    def _small_info(cls, info: dict[str, JsonValue] | None) -> dict[str, JsonValue] | None:
        if info is not None and len(to_json(info)) > LOG_INFO_MAX_BYTES:
            raise ValueError(f"a log record's info takes at most {LOG_INFO_MAX_BYTES} bytes of JSON")
        return info

    def max_json_bytes(self) -> int:
        """An upper bound of this record's JSON size, without serializing it.

        Its largest value (100,000 characters of message, three 255-character
        fields, 64 KiB of info) is about 670 KB: every valid record fits a batch.
        """
        chars = len(self.flow_run_id) + len(self.task_run_id or "") + len(self.name) + len(self.message)
        return _JSON_BYTES_PER_CHAR * chars + _RECORD_FRAME_BYTES + (LOG_INFO_MAX_BYTES if self.info else 0)


class LogBatch(Message):
    """Published on ``flowbus.logs.<flow_run_id>`` by runners and services:
    at most 1,000 records and 1,000 KiB of JSON, so that it fits the LOGS
    stream's message limit (``pack_log_batch`` cuts records into such batches)."""

    records: list[LogRecord] = Field(min_length=1, max_length=LOG_BATCH_MAX_RECORDS)

    @model_validator(mode="after")
    def _fits_the_stream(self) -> LogBatch:
        # Serialized only when the cheap bound says it might not fit (long lines).
        bound = len(_BATCH_OPEN) + len(_BATCH_CLOSE) + sum(r.max_json_bytes() + 1 for r in self.records)
        if bound > LOG_BATCH_MAX_BYTES:
            size = len(self.__pydantic_serializer__.to_json(self))
            if size > LOG_BATCH_MAX_BYTES:
                raise ValueError(f"a log batch takes at most {LOG_BATCH_MAX_BYTES} bytes of JSON, this one {size}")
        return self


def pack_log_batch(records: Sequence[LogRecord]) -> tuple[bytes, int]:
    """The JSON of a ``LogBatch`` of the first records of ``records`` (at least
    one), as many as fit the batch limits, and how many it holds."""
    parts: list[bytes] = []
    size = len(_BATCH_OPEN) + len(_BATCH_CLOSE)
    for record in records[:LOG_BATCH_MAX_RECORDS]:
        data = record.__pydantic_serializer__.to_json(record)
        if parts and size + len(data) + 1 > LOG_BATCH_MAX_BYTES:
            break
        parts.append(data)
        size += len(data) + 1
    if not parts:
        raise ValueError("no log records to pack")
    return _BATCH_OPEN + b",".join(parts) + _BATCH_CLOSE, len(parts)


class GetFlowRunLogs(Message):
    """A run's stored logs in time order; ``level`` is the minimum level."""

    flow_run_id: Key
    level: LogLevel | None = None
    since: AwareDatetime | None = None
    until: AwareDatetime | None = None
    limit: Limit = LIST_LIMIT_DEFAULT


class LogList(Message):
    records: list[LogRecord]
