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
from tests.helpers import register
from tests.helpers.gateway import GraphQL
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
    scheduled = await client.create_flow_run(alpha2.id, run_name="sched", scheduled_start_time=T0)
    running = await client.create_flow_run(alpha2.id, run_name="run", labels=["vm"])
    v = (await client.set_flow_run_state(running.id, 1, StateType.SUBMITTED, agent_id=AGENT_ID)).version
    await client.set_flow_run_state(running.id, v, StateType.RUNNING, "going")
    task_a = next(t for t in (await client.get_flow_run_info(running.id)).task_runs if t.task_slug == "a-1")
    await client.set_task_run_state(task_a.id, 1, StateType.RUNNING)
    done = await client.create_flow_run(beta.id, run_name="done")
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


async def names(gql: GraphQL, query: str, root: str = "flow_run", key: str = "name") -> list[Any]:
    return [row[key] for row in (await gql.data(query))[root]]


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
    assert view["serialized_state"] == {
        "type": "Scheduled",
        "message": "Flow run scheduled.",
        "start_time": iso(T0),
    }
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
    assert agent_runs["run"]["serialized_state"] == {"type": "Running", "message": "going"}
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
    assert answers["run_state"]["flow_run_by_pk"]["serialized_state"] == {"type": "Success", "message": "ok"}
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
