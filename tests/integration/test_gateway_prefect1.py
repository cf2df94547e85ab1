"""The gateway as a Prefect 1.4.1 client and agent use it, over real HTTP, on SQLite
and PostgreSQL: a flow registered in Prefect's format and read back as Prefect
sent it, its tasks and edges added after it, the run queue Prefect agents poll
(``get_runs_in_queue``), agents that register again, Prefect's serialized states
kept whole, a lost claim answered as Prefect Server answers it, and the task runs
of mapped children made on demand (``get_or_create_task_run_info``).

The values are shaped as the real client sends them (the compat reference's
recorded requests); no Prefect package is needed.
"""

from __future__ import annotations

import base64
import gzip
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from flowbus.client import AsyncClient
from flowbus.states import StateType
from tests.helpers import register, unique
from tests.helpers.gateway import GraphQL
from tests.helpers.prefect1_payloads import V, prefect_edge, prefect_flow, prefect_state, prefect_task
from tests.helpers.waiting import eventually

UNKNOWN = "00000000-0000-4000-8000-000000000000"
# Every request of the Prefect client carries it; the gateway tells Prefect's requests by it.
PREFECT_HEADERS = {"X-PREFECT-CORE-VERSION": V}
SUBMITTED_ALREADY = "State update failed: this run has already been submitted."


TASKS = [
    {**prefect_task("name"), "name": "name", "type": "prefect.core.parameter.Parameter", "default": "world"},
    prefect_task("say-1", max_retries=2, retry_delay=10, tags=["greet"]),
]
EDGES = [prefect_edge("name", "say-1", "name")]


def iso(moment: datetime) -> str:
    return moment.isoformat()


def packed(flow: dict[str, Any]) -> str:
    """``serialized_flow`` of create_flow_from_compressed_string: base64(gzip(json))."""
    return base64.b64encode(gzip.compress(json.dumps(flow).encode())).decode()


def operation(field: str, input_type: str, selection: str) -> str:
    return f"mutation($input: {input_type}!) {{ {field}(input: $input) {{ {selection} }} }}"


async def send(
    gql: GraphQL, field: str, input_type: str, value: Any, selection: str, headers: dict[str, str] | None = None
) -> dict[str, Any]:
    """The whole response body of one mutation, with the headers a Prefect client adds."""
    body = {"query": operation(field, input_type, selection), "variables": {"input": value}}
    response = await gql.http.post(gql.url, json=body, headers=headers or {})
    assert response.status_code == 200, (response.status_code, response.text)
    answer: dict[str, Any] = response.json()
    return answer


async def call(
    gql: GraphQL,
    field: str,
    input_type: str,
    value: Any,
    selection: str = "success",
    headers: dict[str, str] | None = None,
) -> Any:
    """The field's payload of a mutation that must succeed."""
    body = await send(gql, field, input_type, value, selection, headers)
    assert "errors" not in body, body
    return body["data"][field]


async def refused(
    gql: GraphQL,
    field: str,
    input_type: str,
    value: Any,
    selection: str = "success",
    headers: dict[str, str] | None = None,
) -> list[tuple[str, str]]:
    """The (code, message) of each error of a mutation that must fail."""
    body = await send(gql, field, input_type, value, selection, headers)
    assert "errors" in body, body
    assert body.get("data") in (None, {field: None}), body
    return [(e["extensions"]["code"], e["message"]) for e in body["errors"]]


async def codes(gql: GraphQL, field: str, input_type: str, value: Any, selection: str = "success") -> list[str]:
    return [code for code, _ in await refused(gql, field, input_type, value, selection)]


async def create_prefect_flow(
    gql: GraphQL, client: AsyncClient, flow: dict[str, Any], project_id: str | None = None, **extra: Any
) -> str:
    """Register ``flow`` as ``flow.register()`` does first (in a new project unless one is named)."""
    project_id = project_id or (await client.create_project(unique("p"))).id
    value = {"project_id": project_id, "serialized_flow": packed(flow), "set_schedule_active": False, **extra}
    created = await call(
        gql, "create_flow_from_compressed_string", "create_flow_from_compressed_string_input", value, "id"
    )
    flow_id: str = created["id"]
    return flow_id


