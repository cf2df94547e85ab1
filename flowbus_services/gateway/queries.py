"""The read side of the GraphQL API: Hasura-style queries over flowbus's tables, after Prefect Server 1.x.

``MODEL`` maps each GraphQL type (tenant, project, flow_group, flow, task,
flow_run, task_run, flow_run_state, task_run_state, log, agent) onto the
tables, with Prefect's names where they differ from flowbus's; hasura.py
compiles the queries. Every type has ``<t>(where, order_by, limit, offset,
distinct_on)``, ``<t>_by_pk(id)`` and ``<t>_aggregate``. Nested lists and
objects are batch-loaded: one statement per relation and level for all the
parents of a request (``BatchLoader`` in ``info.context.loaders``), never
one per parent. Pages: an explicit ``limit`` over
``gateway.max_page_size`` is refused; no limit means that size, nested
lists too. Reads go through the read-only database (``gateway.db``).

Reads and writes nothing on NATS. ``python -m flowbus_services.gateway.queries``
prints the SDL of graphql/queries.graphql (a unit test keeps the file current).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import Any

import sqlalchemy as sa
from ariadne import ObjectType, QueryType, SchemaBindable
from graphql import (
    FieldNode,
    FragmentSpreadNode,
    InlineFragmentNode,
    ListValueNode,
    ObjectValueNode,
    SelectionSetNode,
    ValueNode,
)
from sqlalchemy.sql import Select
from sqlmodel import SQLModel

import flowbus.db.tables  # noqa: F401  (registers the tables in SQLModel.metadata)
from flowbus.db.tables import UTCDateTime
from flowbus_services.gateway.context import Info, request_context
from flowbus_services.gateway.hasura import (
    KEY,
    Alias,
    Col,
    Compiler,
    Computed,
    Kind,
    Model,
    Page,
    Rel,
    Table,
    column,
    page,
    render_sdl,
)
from flowbus_services.gateway.prefect1 import serialized_state

# Prefect clients read the tenant first (``tenant { id }``) and take the first:
# flowbus has one, always there, with a fixed id.
TENANT_ID = "5f0c1d2e-7a3b-4c8d-9e1f-0a2b3c4d5e6f"
TENANT_NAME = "default"
TENANT_CREATED = datetime(2026, 1, 1, tzinfo=UTC)
# Parents' keys per statement: well under both databases' bound-parameter limits.
KEYS_PER_STATEMENT = 5000
# Event-loop turns a loader waits before it fetches: every sibling's resolver
# has asked for its key by then (graphql-core completes a level's values in
# tasks that start within a turn or two of each other).
BATCH_TURNS = 3

_T = SQLModel.metadata.tables


def _source(name: str) -> Callable[[], Alias]:
    table = _T[name]
    return lambda: table.alias()


def _tenant_source() -> Alias:
    return sa.select(
        sa.literal(TENANT_ID, sa.String).label("id"),
        sa.literal(TENANT_NAME, sa.String).label("name"),
        sa.literal(TENANT_NAME, sa.String).label("slug"),
        sa.literal(TENANT_CREATED, UTCDateTime()).label("created"),
    ).subquery()


def _no_agent_configs() -> Alias:
    return (
        sa.select(sa.literal(TENANT_ID, sa.String).label("id"), sa.literal(TENANT_NAME, sa.String).label("name"))
        .where(sa.false())
        .subquery()
    )


def _const(value: Any, type_: Any) -> Callable[[Alias], Any]:
    return lambda _a: sa.literal(value, type_) if value is not None else sa.cast(sa.null(), type_)


def C(
    name: str,
    kind: Kind,
    sql: str | Callable[[Alias], Any] | None = None,
    *,
    nullable: bool = True,
    doc: str | None = None,
    hidden: bool = False,
    output: str | None = None,
) -> Col:
    expr = column(sql or name) if sql is None or isinstance(sql, str) else sql
    return Col(name, kind, expr, nullable=nullable, doc=doc, hidden=hidden, output=output)


def _cols(*cols: Col) -> dict[str, Col]:
    return {c.name: c for c in cols}


def _rels(*rels: Rel) -> dict[str, Rel]:
    return {r.name: r for r in rels}


def _tenant_col() -> Col:
    return C("tenant_id", Kind.UUID, _const(TENANT_ID, sa.String), nullable=False, doc="Always the default tenant.")


def _created_as_updated() -> Col:
    return C("updated", Kind.TIMESTAMP, "created", nullable=False, doc="Rows of this table never change: created.")


def _prefect(value: Any) -> Any:
    """What a Prefect client sent for a storage or run config, where it sent one; else the value."""
    if isinstance(value, Mapping) and isinstance(value.get("prefect"), Mapping):
        return value["prefect"]
    return value


def _flow_run_config(row: Mapping[str, Any]) -> Any:
    """A run's run config; for a run of a Prefect flow that has none of its
    own, the flow's (Prefect agents read only the run's, as Prefect Server fills it)."""
    own = row["run_config"]
    if own is None and isinstance(row["flow_run_config"], Mapping) and "prefect" in row["flow_run_config"]:
        return _prefect(row["flow_run_config"])
    return _prefect(own)


def _serialized_flow(row: Mapping[str, Any]) -> Any:
    flow = row["serialized_flow"]
    return flow["prefect"] if isinstance(flow, Mapping) and isinstance(flow.get("prefect"), Mapping) else flow


def _settings(row: Mapping[str, Any]) -> dict[str, bool]:
    return {
        "heartbeat_enabled": bool(row["heartbeat_enabled"]),
        "lazarus_enabled": bool(row["lazarus_enabled"]),
        "version_locking_enabled": bool(row["version_locking_enabled"]),
    }


def _group_setting(name: str) -> Callable[[Alias], Any]:
    def sql(a: Alias) -> Any:
        g = _T["flow_group"].alias()
        return sa.select(g.c[name]).where(g.c.id == a.c.flow_group_id).correlate(a).scalar_subquery()

    return sql


def run_state_start_time(a: Alias) -> Any:
    """When a run's state starts: its scheduled start time while Scheduled, else the state's time."""
    return sa.type_coerce(
        sa.case((a.c.state == "Scheduled", a.c.scheduled_start_time), else_=a.c.state_timestamp), UTCDateTime()
    )


def _run_heartbeat(a: Alias) -> Any:
    hb = _T["run_heartbeat"].alias()
    return sa.select(hb.c.last_heartbeat).where(hb.c.flow_run_id == a.c.id).correlate(a).scalar_subquery()


def _task_id(a: Alias) -> Any:
    task, run = _T["task"].alias(), _T["flow_run"].alias()
    return (
        sa.select(task.c.id)
        .where(run.c.id == a.c.flow_run_id, task.c.flow_id == run.c.flow_id, task.c.slug == a.c.task_slug)
        .correlate(a)
        .scalar_subquery()
    )


def _scheduled_history_start(a: Alias) -> Any:
    run = _T["flow_run"].alias()
    scheduled = sa.select(run.c.scheduled_start_time).where(run.c.id == a.c.flow_run_id).correlate(a).scalar_subquery()
    return sa.type_coerce(sa.case((a.c.type == "Scheduled", scheduled), else_=sa.null()), UTCDateTime())


_STATE_DOC = (
    "When the state starts: the scheduled start time while the run is Scheduled, "
    "else the time the state was set (state_timestamp)."
)
_SETTINGS = Computed(
    "settings",
    "jsonb!",
    ("heartbeat_enabled", "lazarus_enabled", "version_locking_enabled"),
    _settings,
    "The flow group's settings: heartbeat_enabled, lazarus_enabled, version_locking_enabled.",
)


def _state_columns(start: Callable[[Alias], Any], start_doc: str) -> list[Col]:
    return [
        C("id", Kind.INT, nullable=False, doc="The state's place in flowbus's history (an integer, not a uuid)."),
        _tenant_col(),
        C("flow_run_id", Kind.UUID, nullable=False),
        C("state", Kind.STRING, "type", nullable=False, doc="The state's type, e.g. Running."),
        C("message", Kind.STRING),
        C("start_time", Kind.TIMESTAMP, start, doc=start_doc),
        C("timestamp", Kind.TIMESTAMP, nullable=False, doc="When the state was set."),
        C("created", Kind.TIMESTAMP, "timestamp", nullable=False, doc="The same as timestamp."),
        C("version", Kind.INT, doc="The run's version this state gave it."),
    ]


def _state_serialized(row: Mapping[str, Any]) -> dict[str, Any]:
    return serialized_state(row["state"], row["message"], row.get("start_time"))


def _flow_run_run_config(a: Alias) -> Any:
    flow = _T["flow"].alias()
    return sa.select(flow.c.run_config).where(flow.c.id == a.c.flow_id).correlate(a).scalar_subquery()


MODEL = Model(
    [
        Table(
            "tenant",
            _tenant_source,
            "id",
            _cols(
                C("id", Kind.UUID, nullable=False),
                C("name", Kind.STRING, nullable=False),
                C("slug", Kind.STRING, nullable=False),
                C("created", Kind.TIMESTAMP, nullable=False),
            ),
            _rels(Rel("projects", "project", "id", "tenant_id", array=True, aggregate=True)),
            {"settings": Computed("settings", "jsonb!", (), lambda _row: {})},
            doc="flowbus has one tenant, always there: Prefect clients look it up first.",
        ),
        Table(
            "project",
            _source("project"),
            "id",
            _cols(
                C("id", Kind.UUID, nullable=False),
                _tenant_col(),
                C("name", Kind.STRING, nullable=False),
                C("description", Kind.STRING),
                C("created", Kind.TIMESTAMP, nullable=False),
                _created_as_updated(),
            ),
            _rels(
                Rel("tenant", "tenant", "tenant_id", "id", array=False),
                Rel("flows", "flow", "id", "project_id", array=True, aggregate=True),
                Rel("flow_groups", "flow_group", "id", "project_id", array=True, aggregate=True),
            ),
        ),
        Table(
            "flow_group",
            _source("flow_group"),
            "id",
            _cols(
                C("id", Kind.KEY, nullable=False, doc="The version group id of its flows (any text, often a uuid)."),
                _tenant_col(),
                C("project_id", Kind.UUID, nullable=False),
                C("name", Kind.STRING),
                C("description", Kind.STRING, _const(None, sa.String), doc="Always null in flowbus."),
                C("labels", Kind.JSON, doc="The group's labels; null unless set_flow_group_labels set them."),
                C("default_parameters", Kind.JSON, nullable=False),
                C("schedule", Kind.JSON),
                C("run_config", Kind.JSON),
                C("heartbeat_enabled", Kind.BOOL, nullable=False),
                C("lazarus_enabled", Kind.BOOL, nullable=False),
                C("version_locking_enabled", Kind.BOOL, nullable=False),
                C("created", Kind.TIMESTAMP, nullable=False),
                C("updated", Kind.TIMESTAMP, nullable=False),
            ),
            _rels(
                Rel("project", "project", "project_id", "id", array=False),
                Rel("flows", "flow", "id", "flow_group_id", array=True, aggregate=True),
                Rel("flow_runs", "flow_run", "id", "flow_group_id", array=True, aggregate=True),
            ),
            {"settings": _SETTINGS},
        ),
        Table(
            "flow",
            _source("flow"),
            "id",
            _cols(
                C("id", Kind.UUID, nullable=False),
                _tenant_col(),
                C("project_id", Kind.UUID, nullable=False),
                C("flow_group_id", Kind.KEY, nullable=False),
                C(
                    "version_group_id",
                    Kind.KEY,
                    "flow_group_id",
                    nullable=False,
                    output="String",
                    doc="= flow_group_id",
                ),
                C("name", Kind.STRING, nullable=False),
                C("version", Kind.INT, nullable=False),
                C("description", Kind.STRING),
                C("archived", Kind.BOOL, nullable=False),
                C("core_version", Kind.STRING),
                C("created", Kind.TIMESTAMP, nullable=False),
                _created_as_updated(),
                C("storage", Kind.JSON),
                C("run_config", Kind.JSON),
                C("environment", Kind.JSON, _const(None, sa.JSON), doc="Prefect's legacy environment: always null."),
                C("parameters", Kind.JSON, doc="The flow's parameters, serialized."),
                C("serialized_flow", Kind.JSON),
                C("schedule", Kind.JSON),
                C("is_schedule_active", Kind.BOOL, nullable=False),
                C("heartbeat_enabled", Kind.BOOL, _group_setting("heartbeat_enabled"), hidden=True),
                C("lazarus_enabled", Kind.BOOL, _group_setting("lazarus_enabled"), hidden=True),
                C("version_locking_enabled", Kind.BOOL, _group_setting("version_locking_enabled"), hidden=True),
            ),
            _rels(
                Rel("project", "project", "project_id", "id", array=False),
                Rel("flow_group", "flow_group", "flow_group_id", "id", array=False),
                Rel("tasks", "task", "id", "flow_id", array=True, aggregate=True),
                Rel("flow_runs", "flow_run", "id", "flow_id", array=True, aggregate=True),
            ),
            {
                "settings": _SETTINGS,
                "storage": Computed(
                    "storage",
                    "jsonb",
                    ("storage",),
                    lambda r: _prefect(r["storage"]),
                    "Where the flow's code lives; a Prefect flow's storage as Prefect serialized it.",
                ),
                "run_config": Computed(
                    "run_config",
                    "jsonb",
                    ("run_config",),
                    lambda r: _prefect(r["run_config"]),
                    "The flow's run config; a Prefect flow's as Prefect serialized it.",
                ),
                "serialized_flow": Computed(
                    "serialized_flow",
                    "jsonb",
                    ("serialized_flow",),
                    _serialized_flow,
                    "The flow as registered; a Prefect flow as Prefect serialized it.",
                ),
            },
        ),
        Table(
            "task",
            _source("task"),
            "id",
            _cols(
                C("id", Kind.UUID, nullable=False),
                _tenant_col(),
                C("flow_id", Kind.UUID, nullable=False),
                C("name", Kind.STRING, nullable=False),
                C("slug", Kind.STRING, nullable=False),
                C("type", Kind.STRING),
                C("description", Kind.STRING, _const(None, sa.String), doc="Always null in flowbus."),
                C("max_retries", Kind.INT, nullable=False),
                C("retry_delay", Kind.INTERVAL, "retry_delay_seconds"),
                C("mapped", Kind.BOOL, _const(False, sa.Boolean), nullable=False, doc="flowbus records no mapping."),
                C("cache_key", Kind.STRING, _const(None, sa.String), doc="Always null in flowbus."),
                C("tags", Kind.JSON, nullable=False),
                C("created", Kind.TIMESTAMP, nullable=False),
                _created_as_updated(),
            ),
            _rels(Rel("flow", "flow", "flow_id", "id", array=False)),
        ),
        Table(
            "flow_run",
            _source("flow_run"),
            "id",
            _cols(
                C("id", Kind.UUID, nullable=False),
                _tenant_col(),
                C("flow_id", Kind.UUID, nullable=False),
                C("flow_group_id", Kind.KEY, nullable=False),
                C("agent_id", Kind.KEY, doc="The agent that took the run."),
                C("name", Kind.STRING, nullable=False),
                C("labels", Kind.JSON, nullable=False),
                C("parameters", Kind.JSON, nullable=False),
                C("context", Kind.JSON, nullable=False),
                C("run_config", Kind.JSON),
                C("flow_run_config", Kind.JSON, _flow_run_run_config, hidden=True),
                C("version", Kind.INT, nullable=False),
                C("state", Kind.STRING, nullable=False),
                C("state_message", Kind.STRING),
                C("state_serialized", Kind.JSON, hidden=True),
                C("state_timestamp", Kind.TIMESTAMP, nullable=False, doc="When the current state was set."),
                C("state_start_time", Kind.TIMESTAMP, run_state_start_time, nullable=False, doc=_STATE_DOC),
                C("scheduled_start_time", Kind.TIMESTAMP, nullable=False),
                C("start_time", Kind.TIMESTAMP, doc="When the run first ran."),
                C("end_time", Kind.TIMESTAMP),
                C("heartbeat", Kind.TIMESTAMP, _run_heartbeat, doc="The run's last heartbeat."),
                C("auto_scheduled", Kind.BOOL, nullable=False),
                C("idempotency_key", Kind.STRING),
                C("times_resurrected", Kind.INT, nullable=False),
                C("created", Kind.TIMESTAMP, nullable=False),
                C("updated", Kind.TIMESTAMP, nullable=False),
            ),
            _rels(
                Rel("flow", "flow", "flow_id", "id", array=False),
                Rel("flow_group", "flow_group", "flow_group_id", "id", array=False),
                Rel("agent", "agent", "agent_id", "id", array=False),
                Rel("task_runs", "task_run", "id", "flow_run_id", array=True, aggregate=True),
                Rel("states", "flow_run_state", "id", "flow_run_id", array=True, aggregate=True),
                Rel("logs", "log", "id", "flow_run_id", array=True, aggregate=True),
            ),
            {
                "serialized_state": Computed(
                    "serialized_state",
                    "jsonb!",
                    ("state", "state_message", "state_start_time", "state_serialized"),
                    lambda r: serialized_state(
                        r["state"],
                        r["state_message"],
                        r["state_start_time"] if r["state"] == "Scheduled" else None,
                        r["state_serialized"],
                    ),
                    "The current state as Prefect serializes it: as a Prefect client set it, "
                    "else its type, message (and start_time while Scheduled).",
                ),
                "run_config": Computed(
                    "run_config",
                    "jsonb",
                    ("run_config", "flow_run_config"),
                    _flow_run_config,
                    "The run's own run config (labels, env); for a run of a Prefect flow, "
                    "as Prefect serialized it, the flow's when the run has none of its own.",
                ),
            },
        ),
        Table(
            "task_run",
            _source("task_run"),
            "id",
            _cols(
                C("id", Kind.UUID, nullable=False),
                _tenant_col(),
                C("flow_run_id", Kind.UUID, nullable=False),
                C("task_id", Kind.UUID, _task_id, doc="The task of the run's flow with this task run's slug."),
                C("task_slug", Kind.STRING, nullable=False),
                C(
                    "name",
                    Kind.STRING,
                    lambda a: sa.func.coalesce(a.c.name, a.c.task_name),
                    nullable=False,
                    doc="The run's name if it was given one (set_task_run_name), else its task's.",
                ),
                C("map_index", Kind.INT, nullable=False, doc="-1 unless a mapped child."),
                C("max_retries", Kind.INT, nullable=False),
                C("retry_delay", Kind.INTERVAL, "retry_delay_seconds"),
                C("version", Kind.INT, nullable=False),
                C("state", Kind.STRING, nullable=False),
                C("state_message", Kind.STRING),
                C("state_timestamp", Kind.TIMESTAMP, nullable=False),
                C("state_start_time", Kind.TIMESTAMP, "state_timestamp", nullable=False, doc="= state_timestamp"),
                C("state_serialized", Kind.JSON, hidden=True),
                C("start_time", Kind.TIMESTAMP),
                C("end_time", Kind.TIMESTAMP),
                C("cache_key", Kind.STRING, _const(None, sa.String), doc="Always null in flowbus."),
                C("created", Kind.TIMESTAMP, nullable=False),
                C("updated", Kind.TIMESTAMP, nullable=False),
            ),
            _rels(
                Rel("flow_run", "flow_run", "flow_run_id", "id", array=False),
                Rel("task", "task", "task_id", "id", array=False),
                Rel("states", "task_run_state", "id", "task_run_id", array=True, aggregate=True),
                Rel("logs", "log", "id", "task_run_id", array=True, aggregate=True),
            ),
            {
                "serialized_state": Computed(
                    "serialized_state",
                    "jsonb!",
                    ("state", "state_message", "state_serialized"),
                    lambda r: serialized_state(r["state"], r["state_message"], None, r["state_serialized"]),
                    "The current state as Prefect serializes it: as a Prefect client set it, "
                    "else its type and message.",
                )
            },
        ),
        Table(
            "flow_run_state",
            _source("state_history"),
            "id",
            _cols(
                *_state_columns(
                    _scheduled_history_start, "A Scheduled state's start: the run's scheduled start time; else null."
                )
            ),
            _rels(Rel("flow_run", "flow_run", "flow_run_id", "id", array=False)),
            {
                "serialized_state": Computed(
                    "serialized_state", "jsonb!", ("state", "message", "start_time"), _state_serialized
                )
            },
            rows=lambda a: a.c.task_run_id.is_(None),
            doc="The states a flow run went through (flowbus's state history of the run itself).",
        ),
        Table(
            "task_run_state",
            _source("state_history"),
            "id",
            _cols(
                *_state_columns(_const(None, UTCDateTime()), "Always null: task run states carry no start time."),
                C("task_run_id", Kind.UUID, nullable=False),
            ),
            _rels(Rel("task_run", "task_run", "task_run_id", "id", array=False)),
            {"serialized_state": Computed("serialized_state", "jsonb!", ("state", "message"), _state_serialized)},
            rows=lambda a: a.c.task_run_id.is_not(None),
            doc="The states a task run went through.",
        ),
        Table(
            "log",
            _source("log"),
            "id",
            _cols(
                C("id", Kind.INT, nullable=False, doc="An integer in flowbus, not a uuid."),
                _tenant_col(),
                C("flow_run_id", Kind.UUID, nullable=False),
                C("task_run_id", Kind.UUID),
                C("timestamp", Kind.TIMESTAMP, nullable=False),
                C("created", Kind.TIMESTAMP, "timestamp", nullable=False, doc="= timestamp"),
                C("name", Kind.STRING, nullable=False),
                C(
                    "level",
                    Kind.STRING,
                    nullable=False,
                    doc="DEBUG, INFO, WARNING, ERROR or CRITICAL.",
                ),
                C("message", Kind.STRING, nullable=False),
                C("info", Kind.JSON),
            ),
            _rels(
                Rel("flow_run", "flow_run", "flow_run_id", "id", array=False),
                Rel("task_run", "task_run", "task_run_id", "id", array=False),
            ),
        ),
        Table(
            "agent",
            _source("agent"),
            "id",
            _cols(
                C("id", Kind.KEY, nullable=False, doc="The id the agent registered with."),
                _tenant_col(),
                C("name", Kind.STRING, nullable=False),
                C("type", Kind.STRING, nullable=False),
                C("labels", Kind.JSON, nullable=False),
                C("last_queried", Kind.TIMESTAMP, "last_seen", doc="When the agent was last seen."),
                C("created", Kind.TIMESTAMP, nullable=False),
                C("core_version", Kind.STRING, _const(None, sa.String), doc="Always null in flowbus."),
                C("agent_config_id", Kind.UUID, _const(None, sa.String), doc="Always null in flowbus."),
            ),
            _rels(Rel("flow_runs", "flow_run", "id", "agent_id", array=True, aggregate=True)),
        ),
        Table(
            "agent_config",
            _no_agent_configs,
            "id",
            _cols(C("id", Kind.UUID, nullable=False), C("name", Kind.STRING)),
            computed={"settings": Computed("settings", "jsonb!", (), lambda _row: {})},
            doc="flowbus has no agent configurations: always empty (Prefect agents ask only when given one).",
        ),
    ]
)

SDL_HEADER = """\
# Hasura-style queries (Prefect Server 1.x's read API), generated from
# flowbus_services/gateway/queries.py: python -m flowbus_services.gateway.queries
# Do not edit by hand; a unit test checks that this file is current.
"""


def render() -> str:
    return render_sdl(MODEL, SDL_HEADER)


# ---- batch loading -----------------------------------------------------------------------------------------------


class BatchLoader:
    """Collects the keys asked for while one level of a query completes, then answers them all with one fetch."""

    def __init__(self, fetch: Callable[[list[Any]], Awaitable[Mapping[Any, Any]]], default: Callable[[], Any]) -> None:
        self.fetch = fetch
        self.default = default
        self.pending: dict[Any, list[asyncio.Future[Any]]] = {}
        self.task: asyncio.Task[None] | None = None

    def load(self, key: Any) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending.setdefault(key, []).append(future)
        if self.task is None:
            self.task = asyncio.ensure_future(self._dispatch())
        return future

    async def _dispatch(self) -> None:
        for _ in range(BATCH_TURNS):
            await asyncio.sleep(0)
        batch, self.pending, self.task = self.pending, {}, None
        try:
            found = await self.fetch(list(batch))
        except Exception as exc:  # every waiting field fails with it (and gets its code)
            for futures in batch.values():
                for f in futures:
                    if not f.done():
                        f.set_exception(exc)
            return
        for key, futures in batch.items():
            for f in futures:
                if not f.done():
                    f.set_result(found[key] if key in found else self.default())


def _loader(
    info: Info,
    key: Hashable,
    fetch: Callable[[list[Any]], Awaitable[Mapping[Any, Any]]],
    default: Callable[[], Any],
) -> BatchLoader:
    loaders = request_context(info).loaders
    found = loaders.get(key)
    if found is None:
        found = loaders[key] = BatchLoader(fetch, default)
    assert isinstance(found, BatchLoader)
    return found


# ---- execution ---------------------------------------------------------------------------------------------------


@cache
def _compiler(dialect: str) -> Compiler:
    return Compiler(MODEL, dialect)


def compiler_for(info: Info) -> Compiler:
    return _compiler("sqlite" if request_context(info).gateway.db.sqlite else "postgresql")


def _max_page(info: Info) -> int:
    return request_context(info).gateway.settings.gateway.max_page_size


async def fetch(info: Info, stmt: Select[Any]) -> list[dict[str, Any]]:
    """The statement's rows as dicts, on a read-only connection; tagged ``flowbus_gateway`` for observers."""
    async with request_context(info).gateway.db.read_connection() as conn:
        result = await conn.execute(stmt.execution_options(flowbus_gateway="query"))
        return [dict(row) for row in result.mappings()]


