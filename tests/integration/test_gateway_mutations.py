"""The gateway's mutations over real HTTP: each with good input (its effect read back
through the flowbus client or the database) and with bad input (unknown ids, wrong
types, invalid values), which is refused with a stable code and changes nothing."""

from __future__ import annotations

import base64
import gzip
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from flowbus.client import AsyncClient
from flowbus.db.engine import Database
from flowbus.db.tables import RunHeartbeat
from flowbus.schemas.common import NotFound
from flowbus.schemas.flows import ClockSpec, FlowOut, ParameterSpec, ScheduleSpec
from flowbus.settings import Settings
from flowbus.states import StateType
from tests.helpers.builders import register, serialized_flow, unique
from tests.helpers.gateway import GraphQL
from tests.helpers.waiting import eventually

UNKNOWN = "00000000-0000-4000-8000-000000000000"


def operation(field: str, input_type: str, selection: str) -> str:
    return f"mutation($input: {input_type}!) {{ {field}(input: $input) {{ {selection} }} }}"


async def call(gql: GraphQL, field: str, input_type: str, value: Any, selection: str = "success") -> Any:
    """The field's payload of a mutation that must succeed."""
    return (await gql.data(operation(field, input_type, selection), {"input": value}))[field]


async def refused(gql: GraphQL, field: str, input_type: str, value: Any, selection: str = "success") -> list[str]:
    """The error codes of a mutation that must fail, and changed nothing: refused by
    its resolver (``data`` null for the field), or input that does not coerce to
    the schema's types (``data`` null: nothing ran)."""
    response = await gql.post(operation(field, input_type, selection), {"input": value})
    body = response.json()
    assert "errors" in body, body
    assert response.status_code == (200 if "data" in body else 400), (response.status_code, body)
    assert body.get("data") in (None, {field: None}), body
    return [e["extensions"]["code"] for e in body["errors"]]


def flow_json(name: str, **kwargs: Any) -> dict[str, Any]:
    """A serialized flow as a GraphQL client sends it: flowbus's own form, as JSON."""
    return serialized_flow(name, **kwargs).model_dump(mode="json")


async def project_id(client: AsyncClient) -> tuple[str, str]:
    project = await client.create_project(unique("p"))
    return project.id, project.name


async def a_flow(client: AsyncClient, **kwargs: Any) -> FlowOut:
    return await register(client, unique("p"), unique("flow"), **kwargs)


HOURLY = ScheduleSpec(clocks=[ClockSpec(type="interval", interval_seconds=3600)])


# ---- projects ------------------------------------------------------------------


async def test_create_project_and_its_uniqueness_violation(gql: GraphQL, client: AsyncClient) -> None:
    name = unique("proj")
    created = await call(
        gql, "create_project", "create_project_input", {"name": name, "description": "d", "tenant_id": UNKNOWN}, "id"
    )
    project = await client.get_project(project_id=created["id"])
    assert (project.name, project.description) == (name, "d")

    # The Prefect client matches this exact message to fall back to the existing project.
    body = await gql.execute(operation("create_project", "create_project_input", "id"), {"input": {"name": name}})
    assert body["errors"][0]["message"] == "Uniqueness violation."
    assert body["errors"][0]["extensions"]["code"] == "CONFLICT"

    assert await refused(gql, "create_project", "create_project_input", {"name": 5}, "id") == ["VALIDATION_ERROR"]
    assert await refused(gql, "create_project", "create_project_input", {"name": "  "}, "id") == ["VALIDATION_ERROR"]
    assert await refused(gql, "create_project", "create_project_input", {"description": "x"}, "id") == [
        "VALIDATION_ERROR"
    ]
    assert [p.name for p in await client.get_projects()] == [name]