async def add_tasks_and_edges(gql: GraphQL, flow_id: str) -> None:
    input_tasks = {"flow_id": flow_id, "serialized_tasks": TASKS}
    assert await call(gql, "register_tasks", "register_tasks_input", input_tasks) == {"success": True}
    input_edges = {"flow_id": flow_id, "serialized_edges": EDGES}
    assert await call(gql, "register_edges", "register_edges_input", input_edges) == {"success": True}


async def flow_by_pk(gql: GraphQL, flow_id: str) -> dict[str, Any]:
    query = """query($id: uuid!) { flow_by_pk(id: $id) {
        name version core_version storage run_config serialized_flow
        tasks(order_by: {slug: asc}) { id slug max_retries tags }
    } }"""
    found: dict[str, Any] = (await gql.data(query, {"id": flow_id}))["flow_by_pk"]
    return found


async def create_run(gql: GraphQL, flow_id: str, **fields: Any) -> str:
    created = await call(gql, "create_flow_run", "create_flow_run_input", {"flow_id": flow_id, **fields}, "id")
    run_id: str = created["id"]
    return run_id


async def flow_run_by_pk(gql: GraphQL, run_id: str, selection: str) -> dict[str, Any]:
    query = f'query {{ flow_run_by_pk(id: "{run_id}") {{ {selection} }} }}'
    found: dict[str, Any] = (await gql.data(query))["flow_run_by_pk"]
    return found


async def set_flow_run_state(
    gql: GraphQL, run_id: str, version: int | None, state: dict[str, Any], headers: dict[str, str] | None = None
) -> Any:
    item = {"flow_run_id": run_id, "version": version, "state": state}
    return await call(
        gql,
        "set_flow_run_states",
        "set_flow_run_states_input",
        {"states": [item]},
        "states { id status message }",
        headers,
    )


async def set_task_run_state(gql: GraphQL, task_run_id: str, version: int | None, state: dict[str, Any]) -> Any:
    item = {"task_run_id": task_run_id, "version": version, "state": state}
    return await call(
        gql,
        "set_task_run_states",
        "set_task_run_states_input",
        {"states": [item]},
        "states { id status message }",
        PREFECT_HEADERS,
    )


# ---- registration ----------------------------------------------------------------------


async def test_a_prefect_flow_registers_and_reads_back_as_prefect_sent_it(gql: GraphQL, client: AsyncClient) -> None:
    flow = prefect_flow(unique("hello-flow"), labels=["vm"])
    project_id = (await client.create_project(unique("p"))).id
    flow_id = await create_prefect_flow(gql, client, flow, project_id, idempotency_key="k1")
    found = await flow_by_pk(gql, flow_id)
    assert (found["name"], found["version"], found["core_version"], found["tasks"]) == (flow["name"], 1, V, [])
    assert found["storage"] == flow["storage"]
    assert found["run_config"] == flow["run_config"]
    assert found["serialized_flow"] == flow

    # The tasks and edges follow; each is sent again by a second flow.register(): nothing changes.
    for _ in range(2):
        await add_tasks_and_edges(gql, flow_id)
        found = await flow_by_pk(gql, flow_id)
        assert [(t["slug"], t["max_retries"], t["tags"]) for t in found["tasks"]] == [
            ("name", 0, []),
            ("say-1", 2, ["greet"]),
        ]
        assert found["serialized_flow"] == flow, "as Prefect sent it: its tasks are rows of their own"
        registered = await client.get_flow(flow_id)
        assert [(e.upstream, e.downstream, e.key) for e in registered.edges] == [("name", "say-1", "name")]
        assert [t.retry_delay_seconds for t in registered.tasks] == [None, 10]
    task_ids = [t["id"] for t in found["tasks"]]
    # The same idempotency key: the same flow, whose tasks are sent again.
    assert await create_prefect_flow(gql, client, flow, project_id, idempotency_key="k1") == flow_id
    await add_tasks_and_edges(gql, flow_id)
    assert [t["id"] for t in (await flow_by_pk(gql, flow_id))["tasks"]] == task_ids

    # An edge naming a task the flow lacks: refused, and nothing is added, not even the good edge.
    bad_edges = [prefect_edge("say-1", "name", "back"), prefect_edge("name", "shout-1")]
    assert await refused(
        gql, "register_edges", "register_edges_input", {"flow_id": flow_id, "serialized_edges": bad_edges}
    ) == [("VALIDATION_ERROR", "edges name tasks the flow does not have: ['shout-1']")]
    assert len((await client.get_flow(flow_id)).edges) == 1

    bad: list[tuple[str, dict[str, Any], str]] = [
        ("register_tasks", {"flow_id": UNKNOWN, "serialized_tasks": TASKS}, "NOT_FOUND"),
        ("register_edges", {"flow_id": UNKNOWN, "serialized_edges": EDGES}, "NOT_FOUND"),
        ("register_tasks", {"flow_id": flow_id, "serialized_tasks": {"say-1": TASKS[1]}}, "VALIDATION_ERROR"),
        ("register_tasks", {"flow_id": flow_id, "serialized_tasks": [{"slug": ""}]}, "VALIDATION_ERROR"),
        (
            "register_tasks",
            {"flow_id": flow_id, "serialized_tasks": [{"slug": "x-1", "tags": [1, "a"]}]},
            "VALIDATION_ERROR",
        ),
        ("register_edges", {"flow_id": flow_id, "serialized_edges": ["name->say-1"]}, "VALIDATION_ERROR"),
        ("register_edges", {"flow_id": "not-a-uuid", "serialized_edges": EDGES}, "VALIDATION_ERROR"),
    ]
    for field, value, code in bad:
        assert await codes(gql, field, f"{field}_input", value) == [code], value
    registered = await client.get_flow(flow_id)
    assert ([t.slug for t in registered.tasks], len(registered.edges)) == (["name", "say-1"], 1)


