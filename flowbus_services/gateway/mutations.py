"""The write side of the GraphQL API: Prefect Server 1.x's mutations (and the
camelCase names of the Prefect Cloud documentation), each sent as a command
to the service that owns what it changes.

Inputs are checked here (``convert``) before anything is sent, so a refused
input changes nothing; a service's refusal (a ``FlowbusError``) keeps its
code. The gateway reads the database only to name what a command needs
(a task run's flow run, whether runs exist) and never writes it.

Writes: ``flowbus.cmd.registration.*`` (projects, flows and their tasks,
flow groups), ``flowbus.cmd.run_creation.create_flow_run``,
``flowbus.cmd.state.*`` (states, cancel, delete, mapped task runs),
``flowbus.cmd.heartbeat.register_agent``, log batches on
``flowbus.logs.<flow_run_id>``, heartbeats on ``flowbus.hb.flow_run.<id>``
and, for polling Prefect agents, ``flowbus.hb.agent.<id>``. Reads: the
replies; the database for the runs due for Prefect agents
(``get_runs_in_queue``).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Final

from ariadne import MutationType
from sqlalchemy import select

from flowbus import subjects
from flowbus.client import AsyncClient, build
from flowbus.db.tables import Flow, FlowRun
from flowbus.schemas.common import Conflict, NotFound, ValidationFailed, VersionLockingError
from flowbus.schemas.flows import SerializedFlow
from flowbus.schemas.runs import LogRecord, StateSpec
from flowbus.states import StateType
from flowbus_services.gateway.context import Info, request_context
from flowbus_services.gateway.convert import (
    decompress_flow,
    edges_from_input,
    json_object,
    run_config_from_input,
    schedule_from_clocks,
    serialized_flow_from_input,
    state_from_input,
    tasks_from_input,
    with_description,
)
from flowbus_services.gateway.errors import Code, refusal
from flowbus_services.gateway.prefect1 import serialized_state
from flowbus_services.gateway.queries import run_state_start_time

mutation = MutationType()

Resolver = Callable[..., Awaitable[dict[str, Any]]]
SUCCESS: Final = {"success": True, "error": None}
# What the Prefect client matches on a duplicate project name (its create_project falls back then).
UNIQUENESS_VIOLATION: Final = "Uniqueness violation."
AGENT_ID_HEADER: Final = "x-prefect-agent-id"
PREFECT_VERSION_HEADER: Final = "x-prefect-core-version"
# What a Prefect agent matches ("State update failed") to leave a run another agent claimed.
SUBMITTED_ALREADY: Final = "State update failed: this run has already been submitted."
# Prefect Server's cap on the runs one poll of get_runs_in_queue returns.
QUEUED_RUNS_RETURNED: Final = 25
# Due runs read per page while looking for ones an agent's labels allow, and
# the pages read per poll: a poll's cost stays bounded however many runs wait
# for other agents.
QUEUE_PAGE: Final = 200
QUEUE_PAGES: Final = 10
# Prefect's states that wait for an agent (its "scheduled" states).
_WAITING_STATES: Final = tuple(
    t.value for t in (StateType.SCHEDULED, StateType.QUEUED, StateType.RESUME, StateType.RETRYING)
)

_flow_run = FlowRun.__table__  # type: ignore[attr-defined]
_flow = Flow.__table__  # type: ignore[attr-defined]
# Agent ids derived from what registers them (see resolve_register_agent).
AGENT_NAMESPACE: Final = uuid.UUID("9b0c6f4e-3f1d-4c55-8a7e-2d6f0b1c4e9a")


def _client(info: Info) -> AsyncClient:
    return request_context(info).gateway.client


def _field(name: str) -> Callable[[Resolver], Resolver]:
    """Bind a resolver of ``input`` to the Mutation field ``name``."""

    def bind(resolver: Resolver) -> Resolver:
        mutation.set_field(name, resolver)
        return resolver

    return bind


# ---- projects ---------------------------------------------------------------


@_field("create_project")
async def resolve_create_project(_: Any, info: Info, input: dict[str, Any]) -> dict[str, Any]:
    try:
        out = await _client(info).create_project(input["name"], input.get("description"))
    except Conflict:
        raise refusal(UNIQUENESS_VIOLATION, Code.CONFLICT) from None
    return {"id": out.id}


@_field("set_project_name")
async def resolve_set_project_name(_: Any, info: Info, input: dict[str, Any]) -> dict[str, Any]:
    try:
        await _client(info).rename_project(None, input["name"], project_id=input["project_id"])
    except Conflict:
        raise refusal(UNIQUENESS_VIOLATION, Code.CONFLICT) from None
    return SUCCESS


@_field("set_project_description")
async def resolve_set_project_description(_: Any, info: Info, input: dict[str, Any]) -> dict[str, Any]:
    await _client(info).set_project_description(None, input.get("description"), project_id=input["project_id"])
    return SUCCESS


@_field("delete_project")
async def resolve_delete_project(_: Any, info: Info, input: dict[str, Any]) -> dict[str, Any]:
    await _client(info).delete_project(None, project_id=input["project_id"])
    return SUCCESS


# ---- flows ------------------------------------------------------------------


async def _create_flow(
    info: Info,
    flow: SerializedFlow,
    *,
    project_id: str,
    version_group_id: str | None,
    set_schedule_active: bool | None,
    description: str | None,
    idempotency_key: str | None,
) -> dict[str, Any]:
    client = _client(info)
    if description is not None:
        flow = with_description(flow, description)
    project = await client.get_project(project_id=project_id)
    out = await client.register(
        flow,
        project.name,
        version_group_id=version_group_id,
        idempotency_key=idempotency_key,
        set_schedule_active=True if set_schedule_active is None else set_schedule_active,
    )
    return {"id": out.id}


@_field("create_flow")
async def resolve_create_flow(_: Any, info: Info, input: dict[str, Any]) -> dict[str, Any]:
    return await _create_flow_from_input(info, input, serialized_flow_from_input(input["serialized_flow"]))


@_field("create_flow_from_compressed_string")
async def resolve_create_flow_compressed(_: Any, info: Info, input: dict[str, Any]) -> dict[str, Any]:
    max_depth = request_context(info).gateway.settings.nats.max_json_depth
    flow = serialized_flow_from_input(decompress_flow(input["serialized_flow"], max_depth))
    return await _create_flow_from_input(info, input, flow)


async def _create_flow_from_input(info: Info, input: dict[str, Any], flow: SerializedFlow) -> dict[str, Any]:
    """Prefect Server's two create-flow inputs: the same fields, the flow given two ways."""
    return await _create_flow(
        info,
        flow,
        project_id=input["project_id"],
        version_group_id=input.get("version_group_id"),
        set_schedule_active=input.get("set_schedule_active"),
        description=input.get("description"),
        idempotency_key=input.get("idempotency_key"),
    )