def _chunks(keys: Sequence[Any]) -> list[Sequence[Any]]:
    return [keys[i : i + KEYS_PER_STATEMENT] for i in range(0, len(keys), KEYS_PER_STATEMENT)]


# ---- what a field selects ----------------------------------------------------------------------------------------


def _selected_names(info: Info) -> set[str]:
    names: set[str] = set()
    seen: set[str] = set()

    def walk(selections: SelectionSetNode | None) -> None:
        if selections is None:
            return
        for s in selections.selections:
            if isinstance(s, FieldNode):
                names.add(s.name.value)
            elif isinstance(s, InlineFragmentNode):
                walk(s.selection_set)
            elif isinstance(s, FragmentSpreadNode) and s.name.value not in seen:
                seen.add(s.name.value)
                fragment = info.fragments.get(s.name.value)
                if fragment is not None:
                    walk(fragment.selection_set)

    for node in info.field_nodes:
        walk(node.selection_set)
    return names


def columns_for(table: Table, names: set[str]) -> tuple[str, ...]:
    """The SQL columns that answer the selected fields (the key and relation keys included)."""
    needed = {table.pk}
    for name in names:
        if name in table.computed:
            needed.update(table.computed[name].needs)
        elif name in table.columns and not table.columns[name].hidden:
            needed.add(name)
        elif name in table.relations:
            needed.add(table.relations[name].local)
        elif name.endswith("_aggregate") and name.removesuffix("_aggregate") in table.relations:
            needed.add(table.relations[name.removesuffix("_aggregate")].local)
    return tuple(sorted(needed))