async def test_rename_describe_and_delete_a_project(gql: GraphQL, client: AsyncClient) -> None:
    pid, _ = await project_id(client)
    _, taken = await project_id(client)
    new_name = unique("renamed")

    assert await call(gql, "set_project_name", "set_project_name_input", {"project_id": pid, "name": new_name}) == {
        "success": True
    }
    assert (await client.get_project(project_id=pid)).name == new_name
    body = await gql.execute(
        operation("set_project_name", "set_project_name_input", "success"),
        {"input": {"project_id": pid, "name": taken}},
    )
    assert (body["errors"][0]["message"], body["errors"][0]["extensions"]["code"]) == (
        "Uniqueness violation.",
        "CONFLICT",
    )
    assert (await client.get_project(project_id=pid)).name == new_name
    assert await refused(gql, "set_project_name", "set_project_name_input", {"project_id": UNKNOWN, "name": "x"}) == [
        "NOT_FOUND"
    ]
    assert await refused(gql, "set_project_name", "set_project_name_input", {"project_id": "nope", "name": "x"}) == [
        "VALIDATION_ERROR"
    ]

    describe = "set_project_description_input"
    await call(gql, "set_project_description", describe, {"project_id": pid, "description": "all the ETL"})
    assert (await client.get_project(project_id=pid)).description == "all the ETL"
    await call(gql, "set_project_description", describe, {"project_id": pid, "description": None})
    assert (await client.get_project(project_id=pid)).description is None
    assert await refused(gql, "set_project_description", describe, {"project_id": UNKNOWN, "description": "x"}) == [
        "NOT_FOUND"
    ]
    assert await refused(
        gql, "set_project_description", describe, {"project_id": pid, "description": "x" * 10_001}
    ) == ["VALIDATION_ERROR"]
    assert (await client.get_project(project_id=pid)).description is None

    assert await refused(gql, "delete_project", "delete_project_input", {"project_id": UNKNOWN}) == ["NOT_FOUND"]
    assert await refused(gql, "delete_project", "delete_project_input", {"project_id": 12}) == ["VALIDATION_ERROR"]
    assert await call(gql, "delete_project", "delete_project_input", {"project_id": pid}) == {"success": True}
    with pytest.raises(NotFound):
        await client.get_project(project_id=pid)


# ---- flows ---------------------------------------------------------------------


async def test_create_flow_registers_versions_in_groups(gql: GraphQL, client: AsyncClient) -> None:
    pid, project = await project_id(client)
    name = unique("flow")
    given = {
        "serialized_flow": flow_json(name, tasks=["a", "b"], schedule=HOURLY),
        "project_id": pid,
        "version_group_id": unique("group"),
        "description": "the nightly load",
        "idempotency_key": "k1",
        "set_schedule_active": False,
    }
    first = await call(gql, "create_flow", "create_flow_input", given, "id")
    flow = await client.get_flow(first["id"])
    assert (flow.name, flow.project_name, flow.version, flow.flow_group_id) == (
        name,
        project,
        1,
        given["version_group_id"],
    )
    assert flow.description == "the nightly load"
    assert [t.slug for t in flow.tasks] == ["a-1", "b-1"]
    assert flow.schedule is not None
    assert not flow.is_schedule_active

    # The same idempotency key: the same version, nothing new.
    assert (await call(gql, "create_flow", "create_flow_input", given, "id")) == first
    # Without a key: a new version of the same group; the old one is archived.
    second = await call(gql, "create_flow", "create_flow_input", {**given, "idempotency_key": None}, "id")
    assert (await client.get_flow(second["id"])).version == 2
    assert (await client.get_flow(first["id"])).archived
    # The schedule is on by default.
    third = await call(
        gql,
        "create_flow",
        "create_flow_input",
        {**given, "idempotency_key": None} | {"set_schedule_active": None},
        "id",
    )
    assert (await client.get_flow(third["id"])).is_schedule_active


async def test_create_flow_refusals_register_nothing(gql: GraphQL, client: AsyncClient) -> None:
    pid, project = await project_id(client)
    good = flow_json(unique("flow"))
    bad_inputs: list[tuple[dict[str, Any], str]] = [
        ({"serialized_flow": good, "project_id": UNKNOWN}, "NOT_FOUND"),
        ({"serialized_flow": good, "project_id": "not-a-uuid"}, "VALIDATION_ERROR"),
        ({"serialized_flow": [good], "project_id": pid}, "VALIDATION_ERROR"),
        ({"serialized_flow": "a flow", "project_id": pid}, "VALIDATION_ERROR"),
        ({"serialized_flow": {**good, "storage": None}, "project_id": pid}, "VALIDATION_ERROR"),
        ({"serialized_flow": {**good, "name": ""}, "project_id": pid}, "VALIDATION_ERROR"),
        ({"serialized_flow": {**good, "surprise": 1}, "project_id": pid}, "VALIDATION_ERROR"),
        ({"serialized_flow": good, "project_id": pid, "description": "x" * 10_001}, "VALIDATION_ERROR"),
        ({"serialized_flow": good, "project_id": pid, "set_schedule_active": "yes"}, "VALIDATION_ERROR"),
        ({"serialized_flow": good}, "VALIDATION_ERROR"),
    ]
    elsewhere = await a_flow(client)
    bad_inputs.append(
        ({"serialized_flow": good, "project_id": pid, "version_group_id": elsewhere.flow_group_id}, "CONFLICT")
    )
    for value, code in bad_inputs:
        assert await refused(gql, "create_flow", "create_flow_input", value, "id") == [code], value
    assert await client.get_flows(project_name=project) == []


