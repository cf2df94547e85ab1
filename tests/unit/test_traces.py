"""Tracing: the home's span files, the run's trace context, and `flowbus trace`.

The file exporter (flowbus.runtime.telemetry.JsonLinesExporter) writes what
`flowbus trace` (flowbus.cli.traces) reads back as a tree; a stored
``traceparent`` parents a later actor's span in the same trace; bad input
(no traces folder, an unknown run id) is one clear line and exit code 1.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.sampling import Decision, ParentBased
from typer.testing import CliRunner

from flowbus.cli import app
from flowbus.cli.traces import read_spans, render, run_traces
from flowbus.runtime import telemetry
from flowbus.settings import Settings


def _provider(folder: Path, service: str) -> TracerProvider:
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(SimpleSpanProcessor(telemetry.JsonLinesExporter(folder, service)))
    return provider


def _write_run_trace(folder: Path, run_id: str) -> str:
    """Three "processes": a CLI span, a service's span under it (through headers), an agent's
    under the service's (through a stored traceparent). Returns the trace id."""
    cli, service, agent = (_provider(folder, f"flowbus-{n}") for n in ("cli", "run_creation", "agent"))
    with cli.get_tracer("t").start_as_current_span("flowbus run") as root:
        headers = telemetry.headers()
    assert headers is not None
    assert "traceparent" in headers
    with service.get_tracer("t").start_as_current_span(
        "create_flow_run", context=telemetry.extract(headers), attributes=telemetry.attributes(run_id, "flow-1")
    ) as created:
        stored = telemetry.traceparent(created)
    with agent.get_tracer("t").start_as_current_span("take_flow_run", context=telemetry.parent_of(stored)):
        with agent.get_tracer("t").start_as_current_span("claim"):
            pass
    for provider in (cli, service, agent):
        provider.shutdown()
    return format(root.get_span_context().trace_id, "032x")


def test_each_process_writes_its_own_json_lines_file(tmp_path: Path) -> None:
    _write_run_trace(tmp_path, "run-1")
    files = sorted(p.name.rsplit("-", 1)[0] for p in tmp_path.glob("*.jsonl"))
    assert files == ["flowbus-agent", "flowbus-cli", "flowbus-run_creation"]
    for path in tmp_path.glob("*.jsonl"):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            assert set(record) >= {"trace_id", "span_id", "parent_id", "name", "service", "start", "end"}


def test_the_run_s_spans_form_one_tree_across_processes(tmp_path: Path) -> None:
    trace_id = _write_run_trace(tmp_path, "run-1")
    _write_run_trace(tmp_path, "run-2")  # another run's trace: not shown
    (tmp_path / "torn.jsonl").write_text('{"trace_id": "x", "span_id"\nnot json\n')  # half-written lines
    trees = run_traces(read_spans(tmp_path), "run-1")
    assert len(trees) == 1
    (root,) = trees[0]
    assert (root.trace_id, root.name, root.service) == (trace_id, "flowbus run", "cli")
    lines = render(trees[0])
    names = [line.split("  [")[0].lstrip("│├└─ ") for line in lines]
    assert names == ["flowbus run", "create_flow_run", "take_flow_run", "claim"]
    assert "[run_creation]" in lines[1]
    assert "[agent]" in lines[3]
    # Indented by depth, each with a duration and an offset.
    assert [len(line) - len(line.lstrip("│├└─ ")) for line in lines] == [0, 3, 6, 9]
    assert all(" ms  +" in line or " s  +" in line for line in lines)


def test_a_span_whose_parent_was_not_written_is_a_root(tmp_path: Path) -> None:
    provider = _provider(tmp_path, "flowbus-agent")
    lost = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    with provider.get_tracer("t").start_as_current_span(
        "take_flow_run", context=telemetry.parent_of(lost), attributes=telemetry.attributes("run-3")
    ):
        pass
    provider.shutdown()
    (roots,) = run_traces(read_spans(tmp_path), "run-3")
    assert [r.name for r in roots] == ["take_flow_run"]
    assert roots[0].trace_id == "0af7651916cd43dd8448eb211c80319c"


def test_no_current_span_means_no_headers_and_no_traceparent() -> None:
    assert telemetry.headers() is None
    assert telemetry.traceparent() is None
    assert telemetry.parent_of(None) is None
    assert telemetry.extract({}) is None
    assert telemetry.extract({"other": "x"}) is None


def test_step_traceparent_continues_the_stored_trace(tmp_path: Path) -> None:
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    saved = (telemetry._config.traces_dir, telemetry._config.configured)
    telemetry._config.traces_dir, telemetry._config.configured = tmp_path, True  # spans go to files
    try:
        step = telemetry.step_traceparent("queue_flow_run", parent, service="unit-test-files", flow_run_id="r")
    finally:
        telemetry._config.traces_dir, telemetry._config.configured = saved
    assert step is not None
    assert step.split("-")[1] == "0af7651916cd43dd8448eb211c80319c"
    assert step.split("-")[2] != "b7ad6b7169203331"
    assert telemetry.step_traceparent("queue_flow_run", None, service="unit-test-files") is None