@_field("set_flow_run_name")
async def resolve_set_flow_run_name(_: Any, info: Info, input: dict[str, Any]) -> dict[str, Any]:
    await _client(info).set_flow_run_name(input["flow_run_id"], input["name"])
    return SUCCESS


@_field("set_task_run_name")
async def resolve_set_task_run_name(_: Any, info: Info, input: dict[str, Any]) -> dict[str, Any]:
    await _client(info).set_task_run_name(input["task_run_id"], input["name"])
    return SUCCESS


@_field("register_tasks")
async def resolve_register_tasks(_: Any, info: Info, input: dict[str, Any]) -> dict[str, Any]:
    await _client(info).add_flow_tasks(input["flow_id"], tasks=tasks_from_input(input["serialized_tasks"]))
    return SUCCESS


@_field("register_edges")
async def resolve_register_edges(_: Any, info: Info, input: dict[str, Any]) -> dict[str, Any]:
    await _client(info).add_flow_tasks(input["flow_id"], edges=edges_from_input(input["serialized_edges"]))
    return SUCCESS


@_field("createFlow")
async def resolve_create_flow_camel(_: Any, info: Info, input: dict[str, Any]) -> dict[str, Any]:
    return await _create_flow(
        info,
        serialized_flow_from_input(input["serializedFlow"]),
        project_id=input["projectId"],
        version_group_id=input.get("versionGroupId"),
        set_schedule_active=input.get("setScheduleActive"),
        description=input.get("description"),
        idempotency_key=input.get("idempotencyKey"),
    )


def _archiving(archived: bool, flow_id_field: str) -> Resolver:
    async def resolve(_: Any, info: Info, input: dict[str, Any]) -> dict[str, Any]:
        client = _client(info)
        flow_id = input[flow_id_field]
        out = await (client.archive_flow(flow_id) if archived else client.unarchive_flow(flow_id))
        return {"id": out.id, **SUCCESS}

    return resolve


