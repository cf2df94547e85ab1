"""/metrics of the services, in this process, against the real nats-server and database.

Known work (3 runs created, 2 state transitions, one refusal in each
service, 2 log records), then a scrape: every counter moved by exactly that
work, and the scrape-time gauges (run queues, runs by state, agents online)
say what the database holds. Bad requests to /metrics get a clear answer.
The JSON log lines of one run carry its run id and the caller's trace id.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from faststream.asgi import AsgiFastStream
from nats.aio.client import Client
from prometheus_client.parser import text_string_to_metric_families

from flowbus import subjects
from flowbus.client import AsyncClient
from flowbus.runtime.log_format import configure_logging
from flowbus.runtime.metrics_http import process_app
from flowbus.runtime.service import service_context
from flowbus.schemas.common import NotFound, VersionLockingError
from flowbus.schemas.runs import LogBatch, LogRecord
from flowbus.settings import Settings
from flowbus.states import StateType
from flowbus_services.registry import build_service_app
from tests.helpers import register, unique
from tests.helpers.waiting import eventually

SERVICES = ("registration", "run_creation", "state", "heartbeat", "scheduler")
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
async def apps(settings: Settings) -> AsyncIterator[dict[str, AsgiFastStream]]:
    """The services but the gateway, each app kept to scrape it."""
    built: dict[str, AsgiFastStream] = {}
    async with AsyncExitStack() as stack:
        for name in SERVICES:
            built[name] = await stack.enter_async_context(build_service_app(name, settings))
        yield built


async def get(app: Any, path: str = "/metrics", **kwargs: Any) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://service") as http:
        return await http.request(kwargs.pop("method", "GET"), path, **kwargs)


async def scrape(app: Any) -> Samples:
    response = await get(app)
    assert response.status_code == 200, response.text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


async def test_counters_move_by_exactly_the_work_done(apps: dict[str, AsgiFastStream], nc: Client) -> None:
    creation, state, scheduler, heartbeat = apps["run_creation"], apps["state"], apps["scheduler"], apps["heartbeat"]
    settings = service_context(creation).settings
    label = unique("metrics")
    async with AsyncClient(settings) as client:
        flow = await register(client, unique("p"), "f", labels=[label])
        before = {name: await scrape(app) for name, app in apps.items()}

        runs = [await client.create_flow_run(flow.id) for _ in range(3)]
        with pytest.raises(NotFound):
            await client.create_flow_run("no-such-flow")
        v = (await client.set_flow_run_state(runs[0], 1, StateType.SUBMITTED, "claimed")).version
        await client.set_flow_run_state(runs[0], v, StateType.RUNNING, "running")
        with pytest.raises(VersionLockingError):
            await client.set_flow_run_state(runs[1], 7, StateType.SUBMITTED, "stale")
        records = [
            LogRecord(flow_run_id=runs[0], timestamp=datetime.now(UTC), name="t", level="INFO", message=f"m{i}")
            for i in range(2)
        ]
        await nc.jetstream().publish(subjects.logs(runs[0]), LogBatch(records=records).model_dump_json().encode())

        stored = "flowbus_log_records_stored_total"
        await eventually(
            lambda: scrape(state),
            "the state service stored the two log records",
            until=lambda s: delta(before["state"], s, stored, service="state") >= 2,
        )
        after = {name: await scrape(app) for name, app in apps.items()}

    rc, st = {"service": "run_creation"}, {"service": "state"}
    create = subjects.RunCreationCommands.CREATE_FLOW_RUN
    set_state = subjects.StateCommands.SET_FLOW_RUN_STATE
    b, a = before["run_creation"], after["run_creation"]
    assert delta(b, a, "flowbus_runs_created_total", **rc) == 3
    assert delta(b, a, "flowbus_state_transitions_total", **rc, kind="flow_run", state="Scheduled") == 3
    assert delta(b, a, "flowbus_refusals_total", **rc, subject=create, code="NOT_FOUND") == 1
    assert delta(b, a, "flowbus_command_duration_seconds_count", **rc, subject=create) == 4
    # Each command went through one group commit: the batch sizes add up to the commands.
    assert delta(b, a, "flowbus_group_commit_batch_size_sum", **rc, committer="create_flow_run") == 4

    b, a = before["state"], after["state"]
    assert delta(b, a, "flowbus_runs_created_total", **st) == 0
    for entered in ("Submitted", "Running"):
        assert delta(b, a, "flowbus_state_transitions_total", **st, kind="flow_run", state=entered) == 1
    assert delta(b, a, "flowbus_refusals_total", **st, subject=set_state, code="VERSION_LOCKING_ERROR") == 1
    assert delta(b, a, "flowbus_command_duration_seconds_count", **st, subject=set_state) == 3
    assert delta(b, a, "flowbus_group_commit_batch_size_sum", **st, committer="transitions") == 3
    assert delta(b, a, stored, **st) == 2
    assert value(a, "flowbus_flow_runs", **st, state="Scheduled") == 2
    assert value(a, "flowbus_flow_runs", **st, state="Running") == 1
    assert value(a, "flowbus_service_nats_connected", **st) == 1
    assert value(a, "flowbus_jetstream_publish_failures_total", **st) == 0

    # The database's view, from the scheduler and the heartbeat service: two due runs, no agent for them.
    sc, hb = {"service": "scheduler", "labels": label}, {"service": "heartbeat"}
    assert value(after["scheduler"], "flowbus_runq_due_runs", **sc) == 2
    assert value(after["scheduler"], "flowbus_runq_unmatched_due_runs", **sc) == 2
    assert value(after["scheduler"], "flowbus_runq_oldest_due_seconds", **sc) >= 0
    assert ("flowbus_late_runs", frozenset({("service", "scheduler")})) in after["scheduler"]
    assert value(after["heartbeat"], "flowbus_agents_online", **hb) == 0
    assert value(after["heartbeat"], "flowbus_zombies_killed_total", **hb, outcome="failed") == 0

    # A process's endpoint (what `flowbus up` serves) merges its services, and the process once.
    merged_app = process_app(lambda: [service_context(app).metrics for app in (scheduler, heartbeat)])
    merged = await get(merged_app)
    families = {f.name: f for f in text_string_to_metric_families(merged.text)}
    services = {s.labels.get("service") for s in families["flowbus_service_nats_connected"].samples}
    assert services == {"scheduler", "heartbeat"}
    assert len(families["process_resident_memory_bytes"].samples) == 1
    assert (await get(merged_app, "/healthz")).json() == {"status": "ok"}
    assert (await get(merged_app, "/nowhere")).json()["error"]["code"] == "NOT_FOUND"


async def test_bad_requests_to_metrics_get_a_clear_answer(settings: Settings) -> None:
    app = build_service_app("run_creation", settings)  # not started: /metrics answers all the same

    posted = await get(app, method="POST", content=b"x")
    assert posted.status_code == 405
    assert posted.headers["allow"] == "GET, HEAD"
    assert posted.json() == {
        "ok": False,
        "error": {"code": "METHOD_NOT_ALLOWED", "message": "/metrics answers GET and HEAD, not POST"},
    }
    unknown = await get(app, params={"format": "json"})
    assert unknown.status_code == 400
    assert unknown.json()["error"]["code"] == "VALIDATION_ERROR"
    assert "unknown query parameter 'format'" in unknown.json()["error"]["message"]
    malformed = await get(app, params={"name[]": "1; DROP"})
    assert malformed.status_code == 400
    assert "not a metric name" in malformed.json()["error"]["message"]
    long_query = await get(app, params={"name[]": "a" * 5000})
    assert long_query.status_code == 400

    only = await get(app, params=[("name[]", "flowbus_runs_created"), ("name[]", "flowbus_service_nats_connected")])
    names = {f.name for f in text_string_to_metric_families(only.text)}
    assert names == {"flowbus_runs_created", "flowbus_service_nats_connected"}
    head = await get(app, method="HEAD")
    assert head.status_code == 200
    assert head.content == b""
    openmetrics = await get(app, headers={"accept": "application/openmetrics-text; version=1.0.0"})
    assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
    assert openmetrics.text.endswith("# EOF\n")


async def test_json_log_lines_of_a_run_carry_its_run_id_and_the_callers_trace_id(
    settings: Settings, nc: Client
) -> None:
    logs = io.StringIO()
    saved = {name: logging.getLogger(name).level for name in ("", "flowbus", "flowbus_services")}
    handler = configure_logging("test", log_format="json", levels={"state": "DEBUG"}, stream=logs)
    trace_id, span_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    headers = {"traceparent": f"00-{trace_id}-{span_id}-01"}
    try:
        async with AsyncExitStack() as stack:
            for name in ("registration", "run_creation", "state"):
                await stack.enter_async_context(build_service_app(name, settings))
            async with AsyncClient(settings) as client:
                flow = await register(client, unique("p"), "f", labels=[unique("nobody")])
                run_id = await client.create_flow_run(flow.id)
            # As a traced client sends them: the W3C trace context in the headers.
            claim = {"flow_run_id": run_id, "version": 1, "state": {"type": "Submitted"}}
            reply = await nc.request(
                subjects.StateCommands.SET_FLOW_RUN_STATE, json.dumps(claim).encode(), 10, headers=headers
            )
            assert json.loads(reply.data)["ok"], reply.data
            query = json.dumps({"flow_run_id": run_id}).encode()
            reply = await nc.request(subjects.StateCommands.GET_FLOW_RUN, query, 10, headers=headers)
            assert json.loads(reply.data)["ok"], reply.data
    finally:
        logging.getLogger().removeHandler(handler)
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)

    lines = [json.loads(line) for line in logs.getvalue().splitlines()]
    of_run = [line for line in lines if line.get("flow_run_id") == run_id]
    assert len(of_run) >= 2, lines  # the fast lane's state change and the query
    assert {line["trace_id"] for line in of_run} == {trace_id}
    assert {line["service"] for line in of_run} == {"state"}
    assert all(line["level"] == "DEBUG" for line in of_run)
    subjects_seen = " ".join(line["message"] for line in of_run)
    assert subjects.StateCommands.SET_FLOW_RUN_STATE in subjects_seen
    assert subjects.StateCommands.GET_FLOW_RUN in subjects_seen
    # Every line is one JSON object with the service that wrote it; none of run_creation at INFO per command.
    assert all(line["service"] for line in lines)
    assert not [line for line in lines if line["service"] == "run_creation" and line["level"] in ("INFO", "DEBUG")]