def _written_order(value: Any, node: ValueNode | None) -> Any:
    """``value`` (a coerced order_by) with each object's keys in the order the query text wrote them
    (coercion puts them in the schema's order; ``{name: asc, version: desc}`` means name first)."""
    if isinstance(node, ObjectValueNode) and isinstance(value, dict):
        written = [f.name.value for f in node.fields if f.name.value in value]
        nodes = {f.name.value: f.value for f in node.fields}
        ordered = {k: _written_order(value[k], nodes.get(k)) for k in written}
        ordered.update({k: v for k, v in value.items() if k not in ordered})
        return ordered
    if isinstance(value, list):
        if isinstance(node, ListValueNode):
            return [_written_order(v, n) for v, n in zip(value, node.values, strict=False)]
        if isinstance(node, ObjectValueNode) and len(value) == 1:
            return [_written_order(value[0], node)]
    return value


def _page(info: Info, args: dict[str, Any], *, capped: bool = True) -> Page:
    if "order_by" in args:
        written = info.field_nodes[0].arguments or ()
        node = next((a.value for a in written if a.name.value == "order_by"), None)
        args = {**args, "order_by": _written_order(args["order_by"], node)}
    return page(args, _max_page(info), capped=capped)


# ---- resolvers ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Aggregate:
    """What ``<t>_aggregate`` resolves to: the table, its arguments, and the parent (relation, key) if nested."""

    table: Table
    args: dict[str, Any]
    parent: tuple[Rel, Any] | None
    info: Info