async def test_a_prefect_flow_with_a_schedule_and_bad_ones(gql: GraphQL, client: AsyncClient) -> None:
    flow = prefect_flow(unique("scheduled"))
    clock = {
        "type": "IntervalClock",
        "interval": 3_600_000_000,
        "start_date": {"dt": "2026-12-01T08:30:00", "tz": "Europe/Paris"},
        "end_date": None,
        "parameter_defaults": {"name": "clock"},
        "labels": None,
        "__version__": V,
    }
    flow["schedule"] = {"type": "Schedule", "clocks": [clock], "filters": [], "adjustments": [], "__version__": V}
    flow_id = await create_prefect_flow(gql, client, flow)
    schedule = await client.get_schedule(flow_id)
    [read] = schedule.clocks
    assert (read.type, read.interval_seconds, read.timezone) == ("interval", 3600, "Europe/Paris")
    assert (await flow_by_pk(gql, flow_id))["serialized_flow"] == flow

    project = await client.create_project(unique("p"))
    input_type = "create_flow_from_compressed_string_input"
    for schedule_value in (
        {**flow["schedule"], "filters": [{"fn": "prefect.schedules.filters.is_weekday"}]},
        {**flow["schedule"], "clocks": [{"type": "RRuleClock"}]},
    ):
        value = {"project_id": project.id, "serialized_flow": packed({**flow, "schedule": schedule_value})}
        assert await codes(gql, "create_flow_from_compressed_string", input_type, value, "id") == ["VALIDATION_ERROR"]
    assert await client.get_flows(project_name=project.name) == []


async def test_a_prefect_run_config_of_a_run(gql: GraphQL, client: AsyncClient) -> None:
    flow = prefect_flow(unique("configured"), labels=["vm"])
    flow_id = await create_prefect_flow(gql, client, flow)
    # No run config of its own: Prefect agents read the flow's.
    plain = await create_run(gql, flow_id)
    assert (await flow_run_by_pk(gql, plain, "labels run_config")) == {
        "labels": ["vm"],
        "run_config": flow["run_config"],
    }
    local = {"type": "LocalRun", "labels": ["gpu"], "env": {"STAGE": "prod"}, "working_dir": "/srv", "__version__": V}
    own = await create_run(gql, flow_id, run_config=local)
    assert (await flow_run_by_pk(gql, own, "labels run_config")) == {"labels": ["gpu"], "run_config": local}
    assert (await client.get_flow_run(own)).run.labels == ["gpu"]
    # flowbus's env rules hold for a Prefect run config too, and flowbus's form still refuses unknown keys.
    for bad in (
        {**local, "env": {"PYTHONPATH": "/tmp/evil"}},
        {"labels": ["gpu"], "working_dir": "/srv"},
        {"labels": ["gpu"], "prefect": {"type": "LocalRun", "env": {"PYTHONPATH": "/tmp/evil"}}},
    ):
        assert await codes(
            gql, "create_flow_run", "create_flow_run_input", {"flow_id": flow_id, "run_config": bad}, "id"
        ) == ["VALIDATION_ERROR"], bad
    assert len(await client.get_flow_runs(flow_id=flow_id)) == 2