for _name, _archived, _id_field in (
    ("archive_flow", True, "flow_id"),
    ("unarchive_flow", False, "flow_id"),
    ("archiveFlow", True, "flowId"),
    ("unarchiveFlow", False, "flowId"),
):
    mutation.set_field(_name, _archiving(_archived, _id_field))


def _flow_setting(setting: str, value: bool) -> Resolver:
    """A snake_case toggle of one flow-group setting: ``setting`` becomes ``value``."""

    async def resolve(_: Any, info: Info, input: dict[str, Any]) -> dict[str, Any]:
        await _client(info).set_flow_settings(input["flow_id"], **{setting: value})
        return SUCCESS

    return resolve


def _flow_setting_by_value(setting: str, *, enables: bool) -> Resolver:
    """A camelCase toggle: ``value: true`` enables the setting when ``enables``, disables it otherwise."""

    async def resolve(_: Any, info: Info, input: dict[str, Any]) -> dict[str, Any]:
        value = input.get("value")
        if value is None:
            raise refusal("value must be true or false.", Code.VALIDATION_ERROR)
        await _client(info).set_flow_settings(input["flowId"], **{setting: value if enables else not value})
        return SUCCESS

    return resolve


for _name, _setting, _value in (
    ("disable_flow_heartbeat", "heartbeat_enabled", False),
    ("enable_flow_heartbeat", "heartbeat_enabled", True),
    ("disable_flow_lazarus_process", "lazarus_enabled", False),
    ("enable_flow_lazarus_process", "lazarus_enabled", True),
    ("enable_flow_version_locking", "version_locking_enabled", True),
    ("disable_flow_version_locking", "version_locking_enabled", False),
):
    mutation.set_field(_name, _flow_setting(_setting, _value))

mutation.set_field("disableFlowHeartbeat", _flow_setting_by_value("heartbeat_enabled", enables=False))
mutation.set_field("disableLazarusForFlow", _flow_setting_by_value("lazarus_enabled", enables=False))
mutation.set_field("enableFlowVersionLocking", _flow_setting_by_value("version_locking_enabled", enables=True))


def _schedule_state(active: bool) -> Resolver:
    async def resolve(_: Any, info: Info, input: dict[str, Any]) -> dict[str, Any]:
        try:
            await _client(info).set_flow_schedule_state(input["flow_id"], active)
        except ValidationFailed as refused:
            # As Prefect Server: a flow with no schedule (or one no clock can
            # run) is no error but an answer (Prefect's flow.register() asks
            # for every flow and reads nothing back).
            return {"success": False, "error": refused.message}
        return SUCCESS

    return resolve


mutation.set_field("set_schedule_active", _schedule_state(True))
mutation.set_field("set_schedule_inactive", _schedule_state(False))


@_field("setFlowScheduleState")
async def resolve_set_flow_schedule_state(_: Any, info: Info, input: dict[str, Any]) -> dict[str, Any]:
    await _client(info).set_flow_schedule_state(input["flowId"], input["setActive"])
    return SUCCESS


# ---- flow groups --------------------------------------------------------------


@_field("set_flow_group_labels")
async def resolve_set_flow_group_labels(_: Any, info: Info, input: dict[str, Any]) -> dict[str, Any]:
    await _client(info).set_flow_group_labels(input["flow_group_id"], input.get("labels"))
    return SUCCESS


@_field("set_flow_group_default_parameters")
async def resolve_set_flow_group_default_parameters(
    _: Any,
    info: Info,
    input: dict[str, Any],
) -> dict[str, Any]:
    parameters = json_object(input["parameters"], "parameters")
    await _client(info).set_flow_group_default_parameters(input["flow_group_id"], parameters)
    return SUCCESS


@_field("set_flow_group_schedule")
async def resolve_set_flow_group_schedule(_: Any, info: Info, input: dict[str, Any]) -> dict[str, Any]:
    schedule = schedule_from_clocks(input.get("cron_clocks"), input.get("interval_clocks"), input.get("timezone"))
    await _client(info).set_flow_group_schedule(input["flow_group_id"], schedule)
    return SUCCESS


@_field("delete_flow_group_schedule")
async def resolve_delete_flow_group_schedule(_: Any, info: Info, input: dict[str, Any]) -> dict[str, Any]:
    await _client(info).set_flow_group_schedule(input["flow_group_id"], None)
    return SUCCESS


