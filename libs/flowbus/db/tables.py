"""The SQLModel tables of flowbus, and which service owns (writes) each.

| table          | owner (writer)                                   |
| -------------- | ------------------------------------------------ |
| project        | registration                                     |
| flow_group     | registration                                     |
| flow           | registration                                     |
| task           | registration (with its flow, in one transaction) |
| flow_run       | run_creation inserts; state alone changes it     |
| task_run       | run_creation inserts; state alone changes it     |
| state_history  | run_creation (the first Scheduled); state        |
| log            | state                                            |
| agent          | heartbeat                                        |
| run_heartbeat  | heartbeat                                        |
| api_key        | gateway                                          |
| outbox         | each service, rows tagged with its name          |

Other services only read. These classes never leave a service: replies and
events are the pydantic messages of flowbus.schemas.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel

from flowbus.ids import uuid7


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite keeps no offset)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTCDateTime column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    # On SQLite, one function each way instead of three layered ones: the hot
    # paths bind a dozen timestamps per run, and the layers cost more than the
    # SQL. The stored text is exactly SQLAlchemy's SQLite DATETIME format.
    def bind_processor(self, dialect: sa.Dialect) -> Any:
        if dialect.name != "sqlite":
            return super().bind_processor(dialect)

        # A batch stamps every row with one `now`: the last conversion is
        # remembered, as one tuple so that threads never see half of it.
        last: tuple[datetime | None, str | None] = (None, None)

        def process(value: datetime | None) -> str | None:
            nonlocal last
            if value is None:
                return None
            seen = last
            if seen[0] is value:
                return seen[1]
            if value.tzinfo is None:
                raise ValueError("naive datetime given to a UTCDateTime column")
            utc = value.astimezone(UTC) if value.utcoffset() else value
            text = _SQLITE_FORMAT % (utc.year, utc.month, utc.day, utc.hour, utc.minute, utc.second, utc.microsecond)
            last = (value, text)
            return text

        return process

    def result_processor(self, dialect: sa.Dialect, coltype: Any) -> Any:
        if dialect.name != "sqlite":
            return super().result_processor(dialect, coltype)

        def process(value: str | None) -> datetime | None:
            return None if value is None else datetime.fromisoformat(value).replace(tzinfo=UTC)

        return process


_SQLITE_FORMAT = "%04d-%02d-%02d %02d:%02d:%02d.%06d"


def new_id() -> str:
    return uuid7()


def utcnow() -> datetime:
    return datetime.now(UTC)


def _ts(**kw: Any) -> Any:
    return Field(sa_type=UTCDateTime, **kw)


def _json(**kw: Any) -> Any:
    return Field(sa_type=sa.JSON, **kw)


def _fk(target: str, **kw: Any) -> Any:
    return Field(
        sa_column_args=[sa.ForeignKey(target, ondelete="CASCADE")],
        max_length=36,
        **kw,
    )


class Project(SQLModel, table=True):
    __tablename__ = "project"

    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    name: str = Field(max_length=255, sa_column_kwargs={"unique": True})
    description: str | None = None
    created: datetime = _ts(default_factory=utcnow)


class FlowGroup(SQLModel, table=True):
    __tablename__ = "flow_group"
    __table_args__ = (sa.Index("ix_flow_group_project_name", "project_id", "name"),)

    id: str = Field(default_factory=new_id, primary_key=True, max_length=255)
    project_id: str = _fk("project.id")
    name: str = Field(max_length=255)
    labels: list[str] | None = _json(default=None)
    default_parameters: dict[str, Any] = _json(default_factory=dict)
    schedule: dict[str, Any] | None = _json(default=None)
    run_config: dict[str, Any] | None = _json(default=None)
    heartbeat_enabled: bool = True
    lazarus_enabled: bool = True
    version_locking_enabled: bool = False
    idempotency_key: str | None = Field(default=None, max_length=255)
    created: datetime = _ts(default_factory=utcnow)
    updated: datetime = _ts(default_factory=utcnow)


class Flow(SQLModel, table=True):
    __tablename__ = "flow"
    # Versions are unique per group: two racing registrations cannot both win.
    __table_args__ = (
        sa.UniqueConstraint("flow_group_id", "version", name="uq_flow_group_version"),
        sa.Index("ix_flow_project_name", "project_id", "name"),
    )

    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    project_id: str = _fk("project.id")
    flow_group_id: str = Field(sa_column_args=[sa.ForeignKey("flow_group.id", ondelete="CASCADE")], max_length=255)
    name: str = Field(max_length=255)
    version: int
    description: str | None = None
    serialized_flow: dict[str, Any] = _json()
    parameters: list[dict[str, Any]] = _json(default_factory=list)
    tasks: list[dict[str, Any]] = _json(default_factory=list)
    edges: list[dict[str, Any]] = _json(default_factory=list)
    storage: dict[str, Any] = _json()
    run_config: dict[str, Any] = _json(default_factory=dict)
    schedule: dict[str, Any] | None = _json(default=None)
    is_schedule_active: bool = False
    archived: bool = False
    core_version: str = Field(default="", max_length=64)
    created: datetime = _ts(default_factory=utcnow)


class Task(SQLModel, table=True):
    """One task of one flow version: the rows of ``flow.tasks``, with ids of
    their own (Prefect's task runs and queries name tasks by id)."""

    __tablename__ = "task"
    __table_args__ = (sa.UniqueConstraint("flow_id", "slug", name="uq_task_flow_slug"),)

    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    flow_id: str = _fk("flow.id")
    slug: str = Field(max_length=255)
    name: str = Field(max_length=255)
    type: str = Field(default="", max_length=255)
    max_retries: int = 0
    retry_delay_seconds: float | None = None
    tags: list[str] = _json(default_factory=list)
    created: datetime = _ts(default_factory=utcnow)


class FlowRun(SQLModel, table=True):
    __tablename__ = "flow_run"
    __table_args__ = (
        sa.UniqueConstraint("flow_id", "idempotency_key", name="uq_flow_run_idempotency"),
        sa.Index("ix_flow_run_due", "state", "scheduled_start_time"),
        # A flow's runs, newest first (the API's and the UI's flow pages).
        sa.Index("ix_flow_run_flow_created", "flow_id", "created"),
        # A scheduler's run is keyed by its group, clock and time: whatever
        # happens (a restart, two schedulers, a re-registration into the group,
        # a schedule edit), one time of one clock makes at most one run.
        sa.Index(
            "uq_flow_run_auto_key",
            "flow_group_id",
            "idempotency_key",
            unique=True,
            sqlite_where=sa.text("auto_scheduled = 1"),
            postgresql_where=sa.text("auto_scheduled"),
        ),
        # The scheduler's start-up read: the latest time each group's clocks were planned up to.
        sa.Index(
            "ix_flow_run_auto_start",
            "flow_group_id",
            "scheduled_start_time",
            sqlite_where=sa.text("auto_scheduled = 1"),
            postgresql_where=sa.text("auto_scheduled"),
        ),
    )

    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    flow_id: str = _fk("flow.id")
    flow_group_id: str = Field(max_length=255)
    name: str = Field(max_length=255)
    parameters: dict[str, Any] = _json(default_factory=dict)
    context: dict[str, Any] = _json(default_factory=dict)
    labels: list[str] = _json(default_factory=list)
    run_config: dict[str, Any] | None = _json(default=None)
    scheduled_start_time: datetime = _ts()
    auto_scheduled: bool = False
    idempotency_key: str | None = Field(default=None, max_length=255)
    idempotency_expires: datetime | None = _ts(default=None)
    state: str = Field(max_length=32)
    state_message: str | None = None
    state_timestamp: datetime = _ts(default_factory=utcnow)
    state_result: Any = _json(default=None)
    # The current state as a Prefect 1.x client serialized it (StateSpec.serialized).
    state_serialized: dict[str, Any] | None = _json(default=None)
    version: int = 1
    agent_id: str | None = Field(default=None, max_length=255)
    start_time: datetime | None = _ts(default=None)
    end_time: datetime | None = _ts(default=None)
    times_resurrected: int = 0
    created: datetime = _ts(default_factory=utcnow)
    updated: datetime = _ts(default_factory=utcnow)
    # The W3C traceparent of the span that created the run: later actors'
    # spans go under it (flowbus.runtime.telemetry). None: no trace.
    traceparent: str | None = Field(default=None, max_length=55)


class TaskRun(SQLModel, table=True):
    __tablename__ = "task_run"
    __table_args__ = (sa.UniqueConstraint("flow_run_id", "task_slug", "map_index", name="uq_task_run_slot"),)

    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    flow_run_id: str = _fk("flow_run.id", index=True)
    task_slug: str = Field(max_length=255)
    task_name: str = Field(max_length=255)
    # The run's own name, when one was given (else it goes by its task's name).
    name: str | None = Field(default=None, max_length=255)
    map_index: int = -1
    max_retries: int = 0
    retry_delay_seconds: float | None = None
    state: str = Field(max_length=32)
    state_message: str | None = None
    state_timestamp: datetime = _ts(default_factory=utcnow)
    state_result: Any = _json(default=None)
    # The current state as a Prefect 1.x client serialized it (StateSpec.serialized).
    state_serialized: dict[str, Any] | None = _json(default=None)
    version: int = 1
    start_time: datetime | None = _ts(default=None)
    end_time: datetime | None = _ts(default=None)
    created: datetime = _ts(default_factory=utcnow)
    updated: datetime = _ts(default_factory=utcnow)


def _task_run_index(table: str) -> sa.Index:
    """Rows of one task run (the gateway's ``task_run { states logs }``); partial,
    so a flow run's own rows (most of them) cost the write path nothing."""
    where = sa.text("task_run_id IS NOT NULL")
    return sa.Index(f"ix_{table}_task_run_id", "task_run_id", sqlite_where=where, postgresql_where=where)


class StateHistory(SQLModel, table=True):
    __tablename__ = "state_history"
    __table_args__ = (_task_run_index("state_history"),)

    id: int | None = Field(default=None, primary_key=True)
    flow_run_id: str = _fk("flow_run.id", index=True)
    task_run_id: str | None = Field(default=None, max_length=36)
    type: str = Field(max_length=32)
    message: str | None = None
    result: Any = _json(default=None)
    version: int
    timestamp: datetime = _ts(default_factory=utcnow)


class Log(SQLModel, table=True):
    __tablename__ = "log"
    __table_args__ = (_task_run_index("log"), sa.Index("ix_log_created", "created"))

    id: int | None = Field(default=None, primary_key=True)
    flow_run_id: str = _fk("flow_run.id", index=True)
    task_run_id: str | None = Field(default=None, max_length=36)
    timestamp: datetime = _ts()
    name: str = Field(max_length=255)
    level: str = Field(max_length=16)
    message: str
    info: dict[str, Any] | None = _json(default=None)
    # When the state service stored it: retention counts from here, not from
    # the record's own timestamp, which its sender chose.
    created: datetime = _ts(default_factory=utcnow)


class Agent(SQLModel, table=True):
    __tablename__ = "agent"

    id: str = Field(primary_key=True, max_length=255)
    name: str = Field(max_length=255)
    type: str = Field(max_length=64)
    labels: list[str] = _json(default_factory=list)
    last_seen: datetime = _ts(default_factory=utcnow)
    created: datetime = _ts(default_factory=utcnow)


class RunHeartbeat(SQLModel, table=True):
    __tablename__ = "run_heartbeat"

    flow_run_id: str = _fk("flow_run.id", primary_key=True)
    last_heartbeat: datetime = _ts()


class ApiKey(SQLModel, table=True):
    """An API key of the gateway. The key itself is never stored: only its
    SHA-256 (keys are 256 random bits, so a slow hash adds nothing)."""

    __tablename__ = "api_key"

    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    name: str = Field(max_length=255, sa_column_kwargs={"unique": True})
    role: str = Field(max_length=32)
    key_hash: str = Field(max_length=64, sa_column_kwargs={"unique": True})
    created: datetime = _ts(default_factory=utcnow)
    last_used: datetime | None = _ts(default=None)


class Outbox(SQLModel, table=True):
    """Messages to publish after the transaction that produced them commits:
    one row per transaction, ``messages`` a JSON list of [subject, message id, payload]."""

    __tablename__ = "outbox"

    id: int | None = Field(default=None, primary_key=True)
    owner: str = Field(max_length=64, index=True)
    messages: bytes = Field(sa_type=sa.LargeBinary)
    created: datetime = _ts(default_factory=utcnow)
