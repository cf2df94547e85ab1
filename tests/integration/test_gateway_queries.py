# ruff: noqa: E501  (the Prefect client's queries are kept as it writes them)
"""Hasura-style queries through the gateway over real HTTP, on SQLite and PostgreSQL.

The data is made the way flowbus makes it (registrations, runs, states, log
batches, an agent's registration through the services), and read back with
where/order_by/limit/offset/distinct_on, by primary key, aggregates, nested
relations, and the query documents Prefect 1.4.1 sends, verbatim.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlmodel import select

from flowbus import subjects
from flowbus.client import AsyncClient
from flowbus.db.engine import Database
from flowbus.db.tables import Flow, Task
from flowbus.schemas.agents import AgentOut, RegisterAgent
from flowbus.schemas.flows import FlowOut
from flowbus.schemas.runs import FlowRunOut, LogBatch, LogRecord
from flowbus.settings import Settings
from flowbus.states import StateType
from flowbus_services.gateway import queries
from tests.helpers import register
from tests.helpers.gateway import GraphQL
from tests.helpers.prefect1_payloads import prefect_state
from tests.helpers.waiting import eventually

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
AGENT_ID = "9d7a3f52-1c1e-4f0a-8b56-3e4b1f0c2d11"


@dataclass
class World:
    alpha1: FlowOut
    alpha2: FlowOut
    beta: FlowOut
    gamma: FlowOut
    scheduled: FlowRunOut  # alpha v2, Scheduled at T0
    running: FlowRunOut  # alpha v2, Running, its task a-1 Running
    done: FlowRunOut  # beta, Success
    task_a: str  # the running run's task run of a-1


def iso(t: datetime) -> str:
    return t.isoformat()


async def ensure_task_rows(database_url: str) -> None:
    """A task row per task of each flow that has none, as migration 0004 backfills them:
    stands in for registration's own task rows where it does not write them yet."""
    db = Database(database_url)
    try:
        async with db.write_session() as session:
            flows = (await session.execute(select(Flow))).scalars().all()
            have = set((await session.execute(select(Task.flow_id).distinct())).scalars().all())
            for flow in flows:
                if flow.id in have:
                    continue
                for spec in flow.tasks:
                    session.add(
                        Task(
                            flow_id=flow.id,
                            slug=spec["slug"],
                            name=spec["name"],
                            max_retries=spec.get("max_retries", 0),
                            retry_delay_seconds=spec.get("retry_delay_seconds"),
                            tags=spec.get("tags", []),
                            created=flow.created,
                        )
                    )
    finally:
        await db.dispose()


async def build_world(client: AsyncClient, gql: GraphQL, database_url: str) -> World:
    alpha1 = await register(client, "proj", "alpha", tasks=["a", "b"])
    alpha2 = await register(client, "proj", "alpha", tasks=["a", "b", "c"])
    beta = await register(client, "proj", "beta", tasks=["x"])
    gamma = await register(client, "other", "gamma")
    await ensure_task_rows(database_url)
    await client.request(
        subjects.HeartbeatCommands.REGISTER_AGENT,
        RegisterAgent(agent_id=AGENT_ID, name="ag", labels=["vm"]),
        AgentOut,
    )
    scheduled = await client.create_flow_run_out(alpha2.id, run_name="sched", scheduled_start_time=T0)
    running = await client.create_flow_run_out(alpha2.id, run_name="run", labels=["vm"])
    v = (await client.set_flow_run_state(running.id, 1, StateType.SUBMITTED, agent_id=AGENT_ID)).version
    await client.set_flow_run_state(running.id, v, StateType.RUNNING, "going")
    task_a = next(t for t in (await client.get_flow_run_info(running.id)).task_runs if t.task_slug == "a-1")
    await client.set_task_run_state(task_a.id, 1, StateType.RUNNING)
    done = await client.create_flow_run_out(beta.id, run_name="done")
    v = (await client.set_flow_run_state(done.id, 1, StateType.RUNNING)).version
    await client.set_flow_run_state(done.id, v, StateType.SUCCESS, "ok")
    records = [
        LogRecord(flow_run_id=running.id, timestamp=T0 + timedelta(seconds=1), name="r", level="INFO", message="one"),
        LogRecord(
            flow_run_id=running.id,
            task_run_id=task_a.id,
            timestamp=T0 + timedelta(seconds=2),
            name="r",
            level="WARNING",
            message="two",
        ),
        LogRecord(
            flow_run_id=running.id, timestamp=T0 + timedelta(seconds=3), name="r", level="ERROR", message="three"
        ),
    ]
    await client.nc.jetstream().publish(subjects.logs(running.id), LogBatch(records=records).model_dump_json().encode())

    async def stored() -> int:
        data = await gql.data("{ log_aggregate { aggregate { count } } }")
        return int(data["log_aggregate"]["aggregate"]["count"])

    await eventually(stored, "the log batch is stored", until=lambda n: n == 3)
    return World(alpha1, alpha2, beta, gamma, scheduled, running, done, task_a.id)


@pytest.fixture
async def world(client: AsyncClient, gql: GraphQL, stack: Settings) -> World:
    assert stack.database_url is not None
    return await build_world(client, gql, stack.database_url)