def test_a_service_that_exports_nowhere_makes_no_span_and_passes_the_context_on() -> None:
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert not telemetry.exporting("unit-test-nowhere")
    assert telemetry.step_traceparent("queue_flow_run", parent, service="unit-test-nowhere") == parent
    made = telemetry.new_traceparent()
    assert telemetry.canonical(made) == made
    assert made.split("-")[1] != parent.split("-")[1]
    # What a client sent is kept only when it is a W3C traceparent (the column holds 55 characters).
    assert telemetry.canonical(parent.upper()) is None
    assert telemetry.canonical("00-" + "x" * 200) is None
    assert telemetry.canonical("") is None


def test_tracing_is_on_for_a_home_whose_endpoint_file_says_so(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    assert telemetry.traces_dir(settings) is None
    settings.endpoint_file.write_text(json.dumps({"nats_url": "nats://127.0.0.1:1", "traces": True}))
    assert telemetry.traces_dir(settings) == tmp_path / "traces"
    settings.endpoint_file.write_text(json.dumps({"nats_url": "nats://127.0.0.1:1", "traces": False}))
    assert telemetry.traces_dir(settings) is None
    assert telemetry.traces_dir(Settings(home=tmp_path, traces=True)) == tmp_path / "traces"


def test_the_sampling_ratio_setting_is_parent_based(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("OTEL_TRACES_SAMPLER", raising=False)
    saved = (telemetry._config.sample_ratio, telemetry._config.configured)
    try:
        telemetry._config.sample_ratio = 0.25
        sampler = telemetry._sampler()
        assert isinstance(sampler, ParentBased)
        # New traces: a quarter of the trace-id space is sampled.
        assert sampler.should_sample(None, 1, "root").decision is Decision.RECORD_AND_SAMPLE
        assert sampler.should_sample(None, (1 << 64) - 1, "root").decision is not Decision.RECORD_AND_SAMPLE
        # A sampled parent's children are, whatever their id: a run's trace is whole or absent.
        parent = telemetry.parent_of("00-0000000000000000ffffffffffffffff-b7ad6b7169203331-01")
        assert sampler.should_sample(parent, (1 << 64) - 1, "child").decision is Decision.RECORD_AND_SAMPLE
        monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
        assert telemetry._sampler() is None  # the SDK reads OTEL_TRACES_SAMPLER itself
    finally:
        telemetry._config.sample_ratio, telemetry._config.configured = saved
    with pytest.raises(ValueError, match="less than or equal to 1"):
        Settings(home=tmp_path, trace_sample_ratio=1.5)


def test_flowbus_trace_prints_the_tree(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FLOWBUS_HOME", str(tmp_path))
    trace_id = _write_run_trace(tmp_path / "traces", "run-1")
    result = CliRunner().invoke(app, ["trace", "run-1"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == f"trace {trace_id}"
    assert lines[1].startswith("flowbus run  [cli]  ")


def test_flowbus_trace_of_an_unknown_run_says_so(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FLOWBUS_HOME", str(tmp_path))
    _write_run_trace(tmp_path / "traces", "run-1")
    result = CliRunner().invoke(app, ["trace", "no-such-run"])
    assert result.exit_code == 1
    assert "no span of flow run no-such-run" in result.output


def test_flowbus_trace_without_a_traces_folder_says_how_to_get_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("FLOWBUS_HOME", str(tmp_path))
    result = CliRunner().invoke(app, ["trace", "run-1"])
    assert result.exit_code == 1
    assert "no traces folder" in result.output
    assert "flowbus up --traces" in result.output


def test_the_fast_lane_s_recorded_spans_join_the_caller_s_trace(tmp_path: Path) -> None:
    exporter = telemetry.JsonLinesExporter(tmp_path, "flowbus-state")
    recorder = telemetry.SpanRecorder(exporter)
    sampled = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    not_sampled = "00-1af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"
    recorder.record(sampled, "set_flow_run_state Running", 1_000, 3_000_000, telemetry.attributes("run-9"))
    recorder.record(not_sampled, "set_flow_run_state Running", 1_000, 2_000, telemetry.attributes("run-9"))
    recorder.record("garbage", "set_flow_run_state Running", 1_000, 2_000, {})
    recorder.flush()
    exporter.shutdown()
    (span,) = read_spans(tmp_path)
    assert (span.trace_id, span.parent_id) == ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331")
    assert (span.name, span.service, span.attributes) == (
        "set_flow_run_state Running",
        "state",
        {"flowbus.flow_run_id": "run-9"},
    )
    assert span.seconds == pytest.approx(0.002999)