async def test_create_flow_from_compressed_string(gql: GraphQL, client: AsyncClient) -> None:
    pid, project = await project_id(client)
    name = unique("flow")
    packed = base64.b64encode(gzip.compress(json.dumps(flow_json(name)).encode())).decode()
    input_type = "create_flow_from_compressed_string_input"
    created = await call(
        gql, "create_flow_from_compressed_string", input_type, {"serialized_flow": packed, "project_id": pid}, "id"
    )
    assert (await client.get_flow(created["id"])).name == name

    not_json = base64.b64encode(gzip.compress(b"{nope")).decode()
    not_a_flow = base64.b64encode(gzip.compress(b'{"name": "x"}')).decode()
    truncated = base64.b64encode(gzip.compress(json.dumps(flow_json(name)).encode())[:-10]).decode()
    # A few kilobytes that would inflate to 20 MB.
    bomb = base64.b64encode(gzip.compress(b'{"name": "' + b"x" * 20_000_000 + b'"}')).decode()
    not_base64 = ("%%% not base64", base64.b64encode(b"not gzip").decode())
    for packed_input in (*not_base64, not_json, not_a_flow, truncated, bomb):
        codes = await refused(
            gql, "create_flow_from_compressed_string", input_type, {"serialized_flow": packed_input, "project_id": pid}
        )
        assert codes == ["VALIDATION_ERROR"], packed_input
    body = await gql.execute(
        operation("create_flow_from_compressed_string", input_type, "id"),
        {"input": {"serialized_flow": bomb, "project_id": pid}},
    )
    assert "inflates to more than" in body["errors"][0]["message"]
    assert await refused(
        gql, "create_flow_from_compressed_string", input_type, {"serialized_flow": {"a": 1}, "project_id": pid}, "id"
    ) == ["VALIDATION_ERROR"]
    assert [f.id for f in await client.get_flows(project_name=project)] == [created["id"]]


async def test_archive_and_unarchive(gql: GraphQL, client: AsyncClient) -> None:
    flow = await a_flow(client)
    archived = await call(gql, "archive_flow", "archive_flow_input", {"flow_id": flow.id}, "id success error")
    assert archived == {"id": flow.id, "success": True, "error": None}
    assert (await client.get_flow(flow.id)).archived
    codes = await refused(gql, "create_flow_run", "create_flow_run_input", {"flow_id": flow.id}, "id")
    assert codes == ["ARCHIVED"]
    assert await client.get_flow_runs(flow_id=flow.id) == []

    assert await call(gql, "unarchive_flow", "unarchive_flow_input", {"flow_id": flow.id}) == {"success": True}
    assert not (await client.get_flow(flow.id)).archived

    for field in ("archive_flow", "unarchive_flow"):
        assert await refused(gql, field, f"{field}_input", {"flow_id": UNKNOWN}) == ["NOT_FOUND"]
        assert await refused(gql, field, f"{field}_input", {"flow_id": "x"}) == ["VALIDATION_ERROR"]
        assert await refused(gql, field, f"{field}_input", {}) == ["VALIDATION_ERROR"]
    assert not (await client.get_flow(flow.id)).archived


FLOW_SETTINGS = [
    ("disable_flow_heartbeat", "heartbeat_enabled", False),
    ("enable_flow_heartbeat", "heartbeat_enabled", True),
    ("disable_flow_lazarus_process", "lazarus_enabled", False),
    ("enable_flow_lazarus_process", "lazarus_enabled", True),
    ("enable_flow_version_locking", "version_locking_enabled", True),
    ("disable_flow_version_locking", "version_locking_enabled", False),
]


async def test_flow_settings(gql: GraphQL, client: AsyncClient) -> None:
    flow = await a_flow(client)
    for field, setting, value in FLOW_SETTINGS:
        # Start from the opposite of what the mutation sets, so that the change shows.
        await client.set_flow_settings(flow.id, **{setting: not value})
        assert await call(gql, field, f"{field}_input", {"flow_id": flow.id}) == {"success": True}
        assert getattr((await client.get_flow(flow.id)).settings, setting) is value, field

        await client.set_flow_settings(flow.id, **{setting: not value})
        assert await refused(gql, field, f"{field}_input", {"flow_id": UNKNOWN}) == ["NOT_FOUND"]
        assert await refused(gql, field, f"{field}_input", {"flow_id": ["x"]}) == ["VALIDATION_ERROR"]
        assert getattr((await client.get_flow(flow.id)).settings, setting) is (not value), field