class Statements:
    """The gateway's SQL statements (tagged ``flowbus_gateway``) run while counting."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, _conn: Any, _cursor: Any, _stmt: str, _params: Any, context: Any, _many: bool) -> None:
        if context is not None and context.execution_options.get("flowbus_gateway"):
            self.count += 1


@contextmanager
def counting() -> Iterator[Statements]:
    statements = Statements()
    sa.event.listen(sa.engine.Engine, "before_cursor_execute", statements)
    try:
        yield statements
    finally:
        sa.event.remove(sa.engine.Engine, "before_cursor_execute", statements)


def rows(data: dict[str, Any], root: str, key: str = "name") -> list[Any]:
    return [row[key] for row in data[root]]


async def run_names(gql: GraphQL, where: str, variables: dict[str, Any] | None = None) -> list[str]:
    """The names of the flow runs ``where`` selects, by name."""
    if variables is not None:
        query = f"query($w: flow_run_bool_exp) {{ flow_run(where: {where}, order_by: {{name: asc}}) {{ name }} }}"
    else:
        query = f"{{ flow_run(where: {where}, order_by: {{name: asc}}) {{ name }} }}"
    return rows(await gql.data(query, variables), "flow_run")


# ---- the queries Prefect 1.4.1 sends -----------------------------------------------------------------------------

# As the client sends them (prefect 1.4.1, recorded), with <...> standing for ids and times.
PREFECT_QUERIES: dict[str, str] = {
    "tenant": """
query {
    tenant {
        id
    }
}""",
    "project_by_name": """
query {
    project(where: { name: { _eq: "proj" } }) {
        id
    }
}""",
    "flow_group_id": """
query {
    flow_by_pk(id: "<ALPHA2>") {
        flow_group_id
    }
}""",
    "tenant_slug": """
query {
    tenant {
        slug
        id
    }
}""",
    "register_latest_version": """
query {
    flow(where: { _and: { name: { _eq: "alpha" }, project: { id: { _eq: "<PROJECT>" } } } }, order_by: { version: desc }, limit: 1) {
        id
        version
    }
}""",
    "run_flow_by_name": """
query {
    flow(where: { name: { _eq: "alpha" }, archived: { _eq: false }, project: { name: { _eq: "proj" } } }, order_by: { created: desc }) {
        id
        settings
        run_config
        serialized_flow
        name
        archived
        project {
            name
        }
        core_version
        storage
        flow_group {
            labels
        }
    }
}""",
    "flow_run_view": """
query {
    flow_run(where: { id: { _eq: "<SCHEDULED>" } }) {
        id
        name
        flow_id
        serialized_state
        states {
            serialized_state
            timestamp
        }
        labels
        parameters
        context
        updated
        run_config
    }
}""",
    "logs_until": """
query {
    flow_run(where: { id: { _eq: "<RUNNING>" } }) {
        logs(order_by: { timestamp: asc }, where: { _and: [{ timestamp: { _lte: "<T0+2>" } }, {}] }) {
            timestamp
            message
            level
        }
    }
}""",
    "agent_runs": """
query {
    flow_run(where: { id: { _in: ["<SCHEDULED>", "<RUNNING>", "<DONE>"] }, _or: [{ state: { _eq: "Scheduled" } }, { state: { _eq: "Running" }, task_runs: { state_start_time: { _lte: "<SOON>" } } }] }) {
        id
        version
        state
        serialized_state
        parameters
        scheduled_start_time
        run_config
        name
        flow {
            name
            version
            core_version
            id
            storage
            environment
        }
        task_runs(where: { state_start_time: { _lte: "<SOON>" } }) {
            id
            version
            serialized_state
            task_id
        }
    }
}""",
    "runner_flow": """
query {
    flow_run(where: { id: { _eq: "<RUNNING>" } }) {
        flow {
            name
            storage
            run_config
        }
        version
    }
}""",
    "runner_run": """
query {
    flow_run_by_pk(id: "<RUNNING>") {
        id
        name
        flow_id
        parameters
        context
        version
        scheduled_start_time
        serialized_state
        task_runs(where: { map_index: { _eq: -1 } }) {
            id
            task {
                id
                slug
            }
            version
            serialized_state
        }
        flow {
            project {
                name
                id
            }
        }
    }
}""",
    "runner_settings": """
query {
    flow_run_by_pk(id: "<RUNNING>") {
        flow {
            settings
        }
    }
}""",
    "logs_between": """
query {
    flow_run(where: { id: { _eq: "<RUNNING>" } }) {
        logs(order_by: { timestamp: asc }, where: { _and: [{ timestamp: { _lte: "<T0+3>" } }, { timestamp: { _gt: "<T0+1>" } }] }) {
            timestamp
            message
            level
        }
    }
}""",
    "scheduled_states": """
query {
    flow_run(where: { id: { _eq: "<SCHEDULED>" } }) {
        states(where: { state: { _eq: "Scheduled" } }) {
            start_time
            created
        }
        scheduled_start_time
    }
}""",
    "running_task_runs": """
query {
    task_run(where: { state_start_time: { _is_null: false }, flow_run_id: { _eq: "<RUNNING>" }, flow_run: { state: { _eq: "Running" } } }) {
        state_start_time
    }
}""",
    "run_state": """
query {
    flow_run_by_pk(id: "<DONE>") {
        serialized_state
    }
}""",
    "agents": """
query {
    agent {
        name
        id
        last_queried
        labels
    }
}""",
    "get_flows": """
query {
    flow(where: { _and: { name: { _eq: null }, version: { _eq: null }, project: { name: { _eq: null } } } }, order_by: { name: asc, version: desc }, distinct_on: name, limit: 10) {
        name
        version
        created
        id
        project {
            name
        }
    }
}""",
    "get_projects": """
query {
    project(where: { _and: { name: { _eq: null } } }, order_by: { name: asc }) {
        name
        created
        description
        flows_aggregate(distinct_on: name) {
            aggregate {
                count
            }
        }
    }
}""",
    "get_flow_runs": """
query {
    flow_run(where: { flow: { _and: { name: { _eq: null }, project: { name: { _eq: null } } } } }, limit: 10, order_by: { created: desc }) {
        flow {
            name
        }
        id
        created
        state
        name
        start_time
    }
}""",
    "get_tasks": """