# ---- agents and their run queue ---------------------------------------------------------


async def test_register_agent_again_keeps_its_id(gql: GraphQL, client: AsyncClient) -> None:
    field, input_type = "register_agent", "register_agent_input"
    value = {"type": "LocalAgent", "name": "agent", "labels": ["vm", "gpu"], "tenant_id": UNKNOWN}
    first = await call(gql, field, input_type, value, "id", PREFECT_HEADERS)
    # A restart registers again, its labels in any order.
    again = await call(gql, field, input_type, {**value, "labels": ["gpu", "vm"]}, "id", PREFECT_HEADERS)
    assert again == first
    others = [
        {**value, "name": "other"},
        {**value, "type": "DockerAgent"},
        {**value, "labels": ["vm"]},
    ]
    ids = {(await call(gql, field, input_type, other, "id"))["id"] for other in others}
    assert first["id"] not in ids
    assert len(ids) == 3
    agents = {a.id: a for a in (await client.get_agents()).agents}
    assert len(agents) == 4
    assert (agents[first["id"]].name, agents[first["id"]].labels) == ("agent", ["gpu", "vm"])


async def runs_in_queue(
    gql: GraphQL, labels: list[str] | None, before: datetime, headers: dict[str, str] | None = None
) -> list[str]:
    value = {"before": iso(before), "labels": labels, "tenant_id": UNKNOWN}
    answer = await call(gql, "get_runs_in_queue", "get_runs_in_queue_input", value, "flow_run_ids", headers)
    ids: list[str] = answer["flow_run_ids"]
    return ids


async def test_get_runs_in_queue_gives_prefect_flows_runs_an_agent_may_take(gql: GraphQL, client: AsyncClient) -> None:
    flow_id = await create_prefect_flow(gql, client, prefect_flow(unique("queued"), labels=["vm"]))
    now = datetime.now(UTC)
    at = {n: iso(now - timedelta(minutes=10 - n)) for n in range(10)}  # oldest first
    vm = await create_run(gql, flow_id, scheduled_start_time=at[1])  # the flow's labels
    gpu = await create_run(gql, flow_id, labels=["vm", "gpu"], scheduled_start_time=at[2])
    bare = await create_run(gql, flow_id, labels=[], scheduled_start_time=at[3])
    vm_again = await create_run(gql, flow_id, scheduled_start_time=at[0])
    later = await create_run(gql, flow_id, scheduled_start_time=iso(now + timedelta(hours=1)))
    # A flowbus flow's runs are for flowbus agents: a Prefect agent could not load them.
    own = await register(client, unique("p"), unique("own"), labels=["vm"])
    await client.create_flow_run(own.id)
    await client.create_flow_run(own.id, labels=[])

    soon = now + timedelta(seconds=10)  # what a Prefect agent sends as before
    assert await runs_in_queue(gql, ["vm"], soon) == [vm_again, vm]
    assert await runs_in_queue(gql, ["gpu", "vm", "eu"], soon) == [vm_again, vm, gpu]
    assert await runs_in_queue(gql, ["gpu"], soon) == []
    # A run without labels only for an agent without.
    assert await runs_in_queue(gql, [], soon) == [bare]
    assert await runs_in_queue(gql, None, soon) == [bare]
    # Not due yet, until before reaches its start time.
    assert await runs_in_queue(gql, ["vm"], now + timedelta(hours=2)) == [vm_again, vm, later]
    assert await runs_in_queue(gql, ["vm"], now - timedelta(minutes=9, seconds=30)) == [vm_again]

    # Once claimed, a run waits for no agent.
    await set_flow_run_state(gql, vm, 1, prefect_state("Submitted", "Submitted for execution"), PREFECT_HEADERS)
    assert await runs_in_queue(gql, ["vm"], soon) == [vm_again]


async def test_get_runs_in_queue_gives_at_most_25_oldest_first(gql: GraphQL, client: AsyncClient) -> None:
    flow_id = await create_prefect_flow(gql, client, prefect_flow(unique("many"), labels=["many"]))
    now = datetime.now(UTC)
    ids = [await create_run(gql, flow_id, scheduled_start_time=iso(now - timedelta(seconds=60 - n))) for n in range(30)]
    assert await runs_in_queue(gql, ["many"], now) == ids[:25]