async def test_schedule_active_and_inactive(gql: GraphQL, client: AsyncClient) -> None:
    flow = await a_flow(client, schedule=HOURLY, set_schedule_active=False)
    assert await call(gql, "set_schedule_active", "set_schedule_active_input", {"flow_id": flow.id}) == {
        "success": True
    }
    assert (await client.get_flow(flow.id)).is_schedule_active
    assert await call(gql, "set_schedule_inactive", "set_schedule_inactive_input", {"flow_id": flow.id}) == {
        "success": True
    }
    assert not (await client.get_flow(flow.id)).is_schedule_active

    # As Prefect Server: no schedule to turn on is an answer, not an error
    # (Prefect's flow.register() asks for every flow).
    unscheduled = await a_flow(client)
    assert await call(
        gql, "set_schedule_active", "set_schedule_active_input", {"flow_id": unscheduled.id}, "success error"
    ) == {"success": False, "error": f"Flow {unscheduled.id} has no schedule."}
    required = await a_flow(
        client, schedule=HOURLY, set_schedule_active=False, parameters=[ParameterSpec(name="x", required=True)]
    )
    answer = await call(gql, "set_schedule_active", "set_schedule_active_input", {"flow_id": required.id})
    assert answer == {"success": False}
    assert not (await client.get_flow(required.id)).is_schedule_active
    for field in ("set_schedule_active", "set_schedule_inactive"):
        assert await refused(gql, field, f"{field}_input", {"flow_id": UNKNOWN}) == ["NOT_FOUND"]
        assert await refused(gql, field, f"{field}_input", {"flow_id": True}) == ["VALIDATION_ERROR"]


# ---- flow groups ---------------------------------------------------------------


async def test_flow_group_labels_and_default_parameters(gql: GraphQL, client: AsyncClient) -> None:
    flow = await a_flow(client, labels=["own"], parameters=[ParameterSpec(name="x", default=1)])
    group = flow.flow_group_id
    labels_input = "set_flow_group_labels_input"
    await call(gql, "set_flow_group_labels", labels_input, {"flow_group_id": group, "labels": ["gpu", "eu"]})
    assert (await client.get_flow(flow.id)).labels == ["eu", "gpu"]
    run = await client.create_flow_run_out(flow.id)
    assert sorted(run.labels) == ["eu", "gpu"]
    await call(gql, "set_flow_group_labels", labels_input, {"flow_group_id": group, "labels": None})
    assert (await client.get_flow(flow.id)).labels == ["own"]
    assert await refused(gql, "set_flow_group_labels", labels_input, {"flow_group_id": UNKNOWN, "labels": []}) == [
        "NOT_FOUND"
    ]
    assert await refused(gql, "set_flow_group_labels", labels_input, {"flow_group_id": group, "labels": [""]}) == [
        "VALIDATION_ERROR"
    ]
    assert await refused(gql, "set_flow_group_labels", labels_input, {"flow_group_id": group, "labels": [1]}) == [
        "VALIDATION_ERROR"
    ]
    assert (await client.get_flow(flow.id)).labels == ["own"]

    params_input = "set_flow_group_default_parameters_input"
    field = "set_flow_group_default_parameters"
    await call(gql, field, params_input, {"flow_group_id": group, "parameters": {"x": 5}})
    assert (await client.get_flow(flow.id)).default_parameters == {"x": 5}
    assert (await client.create_flow_run_out(flow.id)).parameters == {"x": 5}
    for parameters in ([1], "x", 3):
        assert await refused(gql, field, params_input, {"flow_group_id": group, "parameters": parameters}) == [
            "VALIDATION_ERROR"
        ]
    assert await refused(gql, field, params_input, {"flow_group_id": UNKNOWN, "parameters": {}}) == ["NOT_FOUND"]
    assert (await client.get_flow(flow.id)).default_parameters == {"x": 5}


