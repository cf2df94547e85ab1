"""The pieces of /metrics and of the services' log lines, without a server: the cheap histogram,
a component's collection (and a failing scrape-time gauge), the merge of several services,
the query /metrics takes, `flowbus status`'s summary, and the text and JSON log formats."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client.parser import text_string_to_metric_families

from flowbus.cli.status import Endpoint, render, summarize
from flowbus.runtime.log_format import configure_logging, current_service, run_context
from flowbus.runtime.metrics import BATCH_BUCKETS, ComponentMetrics, Families, Histogram, label_set, subject_label
from flowbus.runtime.metrics import render as exposition
from flowbus.runtime.metrics_http import query_names
from flowbus.settings import Settings


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_histogram_buckets_are_cumulative_and_bounds_inclusive() -> None:
    histogram = Histogram(BATCH_BUCKETS)
    for size in (1, 2, 3, 256, 300):
        histogram.observe(size)
    buckets = dict(histogram.buckets())
    assert buckets["1.0"] == 1  # a value equal to a bound is in its bucket (le)
    assert buckets["2.0"] == 2
    assert buckets["4.0"] == 3
    assert buckets["256.0"] == 4
    assert buckets["+Inf"] == 5
    assert histogram.count == 5
    assert histogram.sum == 562


def test_labels_never_carry_ids() -> None:
    assert subject_label("flowbus.cmd.state.set_flow_run_state") == "flowbus.cmd.state.set_flow_run_state"
    assert subject_label("flowbus.hb.flow_run.0190-abc") == "flowbus.hb.flow_run"
    assert label_set(["gpu", "eu", "gpu"]) == "eu,gpu"
    assert label_set([]) == "(none)"


async def test_a_component_reports_its_counters_and_leaves_out_a_failing_gauge() -> None:
    metrics = ComponentMetrics("state", scrape_timeout=0.05)
    stored = metrics.counter("flowbus_log_records_stored", "Records stored.")
    assert metrics.counter("flowbus_log_records_stored", "Records stored.") is stored  # a restarted loop keeps it
    stored.value += 3

    async def good(f: Families) -> None:
        f.gauge("flowbus_flow_runs", "Runs.", ["state"]).add(2, "Scheduled")

    async def broken(f: Families) -> None:
        raise RuntimeError("database away")

    async def slow(f: Families) -> None:
        await asyncio.sleep(10)

    metrics.add_scrape("good", good)
    metrics.add_scrape("broken", broken)
    metrics.add_scrape("slow", slow)
    body, content_type = await exposition([metrics])
    assert content_type.startswith("text/plain")
    seen = samples(body.decode())
    state = ("service", "state")
    assert seen[("flowbus_log_records_stored_total", frozenset({state}))] == 3
    assert seen[("flowbus_flow_runs", frozenset({state, ("state", "Scheduled")}))] == 2
    assert seen[("flowbus_metrics_scrape_errors_total", frozenset({state, ("source", "broken")}))] == 1
    assert seen[("flowbus_metrics_scrape_errors_total", frozenset({state, ("source", "slow")}))] == 1
    assert ("flowbus_event_loop_lag_seconds_count", frozenset({state})) in seen


async def test_services_of_one_process_merge_into_one_family_each() -> None:
    first, second = ComponentMetrics("registration"), ComponentMetrics("scheduler")
    for metrics in (first, second):
        metrics.counter("flowbus_runs_created", "Runs.").value += 1
    body, _ = await exposition([first, second])
    text = body.decode()
    assert text.count("# TYPE flowbus_runs_created_total counter") == 1
    assert text.count("# TYPE process_resident_memory_bytes gauge") <= 1  # once (Linux only)
    seen = samples(text)
    assert {labels for name, labels in seen if name == "flowbus_runs_created_total"} == {
        frozenset({("service", "registration")}),
        frozenset({("service", "scheduler")}),
    }
    only, _ = await exposition([first], names=["flowbus_runs_created"])
    assert {f.name for f in text_string_to_metric_families(only.decode())} == {"flowbus_runs_created"}


@pytest.mark.parametrize(
    ("query", "complaint"),
    [
        (b"format=json", "unknown query parameter 'format'"),
        (b"name[]=1abc", "not a metric name"),
        (b"name%5B%5D=a+b", "not a metric name"),
        (b"name[]=" + b"a" * 5000, "over 4096 bytes"),
    ],
)
def test_metrics_takes_only_metric_names(query: bytes, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        query_names(query)


def test_metrics_query_names() -> None:
    assert query_names(b"") == []
    assert query_names(b"name[]=flowbus_runs_created&name%5B%5D=up") == ["flowbus_runs_created", "up"]


def test_status_summary_keeps_one_value_per_service_and_names_what_is_down() -> None:
    def sample(name: str, value: float, **labels: str) -> tuple[str, dict[str, str], float]:
        return (name, labels, value)

    scheduler = [
        sample("flowbus_service_nats_connected", 1, service="scheduler"),
        sample("flowbus_runq_due_runs", 2, service="scheduler", labels="gpu"),
        sample("flowbus_runq_due_runs", 1, service="scheduler", labels="(none)"),
        sample("flowbus_runq_oldest_due_seconds", 75, service="scheduler", labels="gpu"),
        sample("flowbus_runq_unmatched_due_runs", 2, service="scheduler", labels="gpu"),
        sample("flowbus_runq_unmatched_due_runs", 0, service="scheduler", labels="(none)"),
        sample("flowbus_late_runs", 1, service="scheduler"),
        sample("flowbus_outbox_backlog_rows", 3, service="scheduler"),
        sample("flowbus_outbox_oldest_age_seconds", 40, service="scheduler"),
    ]
    # Two processes of run_creation: its outbox (shared by both) counts once.
    creation = [
        sample("flowbus_service_nats_connected", 1, service="run_creation"),
        sample("flowbus_outbox_backlog_rows", 4, service="run_creation"),
    ]
    state = [
        sample("flowbus_service_nats_connected", 0, service="state"),
        sample("flowbus_flow_runs", 1, service="state", state="Running"),
        sample("flowbus_flow_runs", 3, service="state", state="Scheduled"),
    ]
    endpoints = [
        Endpoint("http://a/metrics", ["scheduler"], samples=scheduler),
        Endpoint("http://b/metrics", ["run_creation"], samples=creation),
        Endpoint("http://c/metrics", ["run_creation"], samples=creation),
        Endpoint("http://d/metrics", ["state"], samples=state),
        Endpoint("http://e/metrics", ["heartbeat"], error="Connection refused"),
    ]
    summary = summarize(endpoints)
    assert summary["services"]["up"] == ["run_creation", "scheduler"]
    assert summary["services"]["disconnected"] == ["state"]
    assert summary["services"]["down"] == [
        {"url": "http://e/metrics", "services": ["heartbeat"], "error": "Connection refused"}
    ]
    assert summary["agents_online"] is None  # the heartbeat service did not answer
    assert summary["runs"] == {"Scheduled": 3, "Running": 1}
    assert summary["due"] == {"runs": 3, "oldest_seconds": 75, "no_agent_for": {"gpu": 2}}
    assert summary["late_runs"] == 1
    assert summary["outbox"] == {"rows": 7, "oldest_seconds": 40}
    assert render(summary) == [
        "Services:     2 up: run_creation, scheduler; not connected to NATS: state",
        "              DOWN: heartbeat (http://e/metrics: Connection refused)",
        "Agents:       ? online",
        "Runs:         Scheduled 3, Running 1",
        "Due, waiting: 3, the oldest due 1m15s ago; no online agent can take: gpu (2)",
        "Late runs:    1",
        "Outbox:       7 rows waiting, the oldest 40s old",
    ]


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    names = ("", "flowbus", "flowbus_services", "x")
    handlers, levels = list(root.handlers), {n: logging.getLogger(n).level for n in names}
    yield
    root.handlers[:] = handlers
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def test_json_lines_carry_service_run_and_trace(restore_logging: None) -> None:
    out = io.StringIO()
    configure_logging(
        "up", log_format="json", levels={"state": "DEBUG"}, stream=out, packages=("flowbus", "flowbus_services")
    )
    log = logging.getLogger("flowbus.runtime.example")
    tracer = TracerProvider().get_tracer("test")
    token = current_service.set("state")
    try:
        with tracer.start_as_current_span("work") as span, run_context("run-1"):
            log.debug("kept: state is at DEBUG", extra={"batch": 3})
        context = span.get_span_context()
    finally:
        current_service.reset(token)
    log.debug("dropped: up is at INFO")
    logging.getLogger("flowbus_services.heartbeat.zombies").info("a heartbeat line, by its logger's name")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("failed")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(lines) == 3, lines
    first = lines[0]
    assert first["service"] == "state"
    assert first["flow_run_id"] == "run-1"
    assert first["trace_id"] == format(context.trace_id, "032x")
    assert first["span_id"] == format(context.span_id, "016x")
    assert first["batch"] == 3
    assert first["level"] == "DEBUG"
    assert first["time"].endswith("Z")
    assert lines[1]["service"] == "heartbeat"
    assert "trace_id" not in lines[1]
    assert "flow_run_id" not in lines[1]
    assert lines[2]["service"] == "up"
    assert "RuntimeError: boom" in lines[2]["exception"]
    assert trace.get_current_span().get_span_context().is_valid is False


def test_text_lines_are_readable(restore_logging: None) -> None:
    out = io.StringIO()
    configure_logging("agent", stream=out)
    with run_context("run-2"):
        logging.getLogger("flowbus.agent").info("Flow run %s: started", "run-2")
    logging.getLogger("x").info("another library's INFO: left out")
    logging.getLogger("x").warning("another library's WARNING: kept")
    lines = out.getvalue().splitlines()
    assert len(lines) == 2, lines
    assert lines[0].endswith(" INFO    [agent] flowbus.agent: Flow run run-2: started run=run-2")
    assert "[agent] x: another library's WARNING: kept" in lines[1]


def test_log_settings_refuse_an_unknown_level_and_take_any_case(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWBUS_LOG_FORMAT", "JSON")
    monkeypatch.setenv("FLOWBUS_LOG_LEVELS", '{"state": "debug"}')
    settings = Settings()
    assert (settings.log_format, settings.log_levels) == ("json", {"state": "DEBUG"})
    monkeypatch.setenv("FLOWBUS_LOG_LEVEL", "loud")
    with pytest.raises(ValueError, match="unknown log level 'loud': choose from DEBUG, INFO"):
        Settings()
    with pytest.raises(ValueError, match="unknown log level"):
        configure_logging("up", level="chatty")