# ---- runs ---------------------------------------------------------------------


@_field("create_flow_run")
async def resolve_create_flow_run(_: Any, info: Info, input: dict[str, Any]) -> dict[str, Any]:
    run_id = await _client(info).create_flow_run(
        input.get("flow_id"),
        version_group_id=input.get("version_group_id"),
        parameters=json_object(input.get("parameters"), "parameters"),
        context=json_object(input.get("context"), "context"),
        labels=input.get("labels"),
        run_name=input.get("flow_run_name"),
        scheduled_start_time=input.get("scheduled_start_time"),
        idempotency_key=input.get("idempotency_key"),
        run_config=run_config_from_input(input.get("run_config")),
    )
    return {"id": run_id}


def _agent_id(info: Info) -> str | None:
    """The agent a state comes from: Prefect's agents name themselves in a header
    (the run records who submitted it)."""
    return request_context(info).headers.get(AGENT_ID_HEADER) or None


def _from_prefect(info: Info) -> bool:
    """A request of the Prefect 1.x client: it names its version in a header on every request."""
    return bool(request_context(info).headers.get(PREFECT_VERSION_HEADER))


async def _set_flow_run_state(info: Info, flow_run_id: str, version: int | None, state: StateSpec) -> str:
    """Set one flow run state: at ``version``, or (None) at the run's current version."""
    client, agent_id = _client(info), _agent_id(info)
    try:
        return (await client.set_flow_run_state(flow_run_id, version, state.model_dump(), agent_id=agent_id)).id
    except VersionLockingError:
        if state.type is StateType.SUBMITTED and _from_prefect(info):
            # A Prefect agent lost the claim to another: the text it matches to
            # leave the run alone (any other error makes it fail the run).
            raise Conflict(SUBMITTED_ALREADY) from None
        raise


async def _set_task_run_state(info: Info, task_run_id: str, version: int | None, state: StateSpec) -> str:
    return (await _client(info).set_task_run_state(task_run_id, version, state.model_dump())).id


def _state_result(run_id: str) -> dict[str, Any]:
    return {"id": run_id, "status": "SUCCESS", "message": None}


def _states(items: Iterable[Mapping[str, Any]], id_field: str) -> list[tuple[str, int | None, StateSpec]]:
    """Every item's run id, version and state, all checked before any is set."""
    return [(item[id_field], item.get("version"), state_from_input(item["state"])) for item in items]


@_field("set_flow_run_states")
async def resolve_set_flow_run_states(_: Any, info: Info, input: dict[str, Any]) -> dict[str, Any]:
    # One after another, in the order given: a refusal stops the batch there
    # (the states before it are set) and is the mutation's error.
    results = []
    for run_id, version, state in _states(input["states"], "flow_run_id"):
        results.append(_state_result(await _set_flow_run_state(info, run_id, version, state)))
    return {"states": results}


@_field("set_task_run_states")
async def resolve_set_task_run_states(_: Any, info: Info, input: dict[str, Any]) -> dict[str, Any]:
    results = []
    for run_id, version, state in _states(input["states"], "task_run_id"):
        results.append(_state_result(await _set_task_run_state(info, run_id, version, state)))
    return {"states": results}


@_field("set_flow_run_state")
async def resolve_set_flow_run_state(_: Any, info: Info, input: dict[str, Any]) -> dict[str, Any]:
    state = state_from_input(input["state"])
    return _state_result(await _set_flow_run_state(info, input["flow_run_id"], input.get("version"), state))


@_field("set_task_run_state")
async def resolve_set_task_run_state(_: Any, info: Info, input: dict[str, Any]) -> dict[str, Any]:
    state = state_from_input(input["state"])
    return _state_result(await _set_task_run_state(info, input["task_run_id"], input.get("version"), state))


@_field("cancel_flow_run")
async def resolve_cancel_flow_run(_: Any, info: Info, input: dict[str, Any]) -> dict[str, Any]:
    out = await _client(info).cancel_flow_run(input["flow_run_id"])
    return {"state": out.state.type.value}


@_field("delete_flow_run")
async def resolve_delete_flow_run(_: Any, info: Info, input: dict[str, Any]) -> dict[str, Any]:
    await _client(info).delete_flow_run(input["flow_run_id"])
    return SUCCESS


