"""The GraphQL documents of the seed documentation pages, run as written there.

Each document below is the page's text, placeholders included; only the
placeholders (``"<flow id>"``, ``"your-flow-id-here"``, ``<version>``, ...)
are filled in before it is sent, and each effect is read back through the
flowbus client.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flowbus.client import AsyncClient
from flowbus.schemas.flows import ClockSpec, ParameterSpec, ScheduleSpec
from flowbus.states import StateType
from tests.helpers.builders import register, serialized_flow, unique
from tests.helpers.gateway import GraphQL

# ---- flows (the Flows page, both forms) -------------------------------------------

CREATE_FLOW = """
mutation($flow: JSON!) {
  createFlow(input: { serializedFlow: $flow, projectId: "<project id>" }) {
    id
  }
}
"""

ARCHIVE_FLOW = """
mutation {
  archiveFlow(input: { flowId: "your-flow-id-here" }) {
    id
  }
}
"""

UNARCHIVE_FLOW = """
mutation {
  unarchiveFlow(input: { flowId: "your-flow-id-here" }) {
    id
  }
}
"""

DISABLE_HEARTBEAT = """
mutation {
  disableFlowHeartbeat(input: { flowId: "your-flow-id-here", value: true }) {
    success
  }
}
"""

DISABLE_LAZARUS = """
mutation {
  disableLazarusForFlow(input: { flowId: "your-flow-id-here", value: true }) {
    success
  }
}
"""

ENABLE_VERSION_LOCKING = """
mutation {
  enableFlowVersionLocking(
    input: { flowId: "your-flow-id-here", value: true }
  ) {
    success
  }
}
"""

SET_SCHEDULE_STATE = """
mutation {
  setFlowScheduleState(input: { flowId: "<flow id>", setActive: true }) {
    success
  }
}
"""

# ---- flow runs (the Flow Runs page) ---------------------------------------------------

CREATE_FLOW_RUN = """
mutation {
  create_flow_run(input: { flow_id: "<flow id>" }) {
    id
  }
}
"""

# Spelled line by line: the page's lines end in spaces, which the linter would strip.
CREATE_FLOW_RUN_WITH_PARAMETERS = (
    "\nmutation {\n"
    "  create_flow_run(input: { \n"
    '  flow_id: "<flow id>", \n'
    '  parameters: "{\\"a\\":2}" \n'
    "  }) {\n"
    "    id\n"
    "  }\n"
    "}\n"
)

CREATE_FLOW_RUN_IDEMPOTENT = """
mutation {
  create_flow_run(input: { flow_id: "<flow id>", idempotency_key: "any-key" }) {
    id
  }
}
"""

CREATE_FLOW_RUN_SCHEDULED = """
mutation {
  create_flow_run(
    input: {
      flow_id: "<flow id>"
      scheduled_start_time: "<YYYY-MM-DD HH:MM:SS>"
    }
  ) {
    id
  }
}
"""

# The page describes this input in words ("you can instead provide version_group_id").
CREATE_FLOW_RUN_BY_VERSION_GROUP = """
mutation {
  create_flow_run(input: { version_group_id: "<version group id>" }) {
    id
  }
}
"""

FLOW_RUN_VERSION = """
query {
  flow_run_by_pk(id: "<flow run id>") {
    version
  }
}
"""

SET_FLOW_RUN_STATE = """
mutation($state: JSON!) {
  set_flow_run_state(input: {flow_run_id: "<flow run id>", version: <version>, state: $state}) {
      id
  }
}
"""

STATE_VARIABLES = {"state": {"type": "Success", "message": "It worked!"}}


def fill(document: str, **values: Any) -> str:
    """The document with its placeholders filled: each keyword names one placeholder."""
    placeholders = {
        "project_id": "<project id>",
        "flow_id": "<flow id>",
        "your_flow_id": "your-flow-id-here",
        "flow_run_id": "<flow run id>",
        "version": "<version>",
        "start": "<YYYY-MM-DD HH:MM:SS>",
        "version_group_id": "<version group id>",
    }
    for key, value in values.items():
        assert placeholders[key] in document, (key, document)
        document = document.replace(placeholders[key], str(value))
    assert "<" not in document, document
    assert "your-flow-id-here" not in document, document
    return document


async def test_seed_flows_page_create_archive_unarchive(gql: GraphQL, client: AsyncClient) -> None:
    project = await client.create_project(unique("seed"))
    name = unique("flow")
    # "first serialize the Flow object to JSON: flow.serialize()"
    flow_json = serialized_flow(name, tasks=["extract", "load"]).model_dump(mode="json")

    created = await gql.data(fill(CREATE_FLOW, project_id=project.id), {"flow": flow_json})
    flow_id = created["createFlow"]["id"]
    flow = await client.get_flow(flow_id)
    assert (flow.name, flow.project_id, flow.version) == (name, project.id, 1)

    # "flows with the same name in the same Project will be given the same versionGroupId":
    # a new version archives the old one.
    again = await gql.data(fill(CREATE_FLOW, project_id=project.id), {"flow": flow_json})
    second = await client.get_flow(again["createFlow"]["id"])
    assert (second.version, second.flow_group_id) == (2, flow.flow_group_id)
    assert (await client.get_flow(flow_id)).archived

    assert await gql.data(fill(ARCHIVE_FLOW, your_flow_id=second.id)) == {"archiveFlow": {"id": second.id}}
    assert (await client.get_flow(second.id)).archived
    assert await gql.data(fill(UNARCHIVE_FLOW, your_flow_id=flow_id)) == {"unarchiveFlow": {"id": flow_id}}
    assert not (await client.get_flow(flow_id)).archived


async def test_seed_flows_page_settings(gql: GraphQL, client: AsyncClient) -> None:
    flow = await register(client, unique("seed"), unique("flow"))
    assert (flow.settings.heartbeat_enabled, flow.settings.lazarus_enabled) == (True, True)
    assert flow.settings.version_locking_enabled is False

    # Each as written (value: true), then again with value set to false, as the page says.
    cases = [
        (DISABLE_HEARTBEAT, "disableFlowHeartbeat", "heartbeat_enabled", False),
        (DISABLE_LAZARUS, "disableLazarusForFlow", "lazarus_enabled", False),
        (ENABLE_VERSION_LOCKING, "enableFlowVersionLocking", "version_locking_enabled", True),
    ]
    for document, field, setting, after_true in cases:
        written = fill(document, your_flow_id=flow.id)
        assert await gql.data(written) == {field: {"success": True}}
        assert getattr((await client.get_flow(flow.id)).settings, setting) is after_true, field
        assert await gql.data(written.replace("value: true", "value: false")) == {field: {"success": True}}
        assert getattr((await client.get_flow(flow.id)).settings, setting) is (not after_true), field


async def test_seed_flows_page_schedule_state(gql: GraphQL, client: AsyncClient) -> None:
    hourly = ScheduleSpec(clocks=[ClockSpec(type="interval", interval_seconds=3600)])
    flow = await register(client, unique("seed"), unique("flow"), schedule=hourly, set_schedule_active=False)
    assert await gql.data(fill(SET_SCHEDULE_STATE, flow_id=flow.id)) == {"setFlowScheduleState": {"success": True}}
    assert (await client.get_flow(flow.id)).is_schedule_active
    off = fill(SET_SCHEDULE_STATE, flow_id=flow.id).replace("setActive: true", "setActive: false")
    assert await gql.data(off) == {"setFlowScheduleState": {"success": True}}
    assert not (await client.get_flow(flow.id)).is_schedule_active

    # "You will get an error if you try to turn on scheduling for such a flow" (a required parameter).
    required = await register(
        client,
        unique("seed"),
        unique("flow"),
        schedule=hourly,
        set_schedule_active=False,
        parameters=[ParameterSpec(name="x", required=True)],
    )
    assert await gql.error_codes(fill(SET_SCHEDULE_STATE, flow_id=required.id)) == ["VALIDATION_ERROR"]
    assert not (await client.get_flow(required.id)).is_schedule_active


async def test_seed_flow_runs_page_create_flow_run(gql: GraphQL, client: AsyncClient) -> None:
    flow = await register(client, unique("seed"), unique("flow"), parameters=[ParameterSpec(name="a", default=1)])

    plain = (await gql.data(fill(CREATE_FLOW_RUN, flow_id=flow.id)))["create_flow_run"]["id"]
    run = (await client.get_flow_run(plain)).run
    assert (run.flow_id, run.parameters, run.state.type) == (flow.id, {"a": 1}, StateType.SCHEDULED)

    with_parameters = await gql.data(fill(CREATE_FLOW_RUN_WITH_PARAMETERS, flow_id=flow.id))
    assert (await client.get_flow_run(with_parameters["create_flow_run"]["id"])).run.parameters == {"a": 2}

    first = await gql.data(fill(CREATE_FLOW_RUN_IDEMPOTENT, flow_id=flow.id))
    assert await gql.data(fill(CREATE_FLOW_RUN_IDEMPOTENT, flow_id=flow.id)) == first
    assert (await client.get_flow_run(first["create_flow_run"]["id"])).run.idempotency_key == "any-key"

    scheduled = await gql.data(fill(CREATE_FLOW_RUN_SCHEDULED, flow_id=flow.id, start="2031-01-02 03:04:05"))
    run = (await client.get_flow_run(scheduled["create_flow_run"]["id"])).run
    assert run.scheduled_start_time == datetime(2031, 1, 2, 3, 4, 5, tzinfo=UTC)

    # "the unique unarchived flow within the provided version group"
    newer = await register(client, flow.project_name, flow.name, parameters=[ParameterSpec(name="a", default=1)])
    by_group = await gql.data(fill(CREATE_FLOW_RUN_BY_VERSION_GROUP, version_group_id=flow.flow_group_id))
    assert (await client.get_flow_run(by_group["create_flow_run"]["id"])).run.flow_id == newer.id

    assert len(await client.get_flow_runs(flow_id=flow.id)) == 4


async def test_seed_flow_runs_page_set_state_at_a_version(gql: GraphQL, client: AsyncClient) -> None:
    flow = await register(client, unique("seed"), unique("flow"))
    run_id = await client.create_flow_run(flow.id)
    version = (await client.get_flow_run(run_id)).run.version

    document = fill(SET_FLOW_RUN_STATE, flow_run_id=run_id, version=version)
    assert await gql.data(document, STATE_VARIABLES) == {"set_flow_run_state": {"id": run_id}}
    state = (await client.get_flow_run(run_id)).run.state
    assert (state.type, state.message) == (StateType.SUCCESS, "It worked!")

    # "If your version doesn't match, ... the update will fail."
    assert await gql.error_codes(document, STATE_VARIABLES) == ["VERSION_LOCKING_ERROR"]
    assert (await client.get_flow_run(run_id)).run.version == version + 1


async def test_seed_flow_runs_page_query_the_version_then_set_the_state(gql: GraphQL, client: AsyncClient) -> None:
    """The page's two steps together; ``flow_run_by_pk`` comes from the gateway's queries."""
    flow = await register(client, unique("seed"), unique("flow"))
    run_id = await client.create_flow_run(flow.id)

    queried = await gql.data(fill(FLOW_RUN_VERSION, flow_run_id=run_id))
    version = queried["flow_run_by_pk"]["version"]
    assert version == 1
    document = fill(SET_FLOW_RUN_STATE, flow_run_id=run_id, version=version)
    assert await gql.data(document, STATE_VARIABLES) == {"set_flow_run_state": {"id": run_id}}
    assert await gql.data(fill(FLOW_RUN_VERSION, flow_run_id=run_id)) == {"flow_run_by_pk": {"version": 2}}