query {
    task(where: { _and: { name: { _eq: null }, flow: { name: { _eq: "alpha" }, version: { _eq: null }, project: { name: { _eq: null } } } } }, limit: 10, order_by: { created: desc }) {
        name
        created
        flow {
            name
            version
        }
        mapped
        type
    }
}""",
    "get_logs": """
query {
    flow_run(where: { name: { _eq: "run" }, id: { _eq: null } }, order_by: { start_time: desc }) {
        logs(order_by: { timestamp: asc }) {
            timestamp
            message
            level
        }
        start_time
    }
}""",
    "describe_flow": """
query {
    flow(where: { _and: { name: { _eq: "alpha" }, version: { _eq: null }, project: { name: { _eq: null } } } }, order_by: { name: asc, version: desc }, distinct_on: name) {
        name
        version
        project {
            name
        }
        created
        description
        parameters
        archived
        storage
        environment
    }
}""",
}


async def test_the_queries_prefect_sends_validate_and_answer(gql: GraphQL, world: World) -> None:
    soon = datetime.now(UTC) + timedelta(hours=1)
    values = {
        "<ALPHA2>": world.alpha2.id,
        "<PROJECT>": world.alpha2.project_id,
        "<SCHEDULED>": world.scheduled.id,
        "<RUNNING>": world.running.id,
        "<DONE>": world.done.id,
        "<SOON>": iso(soon),
        "<T0+1>": iso(T0 + timedelta(seconds=1)),
        "<T0+2>": iso(T0 + timedelta(seconds=2)),
        "<T0+3>": iso(T0 + timedelta(seconds=3)),
    }
    answers: dict[str, Any] = {}
    for name, text in PREFECT_QUERIES.items():
        query = re.sub(r"<[A-Z0-9+]+>", lambda m: values[m.group(0)], text)
        answers[name] = await gql.data(query)

    tenant = answers["tenant"]["tenant"]
    assert len(tenant) == 1
    assert re.fullmatch(r"[0-9a-f-]{36}", tenant[0]["id"])
    assert answers["tenant_slug"]["tenant"] == [{"slug": "default", "id": tenant[0]["id"]}]
    assert answers["project_by_name"] == {"project": [{"id": world.alpha2.project_id}]}
    assert answers["flow_group_id"] == {"flow_by_pk": {"flow_group_id": world.alpha2.flow_group_id}}
    assert answers["register_latest_version"] == {"flow": [{"id": world.alpha2.id, "version": 2}]}

    [flow] = answers["run_flow_by_name"]["flow"]
    assert (flow["id"], flow["archived"], flow["project"]) == (world.alpha2.id, False, {"name": "proj"})
    assert flow["settings"] == {"heartbeat_enabled": True, "lazarus_enabled": True, "version_locking_enabled": False}
    assert (flow["storage"]["type"], flow["serialized_flow"]["name"]) == ("script", "alpha")
    assert flow["flow_group"] == {"labels": None}
    assert isinstance(flow["run_config"], dict)

    [view] = answers["flow_run_view"]["flow_run"]
    assert view["serialized_state"] == prefect_state("Scheduled", "Flow run scheduled.", start_time=iso(T0))
    assert [s["serialized_state"]["type"] for s in view["states"]] == ["Scheduled"]
    assert view["states"][0]["serialized_state"]["start_time"] == iso(T0)
    assert (view["name"], view["flow_id"], view["labels"]) == ("sched", world.alpha2.id, [])
    assert (view["parameters"], view["context"]) == ({}, {})
    assert datetime.fromisoformat(view["updated"]).tzinfo is not None

    assert answers["logs_until"] == {
        "flow_run": [
            {
                "logs": [
                    {"timestamp": iso(T0 + timedelta(seconds=1)), "message": "one", "level": "INFO"},
                    {"timestamp": iso(T0 + timedelta(seconds=2)), "message": "two", "level": "WARNING"},
                ]
            }
        ]
    }
    assert [log["message"] for log in answers["logs_between"]["flow_run"][0]["logs"]] == ["two", "three"]

    # The agent's query: the Scheduled run, and the Running one (its task runs started before "soon").
    agent_runs = {r["name"]: r for r in answers["agent_runs"]["flow_run"]}
    assert set(agent_runs) == {"sched", "run"}
    assert (agent_runs["run"]["state"], agent_runs["run"]["version"]) == ("Running", 3)
    assert agent_runs["run"]["serialized_state"] == prefect_state("Running", "going")
    assert agent_runs["run"]["flow"]["storage"]["type"] == "script"
    assert agent_runs["run"]["flow"]["environment"] is None
    assert len(agent_runs["run"]["task_runs"]) == 3
    assert all(re.fullmatch(r"[0-9a-f-]{36}", t["task_id"]) for t in agent_runs["run"]["task_runs"])
    assert {t["serialized_state"]["type"] for t in agent_runs["run"]["task_runs"]} == {"Running", "Pending"}

    assert answers["runner_flow"]["flow_run"][0]["version"] == 3
    assert answers["runner_flow"]["flow_run"][0]["flow"]["name"] == "alpha"
    run = answers["runner_run"]["flow_run_by_pk"]
    assert run["id"] == world.running.id
    assert run["flow"] == {"project": {"name": "proj", "id": world.alpha2.project_id}}
    assert sorted(t["task"]["slug"] for t in run["task_runs"]) == ["a-1", "b-1", "c-1"]
    by_slug = {t["task"]["slug"]: t for t in run["task_runs"]}
    assert (by_slug["a-1"]["id"], by_slug["a-1"]["version"]) == (world.task_a, 2)
    assert answers["runner_settings"]["flow_run_by_pk"]["flow"]["settings"]["heartbeat_enabled"] is True

    [states] = answers["scheduled_states"]["flow_run"]
    assert states["scheduled_start_time"] == iso(T0)
    assert states["states"][0]["start_time"] == iso(T0)
    assert len(answers["running_task_runs"]["task_run"]) == 3
    assert answers["run_state"]["flow_run_by_pk"]["serialized_state"] == prefect_state("Success", "ok")
    [agent] = answers["agents"]["agent"]
    assert (agent["id"], agent["name"], agent["labels"]) == (AGENT_ID, "ag", ["vm"])
    assert agent["last_queried"] is not None

    # prefect get / describe: null operands are no condition; distinct_on name keeps the newest version.
    assert [(f["name"], f["version"]) for f in answers["get_flows"]["flow"]] == [
        ("alpha", 2),
        ("beta", 1),
        ("gamma", 1),
    ]
    assert [(p["name"], p["flows_aggregate"]["aggregate"]["count"]) for p in answers["get_projects"]["project"]] == [
        ("other", 1),
        ("proj", 2),
    ]
    assert rows(answers["get_flow_runs"], "flow_run") == ["done", "run", "sched"]
    assert answers["get_flow_runs"]["flow_run"][0]["flow"] == {"name": "beta"}
    tasks = answers["get_tasks"]["task"]
    assert sorted(t["name"] for t in tasks) == ["a", "a", "b", "b", "c"]
    assert all(t["flow"]["name"] == "alpha" and t["mapped"] is False for t in tasks)
    [logs] = answers["get_logs"]["flow_run"]
    assert [log["message"] for log in logs["logs"]] == ["one", "two", "three"]
    [described] = answers["describe_flow"]["flow"]
    assert (described["name"], described["version"], described["project"]) == ("alpha", 2, {"name": "proj"})


# ---- where ------------------------------------------------------------------------------------------------------------


async def test_every_comparison_operator(gql: GraphQL, world: World) -> None:
    before, at = iso(T0 - timedelta(seconds=1)), iso(T0)
    cases: list[tuple[str, list[str]]] = [
        ('{name: {_eq: "run"}}', ["run"]),
        ('{name: {_neq: "run"}}', ["done", "sched"]),
        ('{name: {_in: ["run", "done", "nope"]}}', ["done", "run"]),
        ('{name: {_nin: ["run"]}}', ["done", "sched"]),
        ("{name: {_in: []}}", []),
        ("{name: {_nin: []}}", ["done", "run", "sched"]),
        ('{name: {_gt: "run"}}', ["sched"]),
        ('{name: {_gte: "run"}}', ["run", "sched"]),
        ('{name: {_lt: "run"}}', ["done"]),
        ('{name: {_lte: "run"}}', ["done", "run"]),
        ('{name: {_like: "r%"}}', ["run"]),
        ('{name: {_like: "R%"}}', []),
        ('{name: {_like: "d_ne"}}', ["done"]),
        ('{name: {_ilike: "R%"}}', ["run"]),
        ('{name: {_nlike: "%n"}}', ["done", "sched"]),
        ('{name: {_nilike: "S%"}}', ["done", "run"]),
        # timestamps compare as instants, whatever the offset written; no offset means UTC
        (f'{{scheduled_start_time: {{_gt: "{before}"}}}}', ["sched"]),
        (f'{{scheduled_start_time: {{_gte: "{at}"}}}}', ["sched"]),
        (f'{{scheduled_start_time: {{_lt: "{at}"}}}}', ["done", "run"]),
        ('{scheduled_start_time: {_lte: "2030-01-01T12:00:00"}}', ["done", "run", "sched"]),
        ('{scheduled_start_time: {_eq: "2030-01-01T13:00:00+01:00"}}', ["sched"]),
        ('{scheduled_start_time: {_neq: "2030-01-01T12:00:00Z"}}', ["done", "run"]),
        ('{scheduled_start_time: {_in: ["2030-01-01T12:00:00Z"]}}', ["sched"]),
        (f'{{state_start_time: {{_gte: "{at}"}}}}', ["sched"]),
        # integers, booleans, ids
        ("{version: {_gt: 1}}", ["done", "run"]),
        ("{version: {_lte: 1}}", ["sched"]),
        ("{version: {_in: [1, 2]}}", ["sched"]),
        ("{auto_scheduled: {_eq: false}}", ["done", "run", "sched"]),
        ("{auto_scheduled: {_neq: false}}", []),
        ("{agent_id: {_is_null: true}}", ["done", "sched"]),
        ("{agent_id: {_is_null: false}}", ["run"]),
        (f'{{agent_id: {{_eq: "{AGENT_ID}"}}}}', ["run"]),
        (f'{{id: {{_eq: "{world.running.id}"}}}}', ["run"]),
        (f'{{flow_id: {{_in: ["{world.beta.id}"]}}}}', ["done"]),
        (f'{{flow_id: {{_nin: ["{world.beta.id}"]}}}}', ["run", "sched"]),
        ("{heartbeat: {_is_null: true}}", ["done", "run", "sched"]),
        # JSON
        ('{labels: {_contains: ["vm"]}}', ["run"]),
        ('{labels: {_eq: ["vm"]}}', ["run"]),
        ('{labels: {_neq: ["vm"]}}', ["done", "sched"]),
        ("{parameters: {_eq: {}}}", ["done", "run", "sched"]),
        ("{run_config: {_is_null: true}}", ["done", "run", "sched"]),
    ]
    for where, expected in cases:
        assert await run_names(gql, where) == expected, where
    flows = await gql.data('{ flow(where: {storage: {_has_key: "path"}, archived: {_eq: true}}) { version } }')
    assert flows == {"flow": [{"version": 1}]}
    assert await gql.data(
        '{ flow(where: {storage: {_contains: {type: "script"}}, name: {_eq: "beta"}}) { name } }'
    ) == {"flow": [{"name": "beta"}]}
    assert await gql.data('{ flow(where: {storage: {_has_key: "nothing"}}) { name } }') == {"flow": []}
    groups = await gql.data("{ null: flow_group_aggregate(where: {labels: {_is_null: true}}) { aggregate { count } } }")
    assert groups == {"null": {"aggregate": {"count": 3}}}


async def test_and_or_not_their_object_forms_and_null_semantics(gql: GraphQL, world: World) -> None:
    cases: list[tuple[str, list[str]]] = [
        ('{_and: [{name: {_neq: "run"}}, {name: {_neq: "done"}}]}', ["sched"]),
        ('{_and: {name: {_neq: "run"}, state: {_eq: "Success"}}}', ["done"]),
        ('{_or: [{name: {_eq: "run"}}, {state: {_eq: "Success"}}]}', ["done", "run"]),
        ('{_or: {name: {_eq: "run"}}}', ["run"]),
        ('{_not: {name: {_eq: "run"}}}', ["done", "sched"]),
        ('{_not: {_or: [{name: {_eq: "run"}}, {name: {_eq: "done"}}]}}', ["sched"]),
        (
            '{_and: [{_or: [{name: {_eq: "run"}}, {name: {_eq: "sched"}}]}, {_not: {state: {_eq: "Scheduled"}}}]}',
            ["run"],
        ),
        # Hasura v1: a null operand is no condition, {} is true
        ("{name: {_eq: null}}", ["done", "run", "sched"]),
        ("{name: null, _and: null, _or: null, _not: null}", ["done", "run", "sched"]),
        ("{name: {}}", ["done", "run", "sched"]),
        ("{}", ["done", "run", "sched"]),
        ('{_and: [{}, {name: {_eq: "run"}}]}', ["run"]),
        ('{_or: [{}, {name: {_eq: "run"}}]}', ["done", "run", "sched"]),
        ('{_or: [{name: {_eq: null}}, {name: {_eq: "run"}}]}', ["done", "run", "sched"]),
        ('{name: {_eq: null, _neq: "run"}}', ["done", "sched"]),
        ("{_and: []}", ["done", "run", "sched"]),
        ("{_or: []}", []),
        ("{_not: {}}", []),
    ]
    for where, expected in cases:
        assert await run_names(gql, where) == expected, where
    # The same through variables, where _or is given one object instead of a list.
    variables = {"w": {"_or": {"name": {"_eq": "run"}}, "state": {"_eq": None}}}
    assert await run_names(gql, "$w", variables) == ["run"]


async def test_relationship_filters_both_ways(gql: GraphQL, world: World) -> None:
    assert await run_names(gql, '{flow: {name: {_eq: "beta"}}}') == ["done"]
    assert await run_names(gql, '{flow: {project: {name: {_eq: "proj"}}}}') == ["done", "run", "sched"]
    assert await run_names(gql, '{flow: {project: {name: {_eq: "other"}}}}') == []
    assert await run_names(gql, '{task_runs: {state: {_eq: "Running"}}}') == ["run"]
    assert await run_names(gql, '{logs: {level: {_eq: "ERROR"}}}') == ["run"]
    assert await run_names(gql, '{states: {state: {_eq: "Success"}}}') == ["done"]
    assert await run_names(gql, '{states: {state: {_eq: "Submitted"}}, agent: {name: {_eq: "ag"}}}') == ["run"]
    assert await run_names(gql, '{_not: {task_runs: {task: {slug: {_eq: "x-1"}}}}}') == ["run", "sched"]
    # The agent's filter: a Running run counts only when one of its task runs is due.
    due = '{_or: [{state: {_eq: "Scheduled"}}, {state: {_eq: "Running"}, task_runs: {state_start_time: {_lte: "%s"}}}]}'
    assert await run_names(gql, due % "2000-01-01T00:00:00Z") == ["sched"]
    assert await run_names(gql, due % iso(datetime.now(UTC) + timedelta(minutes=1))) == ["run", "sched"]
    assert await gql.data("{ agent_config { id settings } }") == {"agent_config": []}

    async def flows(where: str) -> list[tuple[str, int]]:
        data = await gql.data(
            f"{{ flow(where: {where}, order_by: [{{name: asc}}, {{version: asc}}]) {{ name version }} }}"
        )
        return [(f["name"], f["version"]) for f in data["flow"]]

    assert await flows('{flow_runs: {state: {_eq: "Running"}}}') == [("alpha", 2)]
    assert await flows("{flow_runs: {}}") == [("alpha", 2), ("beta", 1)]
    assert await flows("{_not: {flow_runs: {}}}") == [("alpha", 1), ("gamma", 1)]
    assert await flows('{tasks: {slug: {_eq: "c-1"}}}') == [("alpha", 2)]
    assert await flows("{flow_group: {flows: {version: {_eq: 2}}}}") == [("alpha", 1), ("alpha", 2)]
    assert await flows('{project: {flows: {name: {_eq: "gamma"}}}}') == [("gamma", 1)]

    projects = await gql.data("{ project(where: {flows: {archived: {_eq: true}}}) { name } }")
    assert projects == {"project": [{"name": "proj"}]}
    task_runs = await gql.data(
        '{ task_run(where: {flow_run: {state: {_eq: "Running"}}}, order_by: {task_slug: asc}) { task_slug } }'
    )
    assert rows(task_runs, "task_run", "task_slug") == ["a-1", "b-1", "c-1"]
    by_task = await gql.data('{ task_run(where: {task: {slug: {_eq: "a-1"}}}) { flow_run { name } } }')
    assert sorted(t["flow_run"]["name"] for t in by_task["task_run"]) == ["run", "sched"]
    running = await gql.data('{ task_run(where: {states: {state: {_eq: "Running"}}}) { id } }')
    assert running == {"task_run": [{"id": world.task_a}]}
    logs = await gql.data('{ log(where: {task_run: {task: {slug: {_eq: "a-1"}}}}) { message } }')
    assert logs == {"log": [{"message": "two"}]}
    agents = await gql.data('{ agent(where: {flow_runs: {name: {_eq: "run"}}}) { name } }')
    assert agents == {"agent": [{"name": "ag"}]}
    states = await gql.data(
        '{ flow_run_state(where: {flow_run: {name: {_eq: "done"}}}, order_by: {version: asc}) { state } }'
    )
    assert rows(states, "flow_run_state", "state") == ["Scheduled", "Running", "Success"]


# ---- nested selections, order, pages ----------------------------------------------------------------------------------


async def test_nested_selections(gql: GraphQL, world: World) -> None:
    data = await gql.data(
        f"""{{ flow_run_by_pk(id: "{world.running.id}") {{
            name heartbeat state_start_time
            flow {{ name version version_group_id project {{ name tenant {{ slug }} }} flow_group {{ id settings }} }}
            agent {{ id last_queried }}
            task_runs(order_by: {{task_slug: asc}}) {{ name task_slug map_index task {{ slug flow {{ version }} }}
                states {{ state serialized_state }} logs {{ message }} }}
            states(order_by: {{version: asc}}) {{ state version message }}
            logs(order_by: {{timestamp: desc}}) {{ message level task_run {{ name }} }}
        }} }}"""
    )
    run = data["flow_run_by_pk"]
    assert run["name"] == "run"
    assert run["heartbeat"] is None
    assert datetime.fromisoformat(run["state_start_time"]) > datetime.now(UTC) - timedelta(minutes=5)
    assert run["flow"]["project"] == {"name": "proj", "tenant": {"slug": "default"}}
    assert run["flow"]["version"] == 2
    assert run["flow"]["version_group_id"] == run["flow"]["flow_group"]["id"] == world.alpha2.flow_group_id
    assert run["flow"]["flow_group"]["settings"]["lazarus_enabled"] is True
    assert run["agent"]["id"] == AGENT_ID
    assert [(t["name"], t["task"]["slug"], t["map_index"]) for t in run["task_runs"]] == [
        ("a", "a-1", -1),
        ("b", "b-1", -1),
        ("c", "c-1", -1),
    ]
    assert {t["task"]["flow"]["version"] for t in run["task_runs"]} == {2}
    assert run["task_runs"][0]["states"] == [{"state": "Running", "serialized_state": prefect_state("Running", None)}]
    assert run["task_runs"][0]["logs"] == [{"message": "two"}]
    assert run["task_runs"][1]["states"] == []
    assert [(s["state"], s["version"]) for s in run["states"]] == [("Scheduled", 1), ("Submitted", 2), ("Running", 3)]
    assert run["states"][2]["message"] == "going"
    assert [(log["message"], log["task_run"]) for log in run["logs"]] == [
        ("three", None),
        ("two", {"name": "a"}),
        ("one", None),
    ]
    # Aliases: one relation twice with different arguments.
    data = await gql.data(
        f"""{{ flow_run_by_pk(id: "{world.running.id}") {{
            pending: task_runs(where: {{state: {{_eq: "Pending"}}}}) {{ task_slug }}
            running: task_runs(where: {{state: {{_eq: "Running"}}}}) {{ task_slug }}
        }} }}"""
    )
    assert sorted(t["task_slug"] for t in data["flow_run_by_pk"]["pending"]) == ["b-1", "c-1"]
    assert data["flow_run_by_pk"]["running"] == [{"task_slug": "a-1"}]


async def test_order_by_limit_offset_distinct_on(gql: GraphQL, world: World) -> None:
    async def ordered(order_by: str, extra: str = "") -> list[str]:
        return rows(await gql.data(f"{{ flow_run(order_by: {order_by}{extra}) {{ name }} }}"), "flow_run")

    # One object's keys apply in the order written (not the schema's).
    assert await ordered("{state: asc, name: desc}") == ["run", "sched", "done"]
    assert await ordered("{name: desc, state: asc}") == ["sched", "run", "done"]
    assert await ordered("[{state: desc}, {name: asc}]") == ["done", "sched", "run"]
    # asc puts nulls last, desc first, unless told otherwise.
    assert await ordered("[{agent_id: asc}, {name: asc}]") == ["run", "done", "sched"]
    assert await ordered("[{agent_id: asc_nulls_first}, {name: asc}]") == ["done", "sched", "run"]
    assert await ordered("[{agent_id: desc}, {name: asc}]") == ["done", "sched", "run"]
    assert await ordered("[{agent_id: desc_nulls_last}, {name: asc}]") == ["run", "done", "sched"]
    # By an object relation's column, by an array relation's count.
    assert await ordered("[{flow: {name: desc}}, {name: asc}]") == ["done", "run", "sched"]
    assert await ordered("[{task_runs_aggregate: {count: asc}}, {name: desc}]") == ["done", "sched", "run"]
    assert await ordered("{scheduled_start_time: desc}") == ["sched", "done", "run"]
    # Pages.
    assert await ordered("{name: asc}", ", limit: 2") == ["done", "run"]
    assert await ordered("{name: asc}", ", limit: 2, offset: 1") == ["run", "sched"]
    assert await ordered("{name: asc}", ", offset: 3") == []
    assert await ordered("{name: asc}", ", limit: 0") == []

    flows = await gql.data("{ flow(distinct_on: [name], order_by: [{name: asc}, {version: desc}]) { name version } }")
    assert [(f["name"], f["version"]) for f in flows["flow"]] == [("alpha", 2), ("beta", 1), ("gamma", 1)]
    flows = await gql.data(
        "{ flow(distinct_on: name, order_by: {name: desc, version: asc}, limit: 2) { name version } }"
    )
    assert [(f["name"], f["version"]) for f in flows["flow"]] == [("gamma", 1), ("beta", 1)]
    flows = await gql.data("{ flow(distinct_on: project_id, order_by: {created: asc}) { name version } }")
    assert sorted((f["name"], f["version"]) for f in flows["flow"]) == [("alpha", 1), ("gamma", 1)]
    ranked = await gql.data(
        "{ flow(order_by: [{flow_runs_aggregate: {count: desc}}, {name: asc}, {version: asc}]) { name version } }"
    )
    assert [(f["name"], f["version"]) for f in ranked["flow"]] == [
        ("alpha", 2),
        ("beta", 1),
        ("alpha", 1),
        ("gamma", 1),
    ]

    # Nested lists: each parent's own page, order, filter and distinct values.
    nested = await gql.data(
        """{ flow_run(order_by: {name: asc}) {
            name
            page: task_runs(order_by: {task_slug: desc}, limit: 2, offset: 1) { task_slug }
            first: task_runs(order_by: {task_slug: asc}, limit: 1) { task_slug }
            states: task_runs(distinct_on: state, order_by: {state: asc}) { state }
        } }"""
    )
    assert [(r["name"], [t["task_slug"] for t in r["page"]]) for r in nested["flow_run"]] == [
        ("done", []),
        ("run", ["b-1", "a-1"]),
        ("sched", ["b-1", "a-1"]),
    ]
    assert [[t["task_slug"] for t in r["first"]] for r in nested["flow_run"]] == [["x-1"], ["a-1"], ["a-1"]]
    assert [[t["state"] for t in r["states"]] for r in nested["flow_run"]] == [
        ["Pending"],
        ["Pending", "Running"],
        ["Pending"],
    ]


async def test_by_pk_and_aggregates(gql: GraphQL, world: World) -> None:
    unknown = "00000000-0000-4000-8000-000000000000"
    data = await gql.data(
        f"""{{
            missing: flow_run_by_pk(id: "{unknown}") {{ id }}
            flow: flow_by_pk(id: "{world.alpha1.id}") {{ version archived }}
            task_run: task_run_by_pk(id: "{world.task_a}") {{ name version }}
            agent: agent_by_pk(id: "{AGENT_ID}") {{ name }}
            project: project_by_pk(id: "{world.gamma.project_id}") {{ name }}
            no_agent: agent_by_pk(id: "nobody") {{ name }}
        }}"""
    )
    assert data == {
        "missing": None,
        "flow": {"version": 1, "archived": True},
        "task_run": {"name": "a", "version": 2},
        "agent": {"name": "ag"},
        "project": {"name": "other"},
        "no_agent": None,
    }
    [first] = (await gql.data('{ flow_run_state(where: {state: {_eq: "Success"}}) { id } }'))["flow_run_state"]
    assert (await gql.data(f"{{ flow_run_state_by_pk(id: {first['id']}) {{ state }} }}")) == {
        "flow_run_state_by_pk": {"state": "Success"}
    }

    counts = await gql.data(
        """{
            all: flow_run_aggregate { aggregate { count } }
            scheduled: flow_run_aggregate(where: {state: {_eq: "Scheduled"}}) { aggregate { count } }
            taken: flow_run_aggregate { aggregate { count(columns: [agent_id]) } }
            names: flow_aggregate { aggregate { count(columns: [name], distinct: true) } }
            page: flow_run_aggregate(limit: 2) { aggregate { count } }
            alpha: flow_aggregate(where: {name: {_eq: "alpha"}}, order_by: {version: asc}) {
                aggregate { count } nodes { version }
            }
            task_states: task_run_state_aggregate { aggregate { count } }
        }"""
    )
    assert counts == {
        "all": {"aggregate": {"count": 3}},
        "scheduled": {"aggregate": {"count": 1}},
        "taken": {"aggregate": {"count": 1}},
        "names": {"aggregate": {"count": 3}},
        "page": {"aggregate": {"count": 2}},
        "alpha": {"aggregate": {"count": 2}, "nodes": [{"version": 1}, {"version": 2}]},
        "task_states": {"aggregate": {"count": 1}},
    }
    nested = await gql.data(
        """{ project(order_by: {name: desc}) {
            name
            flows_aggregate { aggregate { count } }
            active: flows_aggregate(where: {archived: {_eq: false}}) { aggregate { count } nodes { name } }
            flows(order_by: {name: asc, version: asc}) {
                version
                flow_runs_aggregate { aggregate { count } }
                tasks_aggregate { aggregate { count } }
            }
        } }"""
    )
    assert [
        (p["name"], p["flows_aggregate"]["aggregate"]["count"], p["active"]["aggregate"]["count"])
        for p in nested["project"]
    ] == [("proj", 3, 2), ("other", 1, 1)]
    assert sorted(f["name"] for f in nested["project"][0]["active"]["nodes"]) == ["alpha", "beta"]
    assert [
        (f["version"], f["flow_runs_aggregate"]["aggregate"]["count"], f["tasks_aggregate"]["aggregate"]["count"])
        for f in nested["project"][0]["flows"]
    ] == [(1, 0, 2), (2, 2, 3), (1, 1, 1)]


# ---- refusals ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        '{ flow(where: {version: {_eq: "x"}}) { id } }',
        '{ flow_run(where: {scheduled_start_time: {_gt: "yesterday"}}) { id } }',
        '{ flow_run(where: {id: {_eq: "not-a-uuid"}}) { id } }',
        "{ flow(where: {no_such_column: {_eq: 1}}) { id } }",
        "{ flow(order_by: {name: sideways}) { id } }",
        "{ flow(distinct_on: storage) { id } }",
        "{ flow(limit: 1.5) { id } }",
        "{ flow_run { no_such_field } }",
        "{ flow_run_by_pk { id } }",
    ],
)
async def test_wrong_types_are_refused_before_anything_runs(gql: GraphQL, query: str) -> None:
    response = await gql.post(query)
    assert response.status_code == 400, response.text
    assert {e["extensions"]["code"] for e in response.json()["errors"]} == {"VALIDATION_ERROR"}
    assert await gql.data("{ hello }") == {"hello": "👋"}


async def test_wrong_types_in_variables_are_refused(gql: GraphQL) -> None:
    query = "query($w: flow_bool_exp) { flow(where: $w) { id } }"
    for where in ({"version": {"_eq": "x"}}, {"created": {"_lt": "soon"}}, {"nope": {"_eq": 1}}):
        body = (await gql.post(query, {"w": where})).json()
        assert body["data"] is None, body  # nothing ran
        assert [e["extensions"]["code"] for e in body["errors"]] == ["VALIDATION_ERROR"]
    assert await gql.data(query, {"w": {"version": {"_eq": 1}}}) == {"flow": []}


async def test_a_page_of_a_million_is_refused_and_the_gateway_keeps_serving(gql: GraphQL, world: World) -> None:
    for query in (
        "{ flow_run(limit: 1000000) { id } }",
        "{ flow_run(limit: -1) { id } }",
        "{ flow_run(offset: -1) { id } }",
        "{ flow_run { task_runs(limit: 1000000) { id } } }",
        "{ flow_run_aggregate(limit: 1000000) { aggregate { count } } }",
    ):
        assert await gql.error_codes(query) == ["VALIDATION_ERROR"], query
    assert len((await gql.data("{ flow_run(limit: 1000) { id } }"))["flow_run"]) == 3


class TestPageSize:
    """With a page size of 2: no limit means 2, for nested lists too; counts are not pages."""

    @pytest.fixture
    def settings(self, settings: Settings, database_url: str) -> Settings:
        # database_url named here too: pytest parametrizes by the overriding fixture's own arguments
        assert settings.database_url == database_url
        return settings.model_copy(update={"gateway": settings.gateway.model_copy(update={"max_page_size": 2})})

    async def test_pages_are_capped(self, gql: GraphQL, world: World) -> None:
        data = await gql.data(
            """{ flow_run(order_by: {name: desc}) { name task_runs(order_by: {task_slug: asc}) { task_slug } }
                 flow_run_aggregate { aggregate { count } } }"""
        )
        assert [(r["name"], [t["task_slug"] for t in r["task_runs"]]) for r in data["flow_run"]] == [
            ("sched", ["a-1", "b-1"]),
            ("run", ["a-1", "b-1"]),
        ]
        assert data["flow_run_aggregate"] == {"aggregate": {"count": 3}}
        assert await gql.error_codes("{ flow_run(limit: 3) { id } }") == ["VALIDATION_ERROR"]
        assert await gql.error_codes("{ flow_run { task_runs(limit: 3) { id } } }") == ["VALIDATION_ERROR"]
        assert rows(await gql.data("{ flow_run(order_by: {name: asc}, offset: 2) { name } }"), "flow_run") == ["sched"]


# ---- batch loading ----------------------------------------------------------------------------------------------------


async def test_nested_selections_cost_one_statement_per_relation_and_level(
    gql: GraphQL, world: World, client: AsyncClient
) -> None:
    for i in range(47):
        await client.create_flow_run(world.alpha2.id, run_name=f"more-{i:02d}")
    with counting() as statements:
        data = await gql.data(
            """{ flow_run(limit: 50, order_by: {name: asc}) {
                id name serialized_state
                flow { name project { name } }
                task_runs { id version serialized_state task_id task { slug } }
                states { state }
                logs { message }
            } }"""
        )
    runs = data["flow_run"]
    assert len(runs) == 50
    assert sum(len(r["task_runs"]) for r in runs) == 1 + 3 + 3 + 47 * 3
    assert all(t["task"]["slug"] for r in runs for t in r["task_runs"])
    assert all(r["flow"]["project"]["name"] == "proj" for r in runs)
    # flow_run, flow, project, task_runs, task, states, logs
    assert statements.count == 7
    with counting() as statements:
        await gql.data("{ flow_run(limit: 50) { id task_runs { id version serialized_state } } }")
    assert statements.count == 2


async def test_many_parents_are_loaded_in_chunks_with_the_same_answer(
    gql: GraphQL, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    query = """{ flow_run(order_by: {name: asc}) {
        name flow { name } task_runs(order_by: {task_slug: desc}, limit: 2) { task_slug }
        task_runs_aggregate { aggregate { count } } } }"""
    whole = await gql.data(query)
    monkeypatch.setattr(queries, "KEYS_PER_STATEMENT", 2)
    with counting() as statements:
        assert await gql.data(query) == whole
    # The runs; their 2 distinct flows in one statement; task runs and counts of 3 runs in two each.
    assert statements.count == 1 + 1 + 2 + 2
    assert [len(r["task_runs"]) for r in whole["flow_run"]] == [1, 2, 2]
    assert [r["task_runs_aggregate"]["aggregate"]["count"] for r in whole["flow_run"]] == [1, 3, 3]