def _root_list(table: Table) -> Callable[..., Awaitable[list[dict[str, Any]]]]:
    async def resolve(_obj: Any, info: Info, **args: Any) -> list[dict[str, Any]]:
        stmt = compiler_for(info).rows(table, _page(info, args), columns_for(table, _selected_names(info)))
        return await fetch(info, stmt)

    return resolve


def _root_by_pk(table: Table) -> Callable[..., Awaitable[dict[str, Any] | None]]:
    async def resolve(_obj: Any, info: Info, id: Any) -> dict[str, Any] | None:
        args = Page(where={table.pk: {"_eq": id}}, order_by=[], limit=1, offset=0, distinct_on=())
        rows = await fetch(info, compiler_for(info).rows(table, args, columns_for(table, _selected_names(info))))
        return rows[0] if rows else None

    return resolve


def _root_aggregate(table: Table) -> Callable[..., Aggregate]:
    def resolve(_obj: Any, info: Info, **args: Any) -> Aggregate:
        return Aggregate(table, args, None, info)

    return resolve


def _array(table: Table, rel: Rel) -> Callable[..., Any]:
    target = MODEL[rel.target]

    def resolve(row: Mapping[str, Any], info: Info, **args: Any) -> Any:
        key = row.get(rel.local)
        if key is None:
            return []
        return _per_field(info, rel, lambda: _array_loader(info, args)).load(key)

    def _array_loader(info: Info, args: dict[str, Any]) -> BatchLoader:
        return _rows_loader(info, target, rel, _page(info, args), columns_for(target, _selected_names(info)))

    return resolve