async def test_polling_is_a_prefect_agents_heartbeat(gql: GraphQL, client: AsyncClient) -> None:
    registered = await call(
        gql, "register_agent", "register_agent_input", {"type": "LocalAgent", "name": "poller"}, "id", PREFECT_HEADERS
    )
    agent_id = registered["id"]
    query = f'query {{ agent(where: {{id: {{_eq: "{agent_id}"}}}}) {{ last_queried }} }}'

    async def last_queried() -> datetime:
        [agent] = (await gql.data(query))["agent"]
        return datetime.fromisoformat(agent["last_queried"])

    registered_at = await last_queried()
    await runs_in_queue(gql, ["vm"], datetime.now(UTC), {**PREFECT_HEADERS, "X-Prefect-Agent-Id": agent_id})
    polled_at = await eventually(
        last_queried, "the poll recorded as the agent's heartbeat", until=lambda t: t > registered_at
    )
    assert polled_at <= datetime.now(UTC)
    seen = {a.id: a.last_seen for a in (await client.get_agents()).agents}
    assert seen[agent_id] == polled_at


# ---- states ----------------------------------------------------------------------------


async def test_a_prefect_state_is_kept_whole_until_another_client_sets_one(gql: GraphQL, client: AsyncClient) -> None:
    flow_id = await create_prefect_flow(gql, client, prefect_flow(unique("stateful")))
    run_id = await create_run(gql, flow_id)
    scheduled = (await flow_run_by_pk(gql, run_id, "serialized_state"))["serialized_state"]
    assert (scheduled["type"], scheduled["__version__"]) == ("Scheduled", V)

    submitted = prefect_state("Submitted", "Submitted for execution", state=scheduled)
    await set_flow_run_state(gql, run_id, 1, submitted, PREFECT_HEADERS)
    running = prefect_state(
        "Running",
        "Running flow.",
        start_time="2026-12-01T21:50:31.890861+00:00",
        context={"tags": ["etl"]},
        run_count=1,
        surprise={"kept": [1, 2, 3]},
    )
    # No version (as Prefect's client sends most states): at the run's current one.
    assert await set_flow_run_state(gql, run_id, None, running, PREFECT_HEADERS) == {
        "states": [{"id": run_id, "status": "SUCCESS", "message": None}]
    }
    found = await flow_run_by_pk(gql, run_id, "version state state_message serialized_state")
    assert found == {"version": 3, "state": "Running", "state_message": "Running flow.", "serialized_state": running}

    # A state flowbus's own client sets: the serialized form is built from it.
    await client.set_flow_run_state(run_id, 3, StateType.SUCCESS, "done")
    assert (await flow_run_by_pk(gql, run_id, "serialized_state"))["serialized_state"] == prefect_state(
        "Success", "done"
    )


async def test_a_lost_claim_is_answered_as_prefect_server_answers_it(gql: GraphQL, client: AsyncClient) -> None:
    flow_id = await create_prefect_flow(gql, client, prefect_flow(unique("claimed")))
    run_id = await create_run(gql, flow_id)
    submitted = prefect_state("Submitted", "Submitted for execution")
    first = {**PREFECT_HEADERS, "X-Prefect-Agent-Id": "agent-1"}
    await set_flow_run_state(gql, run_id, 1, submitted, first)
    item = {"flow_run_id": run_id, "version": 1, "state": submitted}
    field, input_type, selection = "set_flow_run_states", "set_flow_run_states_input", "states { id status message }"

    # Another Prefect agent's claim, at the version it read: the text Prefect's agent
    # matches to leave the run alone (any other error makes it fail the run).
    second = {**PREFECT_HEADERS, "X-Prefect-Agent-Id": "agent-2"}
    assert await refused(gql, field, input_type, {"states": [item]}, selection, second) == [
        ("CONFLICT", SUBMITTED_ALREADY)
    ]
    # Without the header (not a Prefect client), or for another state: flowbus's own answer.
    [(code, _)] = await refused(gql, field, input_type, {"states": [item]}, selection)
    assert code == "VERSION_LOCKING_ERROR"
    running = {**item, "state": prefect_state("Running", "Running flow.")}
    [(code, _)] = await refused(gql, field, input_type, {"states": [running]}, selection, second)
    assert code == "VERSION_LOCKING_ERROR"
    run = (await client.get_flow_run(run_id)).run
    assert (run.state.type, run.version, run.agent_id) == (StateType.SUBMITTED, 2, "agent-1")