async def test_flow_group_schedule(gql: GraphQL, client: AsyncClient) -> None:
    flow = await a_flow(client, schedule=HOURLY)
    group = flow.flow_group_id
    field, input_type = "set_flow_group_schedule", "set_flow_group_schedule_input"
    schedule = {
        "flow_group_id": group,
        "cron_clocks": [{"cron": "0 6 * * *", "parameter_defaults": {}}],
        "interval_clocks": [{"interval": 600}],
        "timezone": "Europe/Paris",
    }
    assert await call(gql, field, input_type, schedule) == {"success": True}
    out = await client.get_schedule(flow.id)
    assert out.source == "group"
    assert [(c.type, c.cron, c.interval_seconds, c.timezone) for c in out.clocks] == [
        ("cron", "0 6 * * *", None, "Europe/Paris"),
        ("interval", None, 600, "Europe/Paris"),
    ]

    bad = [
        ({**schedule, "cron_clocks": [{"cron": "every day"}]}, "VALIDATION_ERROR"),
        ({**schedule, "interval_clocks": [{"interval": 0}]}, "VALIDATION_ERROR"),
        ({**schedule, "interval_clocks": [{"interval": "hourly"}]}, "VALIDATION_ERROR"),
        ({**schedule, "timezone": "Mars/Olympus"}, "VALIDATION_ERROR"),
        ({**schedule, "cron_clocks": [{"cron": "* * * * *", "parameter_defaults": [1]}]}, "VALIDATION_ERROR"),
        ({"flow_group_id": group, "cron_clocks": [], "interval_clocks": None}, "VALIDATION_ERROR"),
        ({**schedule, "flow_group_id": UNKNOWN}, "NOT_FOUND"),
    ]
    for value, code in bad:
        assert await refused(gql, field, input_type, value) == [code], value
    assert len((await client.get_schedule(flow.id)).clocks) == 2

    delete_input = "delete_flow_group_schedule_input"
    assert await call(gql, "delete_flow_group_schedule", delete_input, {"flow_group_id": group}) == {"success": True}
    assert (await client.get_schedule(flow.id)).source == "flow"
    assert await refused(gql, "delete_flow_group_schedule", delete_input, {"flow_group_id": UNKNOWN}) == ["NOT_FOUND"]


# ---- runs ----------------------------------------------------------------------


async def test_create_flow_run(gql: GraphQL, client: AsyncClient) -> None:
    flow = await a_flow(client, parameters=[ParameterSpec(name="a", default=1)])
    value = {
        "flow_id": flow.id,
        "parameters": {"a": 2},
        "context": {"why": "test"},
        "labels": ["l1"],
        "flow_run_name": "nightly",
        "scheduled_start_time": "2031-05-04T10:00:00",
        "idempotency_key": "once",
    }
    created = await call(gql, "create_flow_run", "create_flow_run_input", value, "id")
    run = (await client.get_flow_run(created["id"])).run
    assert (run.flow_id, run.name, run.parameters, run.context, run.labels) == (
        flow.id,
        "nightly",
        {"a": 2},
        {"why": "test"},
        ["l1"],
    )
    assert run.scheduled_start_time == datetime(2031, 5, 4, 10, tzinfo=UTC)  # naive means UTC
    assert (run.state.type, run.version) == (StateType.SCHEDULED, 1)
    assert await call(gql, "create_flow_run", "create_flow_run_input", value, "id") == created

    # By version group: the live version; a run config's labels; the start time defaults to now.
    by_group = await call(
        gql,
        "create_flow_run",
        "create_flow_run_input",
        {
            "version_group_id": flow.flow_group_id,
            # A Prefect run config: its type and its null fields carry nothing.
            "run_config": {"type": "LocalRun", "labels": ["rc"], "env": {}, "working_dir": None},
        },
        "id",
    )
    run = (await client.get_flow_run(by_group["id"])).run
    assert (run.flow_id, run.labels, run.parameters) == (flow.id, ["rc"], {"a": 1})
    assert abs(run.scheduled_start_time - datetime.now(UTC)) < timedelta(minutes=1)