async def _require_flow_runs(info: Info, flow_run_ids: set[str]) -> None:
    """NOT_FOUND unless every run exists: logs and heartbeats are published, not
    answered, so an unknown run is caught here rather than dropped unseen."""
    async with request_context(info).gateway.db.read_connection() as conn:
        found = set(
            (await conn.execute(select(_flow_run.c.id).where(_flow_run.c.id.in_(sorted(flow_run_ids))))).scalars()
        )
    missing = sorted(flow_run_ids - found)
    if missing:
        raise NotFound(f"Flow run {missing[0]} not found")


@_field("write_run_logs")
async def resolve_write_run_logs(_: Any, info: Info, input: dict[str, Any]) -> dict[str, Any]:
    now = datetime.now(UTC)
    records = [
        build(
            LogRecord,
            flow_run_id=item["flow_run_id"],
            task_run_id=item.get("task_run_id"),
            timestamp=item.get("timestamp") or now,
            name=item.get("name") or "",
            level=item.get("level") or "INFO",
            message=item.get("message") or "",
            info=None if item.get("info") is None else json_object(item["info"], "info"),
        )
        for item in input["logs"]
    ]
    if records:
        await _require_flow_runs(info, {r.flow_run_id for r in records})
        await _client(info).write_logs(records)
    return SUCCESS


@_field("update_flow_run_heartbeat")
async def resolve_update_flow_run_heartbeat(_: Any, info: Info, input: dict[str, Any]) -> dict[str, Any]:
    await _require_flow_runs(info, {input["flow_run_id"]})
    await _client(info).send_flow_run_heartbeat(input["flow_run_id"])
    return SUCCESS


@_field("register_agent")
async def resolve_register_agent(_: Any, info: Info, input: dict[str, Any]) -> dict[str, Any]:
    name, agent_type, labels = input.get("name") or input["type"], input["type"], sorted(set(input.get("labels") or []))
    # As Prefect Server: an agent that registers again (a restart) keeps its id.
    agent_id = str(uuid.uuid5(AGENT_NAMESPACE, json.dumps([agent_type, name, labels])))
    out = await _client(info).register_agent(name, agent_type=agent_type, labels=labels, agent_id=agent_id)
    return {"id": out.id}


@_field("get_runs_in_queue")
async def resolve_get_runs_in_queue(_: Any, info: Info, input: dict[str, Any]) -> dict[str, Any]:
    before = input.get("before") or datetime.now(UTC)
    labels = input.get("labels") or []
    agent_id = _agent_id(info)
    if agent_id:
        await _client(info).send_agent_heartbeat(agent_id)
    ids: list[str] = []
    async with request_context(info).gateway.db.read_connection() as conn:
        for page in range(QUEUE_PAGES):
            rows = (await conn.execute(_due_prefect_runs(before, page))).all()
            ids.extend(row.id for row in rows if subjects.agent_can_take(labels, row.labels or []))
            if len(ids) >= QUEUED_RUNS_RETURNED or len(rows) < QUEUE_PAGE:
                break
    return {"flow_run_ids": ids[:QUEUED_RUNS_RETURNED]}


def _due_prefect_runs(before: datetime, page: int) -> Any:
    """A page of the runs of Prefect flows waiting for an agent, due by ``before``, oldest first.

    Only Prefect flows' runs: a Prefect agent cannot load flowbus's storage."""
    fr, fl = _flow_run, _flow
    start = run_state_start_time(fr)
    return (
        select(fr.c.id, fr.c.labels)
        .join(fl, fl.c.id == fr.c.flow_id)
        .where(
            fr.c.state.in_(_WAITING_STATES),
            start <= before,
            fl.c.storage["type"].as_string() == "prefect",
        )
        .order_by(start, fr.c.id)
        .limit(QUEUE_PAGE)
        .offset(page * QUEUE_PAGE)
    )


@_field("get_or_create_task_run_info")
async def resolve_get_or_create_task_run_info(_: Any, info: Info, input: dict[str, Any]) -> dict[str, Any]:
    map_index = input.get("map_index")
    found = await _client(info).ensure_task_run(
        input["flow_run_id"], input["task_id"], -1 if map_index is None else map_index
    )
    task_run, state = found.task_run, found.task_run.state
    return {
        "id": task_run.id,
        "version": task_run.version,
        "state": state.type.value,
        "serialized_state": serialized_state(state.type.value, state.message, None, found.serialized_state),
    }


BINDABLES = [mutation]