async def test_a_task_run_fails_then_retries_as_prefects_runner_does(gql: GraphQL, client: AsyncClient) -> None:
    flow_id = await create_prefect_flow(gql, client, prefect_flow(unique("retried")))
    await add_tasks_and_edges(gql, flow_id)
    run_id = await create_run(gql, flow_id)
    await set_flow_run_state(gql, run_id, 1, prefect_state("Submitted"), PREFECT_HEADERS)
    await set_flow_run_state(gql, run_id, 2, prefect_state("Running"), PREFECT_HEADERS)
    say = next(t for t in (await client.get_flow_run(run_id)).task_runs if t.task_slug == "say-1")

    retrying = prefect_state(
        "Retrying", "Retrying Task (after attempt 1 of 3)", start_time=iso(datetime.now(UTC)), run_count=1
    )
    states = [
        prefect_state("Running", "Starting task run."),
        prefect_state("Failed", "Error during execution of task: ValueError('boom')"),
        retrying,
        prefect_state("Running", "Starting task run.", context={"task_run_count": 2}),
        prefect_state("Success", "Task run succeeded."),
    ]
    for state in states:
        await set_task_run_state(gql, say.id, None, state)
        if state is retrying:
            query = f'query {{ task_run_by_pk(id: "{say.id}") {{ state end_time serialized_state }} }}'
            now = (await gql.data(query))["task_run_by_pk"]
            # No longer finished: its end time is cleared.
            assert now == {"state": "Retrying", "end_time": None, "serialized_state": retrying}
    history = [
        e.type for e in await client.get_flow_run_history(run_id, include_task_runs=True) if e.task_run_id == say.id
    ]
    assert history == [
        StateType.RUNNING,
        StateType.FAILED,
        StateType.RETRYING,
        StateType.RUNNING,
        StateType.SUCCESS,
    ]

    # A flow run does not retry once failed.
    await set_flow_run_state(
        gql, run_id, None, prefect_state("Failed", "Some reference tasks failed."), PREFECT_HEADERS
    )
    item = {"flow_run_id": run_id, "version": None, "state": prefect_state("Retrying")}
    [(code, message)] = await refused(
        gql, "set_flow_run_states", "set_flow_run_states_input", {"states": [item]}, "states { id }", PREFECT_HEADERS
    )
    assert (code, "already finished" in message) == ("CONFLICT", True)
    assert (await client.get_flow_run(run_id)).run.state.type is StateType.FAILED


# ---- the task runs of mapped children --------------------------------------------------