async def test_create_flow_run_refusals_create_nothing(gql: GraphQL, client: AsyncClient) -> None:
    flow = await a_flow(client, parameters=[ParameterSpec(name="a", required=True)])
    bad: list[tuple[dict[str, Any], str]] = [
        ({"flow_id": UNKNOWN}, "NOT_FOUND"),
        ({"version_group_id": unique("nope")}, "NOT_FOUND"),
        ({}, "VALIDATION_ERROR"),
        ({"flow_id": flow.id, "version_group_id": flow.flow_group_id}, "VALIDATION_ERROR"),
        ({"flow_id": flow.id}, "VALIDATION_ERROR"),  # a required parameter is missing
        ({"flow_id": flow.id, "parameters": [2]}, "VALIDATION_ERROR"),
        ({"flow_id": flow.id, "parameters": {"a": 1}, "context": "c"}, "VALIDATION_ERROR"),
        ({"flow_id": flow.id, "parameters": {"a": 1}, "scheduled_start_time": "tomorrow"}, "VALIDATION_ERROR"),
        ({"flow_id": flow.id, "parameters": {"a": 1}, "labels": [3]}, "VALIDATION_ERROR"),
        ({"flow_id": flow.id, "parameters": {"a": 1}, "run_config": {"cpu": 2}}, "VALIDATION_ERROR"),
        ({"flow_id": flow.id, "parameters": {"a": 1}, "run_config": ["x"]}, "VALIDATION_ERROR"),
        ({"flow_id": flow.id, "parameters": {"a": 1}, "flow_run_name": ""}, "VALIDATION_ERROR"),
        ({"flow_id": 7}, "VALIDATION_ERROR"),
    ]
    for value, code in bad:
        assert await refused(gql, "create_flow_run", "create_flow_run_input", value, "id") == [code], value
    assert await client.get_flow_runs(flow_id=flow.id) == []


async def test_set_flow_run_states_with_versions(gql: GraphQL, client: AsyncClient) -> None:
    flow = await a_flow(client)
    run_id = await client.create_flow_run(flow.id)
    field, input_type = "set_flow_run_states", "set_flow_run_states_input"
    selection = "states { id status message }"

    # An agent names itself in a header, as Prefect's agents do: the run records who submitted it.
    submitted = {"flow_run_id": run_id, "version": 1, "state": {"type": "Submitted", "message": "by a test"}}
    response = await gql.http.post(
        gql.url,
        json={"query": operation(field, input_type, selection), "variables": {"input": {"states": [submitted]}}},
        headers={"X-PREFECT-AGENT-ID": "agent-7"},
    )
    assert response.json() == {"data": {field: {"states": [{"id": run_id, "status": "SUCCESS", "message": None}]}}}
    detail = (await client.get_flow_run(run_id)).run
    assert (detail.state.type, detail.state.message, detail.version) == (StateType.SUBMITTED, "by a test", 2)
    assert detail.agent_id == "agent-7"

    # A stale version: refused with the code the Prefect client turns into VersionLockMismatchSignal.
    stale = {"flow_run_id": run_id, "version": 1, "state": {"type": "Running"}}
    assert await refused(gql, field, input_type, {"states": [stale]}, selection) == ["VERSION_LOCKING_ERROR"]
    assert (await client.get_flow_run(run_id)).run.version == 2

    # No version: set at whatever version the run is at (Prefect's client sends none for most states).
    unversioned = {"flow_run_id": run_id, "version": None, "state": {"type": "Running"}}
    await call(gql, field, input_type, {"states": unversioned}, selection)  # a single object is a list of one
    assert (await client.get_flow_run(run_id)).run.state.type is StateType.RUNNING

    # One bad item refuses the whole batch before any state is set.
    good = {"flow_run_id": run_id, "version": 3, "state": {"type": "Success"}}
    for state in ({"type": "Exploded"}, "Success", {"type": "Success", "colour": "red"}, None):
        codes = await refused(gql, field, input_type, {"states": [good, {**good, "state": state}]}, selection)
        assert codes == ["VALIDATION_ERROR"], state
    assert await refused(gql, field, input_type, {"states": [{**good, "version": "three"}]}, selection) == [
        "VALIDATION_ERROR"
    ]
    assert await refused(gql, field, input_type, {"states": [{**good, "version": 0}]}, selection) == [
        "VALIDATION_ERROR"
    ]
    assert await refused(gql, field, input_type, {"states": [{**good, "flow_run_id": UNKNOWN}]}, selection) == [
        "NOT_FOUND"
    ]
    assert await refused(
        gql, field, input_type, {"states": [{**good, "flow_run_id": UNKNOWN, "version": None}]}, selection
    ) == ["NOT_FOUND"]
    detail = (await client.get_flow_run(run_id)).run
    assert (detail.state.type, detail.version) == (StateType.RUNNING, 3)

    singular = "set_flow_run_state"
    assert await call(gql, singular, "set_flow_run_state_input", good, "id status") == {
        "id": run_id,
        "status": "SUCCESS",
    }
    assert (await client.get_flow_run(run_id)).run.state.type is StateType.SUCCESS
    assert await refused(gql, singular, "set_flow_run_state_input", good, "id") == ["VERSION_LOCKING_ERROR"]