def _per_field(info: Info, rel: Rel, make: Callable[[], BatchLoader]) -> BatchLoader:
    """The loader of this field of the query: worked out for its first parent, reused for the others
    (the same field node has the same arguments and selections under every parent)."""
    loaders = request_context(info).loaders
    key = ("field", id(info.field_nodes[0]), id(rel))
    found = loaders.get(key)
    if found is None:
        found = loaders[key] = make()
    assert isinstance(found, BatchLoader)
    return found


def _rows_loader(info: Info, target: Table, rel: Rel, args: Page, columns: tuple[str, ...]) -> BatchLoader:
    async def load(keys: list[Any]) -> dict[Any, list[dict[str, Any]]]:
        found: dict[Any, list[dict[str, Any]]] = {}
        for chunk in _chunks(keys):
            stmt = compiler_for(info).rows(target, args, columns, parent=(rel.remote, chunk))
            for r in await fetch(info, stmt):
                found.setdefault(r.pop(KEY), []).append(r)
        return found

    return _loader(info, ("rows", target.name, rel.remote, args.cache_key(), columns), load, list)


def _object(table: Table, rel: Rel) -> Callable[..., Any]:
    target = MODEL[rel.target]
    everything = Page(where=None, order_by=[], limit=None, offset=0, distinct_on=())

    def resolve(row: Mapping[str, Any], info: Info) -> Any:
        key = row.get(rel.local)
        if key is None:
            return None
        return _per_field(info, rel, lambda: _object_loader(info)).load(key)

    def _object_loader(info: Info) -> BatchLoader:
        columns = columns_for(target, _selected_names(info))

        async def load(keys: list[Any]) -> dict[Any, dict[str, Any]]:
            found: dict[Any, dict[str, Any]] = {}
            for chunk in _chunks(keys):
                stmt = compiler_for(info).rows(target, everything, columns, parent=(rel.remote, chunk))
                for r in await fetch(info, stmt):
                    found.setdefault(r.pop(KEY), r)
            return found

        return _loader(info, ("object", target.name, rel.remote, columns), load, lambda: None)

    return resolve