async def test_get_or_create_task_run_info(gql: GraphQL, client: AsyncClient) -> None:
    flow_id = await create_prefect_flow(gql, client, prefect_flow(unique("mapped")))
    await add_tasks_and_edges(gql, flow_id)
    run_id = await create_run(gql, flow_id)
    # What Prefect's runner reads first: the task runs made with the flow run.
    pre_created = (
        await flow_run_by_pk(
            gql, run_id, "task_runs(where: { map_index: { _eq: -1 } }) { id task { id slug } version serialized_state }"
        )
    )["task_runs"]
    by_slug = {t["task"]["slug"]: t for t in pre_created}
    assert sorted(by_slug) == ["name", "say-1"]
    say = by_slug["say-1"]
    assert (say["version"], say["serialized_state"]["type"]) == (1, "Pending")

    field, input_type, selection = (
        "get_or_create_task_run_info",
        "get_or_create_task_run_info_input",
        "id version state serialized_state",
    )
    value = {"flow_run_id": run_id, "task_id": say["task"]["id"], "map_index": -1}
    own = await call(gql, field, input_type, value, selection, PREFECT_HEADERS)
    assert (own["id"], own["version"], own["state"]) == (say["id"], 1, "Pending")
    assert await call(gql, field, input_type, {**value, "map_index": None}, selection) == own

    # A mapped child, as the runner asks for it: arguments inline, made once.
    inline = (
        f'mutation {{ get_or_create_task_run_info(input: {{ flow_run_id: "{run_id}", '
        f'task_id: "{say["task"]["id"]}", map_index: 0 }}) {{ id version state serialized_state }} }}'
    )
    child = (await gql.data(inline))["get_or_create_task_run_info"]
    assert child["id"] not in (say["id"], by_slug["name"]["id"])
    assert (child["version"], child["state"]) == (1, "Pending")
    assert child["serialized_state"] == prefect_state("Pending", "Task run created")
    assert (await gql.data(inline))["get_or_create_task_run_info"] == child
    query = f"""query {{ flow_run(where: {{ id: {{ _eq: "{run_id}" }} }}) {{
        task_runs(order_by: [{{map_index: asc}}, {{task_slug: asc}}]) {{ id map_index task {{ slug }} }}
    }} }}"""
    [found] = (await gql.data(query))["flow_run"]
    listed = found["task_runs"]
    assert [(t["map_index"], t["task"]["slug"]) for t in listed] == [(-1, "name"), (-1, "say-1"), (0, "say-1")]
    assert listed[2]["id"] == child["id"]

    # The child's states, set as Prefect sets them, come back whole.
    await set_flow_run_state(gql, run_id, 1, prefect_state("Submitted"), PREFECT_HEADERS)
    await set_flow_run_state(gql, run_id, 2, prefect_state("Running"), PREFECT_HEADERS)
    running = prefect_state("Running", "Starting task run.", context={"map_index": 0})
    await set_task_run_state(gql, child["id"], None, running)
    again = await call(gql, field, input_type, {**value, "map_index": 0}, selection)
    assert (again["id"], again["version"], again["state"], again["serialized_state"]) == (
        child["id"],
        2,
        "Running",
        running,
    )

    other_flow = await create_prefect_flow(gql, client, prefect_flow(unique("other")))
    await add_tasks_and_edges(gql, other_flow)
    foreign = (await flow_by_pk(gql, other_flow))["tasks"][0]["id"]
    bad = [
        ({**value, "task_id": UNKNOWN}, "VALIDATION_ERROR"),
        ({**value, "task_id": foreign}, "VALIDATION_ERROR"),
        ({**value, "flow_run_id": UNKNOWN}, "NOT_FOUND"),
        ({**value, "map_index": -2}, "VALIDATION_ERROR"),
        ({**value, "map_index": "first"}, "VALIDATION_ERROR"),
        ({"flow_run_id": run_id}, "VALIDATION_ERROR"),
    ]
    for bad_value, code in bad:
        assert await codes(gql, field, input_type, bad_value, "id") == [code], bad_value
    assert len((await client.get_flow_run(run_id)).task_runs) == 3


async def test_flow_runs_and_task_runs_are_renamed(gql: GraphQL, client: AsyncClient) -> None:
    flow_id = await create_prefect_flow(gql, client, prefect_flow(unique("named")))
    await add_tasks_and_edges(gql, flow_id)
    run_id = await create_run(gql, flow_id, flow_run_name="before")
    say = next(
        t
        for t in (await flow_run_by_pk(gql, run_id, "task_runs { id name task { slug } }"))["task_runs"]
        if t["task"]["slug"] == "say-1"
    )
    # Without a name of its own a task run goes by its task's.
    assert say["name"] == "say"

    renamed = {"flow_run_id": run_id, "name": "after"}
    assert await call(gql, "set_flow_run_name", "set_flow_run_name_input", renamed) == {"success": True}
    named = {"task_run_id": say["id"], "name": "say-Cloud"}
    assert await call(gql, "set_task_run_name", "set_task_run_name_input", named, headers=PREFECT_HEADERS) == {
        "success": True
    }
    run = await flow_run_by_pk(gql, run_id, "name version task_runs { id name }")
    assert run["name"] == "after"
    assert {t["id"]: t["name"] for t in run["task_runs"]}[say["id"]] == "say-Cloud"
    # A name is not a state: the run's version is unchanged.
    assert run["version"] == 1

    assert await codes(gql, "set_flow_run_name", "set_flow_run_name_input", {"flow_run_id": UNKNOWN, "name": "x"}) == [
        "NOT_FOUND"
    ]
    assert await codes(gql, "set_task_run_name", "set_task_run_name_input", {"task_run_id": UNKNOWN, "name": "x"}) == [
        "NOT_FOUND"
    ]
    assert await codes(gql, "set_flow_run_name", "set_flow_run_name_input", {"flow_run_id": run_id, "name": ""}) == [
        "VALIDATION_ERROR"
    ]
    assert (await flow_run_by_pk(gql, run_id, "name"))["name"] == "after"