async def test_set_task_run_states_with_versions(gql: GraphQL, client: AsyncClient) -> None:
    flow = await a_flow(client, tasks=["a", "b"])
    run_id = await client.create_flow_run(flow.id)
    await client.set_flow_run_state(run_id, 1, {"type": "Running"})
    first, second = (await client.get_flow_run(run_id)).task_runs
    field, input_type = "set_task_run_states", "set_task_run_states_input"
    selection = "states { id status message }"

    items: list[dict[str, Any]] = [
        {"task_run_id": first.id, "version": 1, "state": {"type": "Running"}, "flow_run_version": 2},
        {"task_run_id": second.id, "version": None, "state": {"type": "Running"}},
    ]
    out = await call(gql, field, input_type, {"states": items}, selection)
    assert out == {"states": [{"id": t.id, "status": "SUCCESS", "message": None} for t in (first, second)]}
    task_runs = (await client.get_flow_run(run_id)).task_runs
    assert [(t.state.type, t.version) for t in task_runs] == [(StateType.RUNNING, 2)] * 2

    assert await refused(gql, field, input_type, {"states": [items[0]]}, selection) == ["VERSION_LOCKING_ERROR"]
    assert await refused(gql, field, input_type, {"states": [{**items[1], "task_run_id": UNKNOWN}]}, selection) == [
        "NOT_FOUND"
    ]
    assert await refused(
        gql, field, input_type, {"states": [{**items[0], "version": 2, "state": {"type": 3}}]}, selection
    ) == ["VALIDATION_ERROR"]
    assert [t.version for t in (await client.get_flow_run(run_id)).task_runs] == [2, 2]

    singular = {"task_run_id": first.id, "version": 2, "state": {"type": "Success", "message": "done"}}
    assert await call(gql, "set_task_run_state", "set_task_run_state_input", singular, "id status") == {
        "id": first.id,
        "status": "SUCCESS",
    }
    done = (await client.get_flow_run(run_id)).task_runs[0]
    assert (done.state.type, done.state.message, done.version) == (StateType.SUCCESS, "done", 3)


async def test_cancel_and_delete_flow_runs(gql: GraphQL, client: AsyncClient) -> None:
    flow = await a_flow(client)
    waiting_id = await client.create_flow_run(flow.id)
    running_id = await client.create_flow_run(flow.id)
    await client.set_flow_run_state(running_id, 1, {"type": "Running"})

    cancel = "cancel_flow_run_input"
    assert await call(gql, "cancel_flow_run", cancel, {"flow_run_id": waiting_id}, "state") == {"state": "Cancelled"}
    assert await call(gql, "cancel_flow_run", cancel, {"flow_run_id": running_id}, "state") == {"state": "Cancelling"}
    # A finished run stays as it is.
    assert await call(gql, "cancel_flow_run", cancel, {"flow_run_id": waiting_id}, "state") == {"state": "Cancelled"}
    assert (await client.get_flow_run(running_id)).run.state.type is StateType.CANCELLING
    assert await refused(gql, "cancel_flow_run", cancel, {"flow_run_id": UNKNOWN}, "state") == ["NOT_FOUND"]
    assert await refused(gql, "cancel_flow_run", cancel, {"flow_run_id": None}, "state") == ["VALIDATION_ERROR"]

    delete = "delete_flow_run_input"
    assert await call(gql, "delete_flow_run", delete, {"flow_run_id": waiting_id}) == {"success": True}
    with pytest.raises(NotFound):
        await client.get_flow_run(waiting_id)
    assert await refused(gql, "delete_flow_run", delete, {"flow_run_id": UNKNOWN}) == ["NOT_FOUND"]
    assert await refused(gql, "delete_flow_run", delete, {"flow_run_id": "x"}) == ["VALIDATION_ERROR"]
    assert [r.id for r in await client.get_flow_runs(flow_id=flow.id)] == [running_id]


# ---- what runners send ------------------------------------------------------------