def _nested_aggregate(table: Table, rel: Rel) -> Callable[..., Aggregate]:
    target = MODEL[rel.target]

    def resolve(row: Mapping[str, Any], info: Info, **args: Any) -> Aggregate:
        return Aggregate(target, args, (rel, row.get(rel.local)), info)

    return resolve


def _aggregate_fields(agg: Aggregate, _info: Info) -> Aggregate:
    return agg


def _aggregate_nodes(agg: Aggregate, info: Info) -> Any:
    args = _page(agg.info, agg.args)
    columns = columns_for(agg.table, _selected_names(info))
    if agg.parent is None:
        return fetch(info, compiler_for(info).rows(agg.table, args, columns))
    rel, key = agg.parent
    if key is None:
        return []
    return _rows_loader(info, agg.table, rel, args, columns).load(key)


def _aggregate_count(agg: Aggregate, info: Info, columns: list[str] | None = None, distinct: bool | None = None) -> Any:
    args = _page(agg.info, agg.args, capped=False)
    cols = tuple(columns or ())
    if agg.parent is None:

        async def count() -> int:
            rows = await fetch(info, compiler_for(info).count(agg.table, args, cols, bool(distinct)))
            return int(next(iter(rows[0].values())))

        return count()
    rel, key = agg.parent
    if key is None:
        return 0
    target = agg.table

    async def load(keys: list[Any]) -> dict[Any, int]:
        found: dict[Any, int] = {}
        for chunk in _chunks(keys):
            stmt = compiler_for(info).count(target, args, cols, bool(distinct), parent=(rel.remote, chunk))
            for r in await fetch(info, stmt):
                found[r[KEY]] = int(r["count"])
        return found

    cache_key = ("count", target.name, rel.remote, args.cache_key(), cols, bool(distinct))
    return _loader(info, cache_key, load, lambda: 0).load(key)