async def test_write_run_logs(gql: GraphQL, client: AsyncClient) -> None:
    flow = await a_flow(client)
    run_id = await client.create_flow_run(flow.id)
    task_run = (await client.get_flow_run(run_id)).task_runs[0]
    field, input_type = "write_run_logs", "write_run_logs_input"
    before = datetime.now(UTC)
    logs = [
        {
            "flow_run_id": run_id,
            "task_run_id": task_run.id,
            "timestamp": "2031-01-01T00:00:00+00:00",
            "name": "prefect.TaskRunner",
            "level": "WARNING",
            "message": "first",
            "info": {"lineno": 3},
        },
        {"flow_run_id": run_id, "message": "second"},
    ]
    assert await call(gql, field, input_type, {"logs": logs}) == {"success": True}
    # A single object where the list is expected (the Prefect runner sends one).
    query = 'mutation { write_run_logs(input: { logs: { flow_run_id: "%s", level: ERROR, message: "third" } }) '
    assert await gql.data(query % run_id + "{ success } }") == {"write_run_logs": {"success": True}}

    records = await client.get_flow_run_logs(run_id)
    # In time order: "first" carries a timestamp in 2031.
    assert [(r.message, r.level, r.name, r.task_run_id) for r in records] == [
        ("second", "INFO", "", None),
        ("third", "ERROR", "", None),
        ("first", "WARNING", "prefect.TaskRunner", task_run.id),
    ]
    by_message = {r.message: r for r in records}
    assert by_message["first"].timestamp == datetime(2031, 1, 1, tzinfo=UTC)
    assert by_message["first"].info == {"lineno": 3}
    assert by_message["second"].timestamp >= before

    bad: list[tuple[Any, str]] = [
        ([{"flow_run_id": UNKNOWN, "message": "lost"}], "NOT_FOUND"),
        ([{"flow_run_id": run_id, "message": "x"}, {"flow_run_id": UNKNOWN, "message": "x"}], "NOT_FOUND"),
        ([{"flow_run_id": run_id, "level": "LOUD", "message": "x"}], "VALIDATION_ERROR"),
        ([{"flow_run_id": run_id, "info": [1], "message": "x"}], "VALIDATION_ERROR"),
        ([{"flow_run_id": run_id, "timestamp": "yesterday", "message": "x"}], "VALIDATION_ERROR"),
        ([{"message": "x"}], "VALIDATION_ERROR"),
    ]
    for value, code in bad:
        assert await refused(gql, field, input_type, {"logs": value}) == [code], value
    assert len(await client.get_flow_run_logs(run_id)) == 3


async def test_update_flow_run_heartbeat(gql: GraphQL, client: AsyncClient, stack: Settings) -> None:
    flow = await a_flow(client)
    run_id = await client.create_flow_run(flow.id)
    input_type = "update_flow_run_heartbeat_input"
    assert await call(gql, "update_flow_run_heartbeat", input_type, {"flow_run_id": run_id}) == {"success": True}

    db = Database(stack.resolved_database_url())
    try:

        async def beats() -> list[str]:
            async with db.read_session() as session:
                return list((await session.execute(select(RunHeartbeat.flow_run_id))).scalars())  # type: ignore[call-overload]

        assert await eventually(beats, "the heartbeat recorded") == [run_id]
        assert await refused(gql, "update_flow_run_heartbeat", input_type, {"flow_run_id": UNKNOWN}) == ["NOT_FOUND"]
        assert await refused(gql, "update_flow_run_heartbeat", input_type, {"flow_run_id": 1}) == ["VALIDATION_ERROR"]
        assert await beats() == [run_id]
    finally:
        await db.dispose()


async def test_register_agent(gql: GraphQL, client: AsyncClient) -> None:
    field, input_type = "register_agent", "register_agent_input"
    value = {
        "type": "LocalAgent",
        "name": "laptop",
        "labels": ["b", "a"],
        "tenant_id": UNKNOWN,
        "agent_config_id": None,
    }
    created = await call(gql, field, input_type, value, "id")
    agents = {a.id: a for a in (await client.get_agents()).agents}
    assert (agents[created["id"]].name, agents[created["id"]].type, agents[created["id"]].labels) == (
        "laptop",
        "LocalAgent",
        ["a", "b"],
    )
    # Without a name the agent is called after its type; each registration is a new agent.
    unnamed = await call(gql, field, input_type, {"type": "LocalAgent"}, "id")
    assert unnamed != created
    assert {a.id: a.name for a in (await client.get_agents()).agents}[unnamed["id"]] == "LocalAgent"

    bad: list[dict[str, Any]] = [
        {"name": "no type"},
        {"type": ""},
        {"type": "LocalAgent", "labels": [""]},
        {"type": "LocalAgent", "labels": [f"l{i}" for i in range(65)]},
        {"type": "LocalAgent", "labels": [["gpu"]]},
        {"type": "LocalAgent", "agent_config_id": "not-a-uuid"},
    ]
    for bad_value in bad:
        assert await refused(gql, field, input_type, bad_value, "id") == ["VALIDATION_ERROR"], bad_value
    assert len((await client.get_agents()).agents) == 2