def _computed(comp: Computed) -> Callable[..., Any]:
    return lambda row, _info: comp.compute(row)


def _bindables() -> list[SchemaBindable]:
    query = QueryType()
    out: list[SchemaBindable] = [query]
    for table in MODEL.tables.values():
        query.set_field(table.name, _root_list(table))
        query.set_field(f"{table.name}_by_pk", _root_by_pk(table))
        query.set_field(f"{table.name}_aggregate", _root_aggregate(table))
        obj = ObjectType(table.name)
        for comp in table.computed.values():
            obj.set_field(comp.name, _computed(comp))
        for rel in table.relations.values():
            if rel.array:
                obj.set_field(rel.name, _array(table, rel))
                if rel.aggregate:
                    obj.set_field(f"{rel.name}_aggregate", _nested_aggregate(table, rel))
            else:
                obj.set_field(rel.name, _object(table, rel))
        aggregate = ObjectType(f"{table.name}_aggregate")
        aggregate.set_field("aggregate", _aggregate_fields)
        aggregate.set_field("nodes", _aggregate_nodes)
        fields = ObjectType(f"{table.name}_aggregate_fields")
        fields.set_field("count", _aggregate_count)
        out += [obj, aggregate, fields]
    return out


BINDABLES = _bindables()


if __name__ == "__main__":
    print(render(), end="")
