"""OpenTelemetry set-up shared by every component, and the run's trace context.

One trace per flow run (docs/operations.md, "A run's trace"): the command
that creates a run starts it (the CLI, the SDK, a gateway request, the
scheduler), and every actor after it continues it. Between processes the
W3C context travels in NATS headers (``headers()``, ``extract()``; the
OpenTelemetry propagator, nothing hand-written), and where a message has no
headers (the outbox stores payloads only) or no message at all (the
runner's environment, the heartbeat service's reads of ``flow_run``) as a
``traceparent`` string: the run's own, stored with the run at creation.

Each process has one TracerProvider per component name (``tracer_provider``:
a service, or the process's role for the CLI, SDK, agent and runner). Its
spans are exported
- over OTLP/HTTP when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set (the SDK's own
  variable; docker-compose.yml points it at the collector);
- to the console when ``otel_console`` (``FLOWBUS_OTEL_CONSOLE``) is on;
- as JSON lines to ``$FLOWBUS_HOME/traces/<name>-<pid>.jsonl`` when the
  ``traces`` setting (``FLOWBUS_TRACES``, set by ``flowbus up --traces``) is
  on or the home's ``endpoint.json`` says ``"traces": true``
  (``JsonLinesExporter``; ``flowbus trace`` reads them).
Sampling is parent-based: ``OTEL_TRACES_SAMPLER``/``OTEL_TRACES_SAMPLER_ARG``
when set, else the ``trace_sample_ratio`` setting for new traces.
Every provider is flushed at exit (``shutdown``).
"""

from __future__ import annotations

import atexit
import json
import os
import random
import threading
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import ParentBased, Sampler, TraceIdRatioBased
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

# The span attributes that name what a span worked on.
FLOW_RUN_ID, FLOW_ID, TASK_RUN_ID = "flowbus.flow_run_id", "flowbus.flow_id", "flowbus.task_run_id"
TRACES_DIR = "traces"
# The runner's parent span: set by the agent in the flow process's environment.
TRACEPARENT_ENV = "TRACEPARENT"
_W3C = TraceContextTextMapPropagator()
_ids = RandomIdGenerator()


class _Config:
    """What this process's providers export to; set once by ``configure`` (or on first use)."""

    def __init__(self) -> None:
        self.configured = False
        self.console = False
        self.traces_dir: Path | None = None
        self.sample_ratio: float | None = None
        self.process = "sdk"


_config = _Config()
_providers: dict[str, TracerProvider] = {}
_recorders: dict[str, SpanRecorder] = {}
# Whether a service's spans go anywhere (OTLP, the console, the home's files).
_exporting: dict[str, bool] = {}
_lock = threading.Lock()


def traces_dir(settings: Any) -> Path | None:
    """``$FLOWBUS_HOME/traces`` when this home's processes write their spans there, else None."""
    home: Path = settings.home
    if getattr(settings, "traces", False):
        return home / TRACES_DIR
    try:
        endpoint = json.loads(settings.endpoint_file.read_text())
    except (OSError, ValueError):
        return None
    return home / TRACES_DIR if isinstance(endpoint, dict) and endpoint.get("traces") is True else None


def configure(settings: Any, process: str | None = None) -> None:
    """Take the exporters and the sampling ratio from ``settings`` (a flowbus Settings);
    ``process`` names the spans of ``tracer()`` (``cli``, ``agent``, ``runner``; default ``sdk``).
    Providers made before keep what they had."""
    _config.console = bool(settings.otel_console)
    _config.traces_dir = traces_dir(settings)
    _config.sample_ratio = settings.trace_sample_ratio
    if process is not None:
        _config.process = process
    _config.configured = True


def _ensure_configured() -> None:
    if not _config.configured:
        from flowbus.settings import Settings

        configure(Settings())


def _sampler() -> Sampler | None:
    if os.environ.get("OTEL_TRACES_SAMPLER") or _config.sample_ratio is None:
        return None  # the SDK's own: OTEL_TRACES_SAMPLER, else parent-based always-on
    return ParentBased(TraceIdRatioBased(_config.sample_ratio))


def tracer_provider(service: str, console: bool = False) -> TracerProvider:
    """This process's provider for ``service`` (made once)."""
    provider = _providers.get(service)
    if provider is not None:
        return provider
    with _lock:
        if service in _providers:
            return _providers[service]
        _ensure_configured()
        name = f"flowbus-{service}"
        provider = TracerProvider(
            sampler=_sampler(),
            resource=Resource.create({"service.name": name}),
            shutdown_on_exit=False,  # ``shutdown`` flushes every provider, in order
        )
        if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        if console or _config.console:
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
        _exporting[service] = bool(
            os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or console or _config.console or _config.traces_dir
        )
        if _config.traces_dir is not None:
            exporter = JsonLinesExporter(_config.traces_dir, name)
            provider.add_span_processor(BatchSpanProcessor(exporter))
            if not console and not _config.console and not os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
                _recorders[service] = SpanRecorder(exporter)
        _providers[service] = provider
        return provider


def recorder(service: str) -> SpanRecorder | None:
    """``service``'s light recorder when its spans go to the home's files alone (else None: SDK spans)."""
    tracer_provider(service)
    return _recorders.get(service)


def exporting(service: str) -> bool:
    """Whether ``service``'s spans go anywhere. Where they do not, its hot paths make no
    span (an SDK span costs tens of microseconds, and nobody would see it) and only
    pass the runs' trace context on, so the processes after them can still join it."""
    tracer_provider(service)
    return _exporting[service]


def tracer(service: str | None = None, console: bool = False) -> trace.Tracer:
    """The tracer of ``service``, or of this process's role (``configure``) when None."""
    return tracer_provider(service or _config.process, console).get_tracer("flowbus")


@atexit.register
def shutdown() -> None:
    """Flush and stop every provider of this process (at exit; a forked runner calls it itself)."""
    with _lock:
        providers = list(_providers.values())
        recorders = list(_recorders.values())
        _providers.clear()
        _recorders.clear()
    for light in recorders:
        light.flush()
    for provider in providers:
        provider.shutdown()


def force_flush(service: str) -> None:
    """Write what ``service`` has recorded so far (a service at shut-down)."""
    light = _recorders.get(service)
    if light is not None:
        light.flush()
    tracer_provider(service).force_flush()


# ---- propagation -----------------------------------------------------------


def headers() -> dict[str, str] | None:
    """The current span's W3C context as NATS headers; None when no span is current."""
    if not trace.get_current_span().get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    _W3C.inject(carrier)  # as ``extract`` reads it: the global propagator would add baggage too
    return carrier


def extract(carrier: Mapping[str, str] | None) -> otel_context.Context | None:
    """The context carried in message headers (None when there is none)."""
    if not carrier or "traceparent" not in carrier:
        return None
    # The W3C propagator alone: the global one also parses baggage, which flowbus sends none of.
    return _W3C.extract(carrier)


def traceparent(span: trace.Span | None = None) -> str | None:
    """``span``'s (else the current span's) context as a W3C ``traceparent`` string."""
    ctx = trace.set_span_in_context(span) if span is not None else None
    if not trace.get_current_span(ctx).get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    _W3C.inject(carrier, context=ctx)
    return carrier.get("traceparent")


def canonical(value: str | None) -> str | None:
    """A received ``traceparent`` as the W3C propagator reads it (None when it is not one)."""
    return traceparent(trace.get_current_span(parent_of(value))) if value else None


def new_traceparent() -> str:
    """A new trace's context, no span recorded: what a process that exports nothing gives a
    run that came without one. Sampled as the sampling ratio says."""
    ratio = _config.sample_ratio
    sampled = ratio is None or random.random() < ratio
    return f"00-{_ids.generate_trace_id():032x}-{_ids.generate_span_id():016x}-{'01' if sampled else '00'}"


def parent_of(value: str | None) -> otel_context.Context | None:
    """The context a stored ``traceparent`` names (None: a new trace)."""
    if not value:
        return None
    return _W3C.extract({"traceparent": value})


def attributes(
    flow_run_id: str | None = None, flow_id: str | None = None, task_run_id: str | None = None
) -> dict[str, str]:
    out: dict[str, str] = {}
    if flow_run_id:
        out[FLOW_RUN_ID] = flow_run_id
    if flow_id:
        out[FLOW_ID] = flow_id
    if task_run_id:
        out[TASK_RUN_ID] = task_run_id
    return out


@contextmanager
def run_span(
    name: str,
    parent: str | None,
    *,
    service: str | None = None,
    kind: trace.SpanKind = trace.SpanKind.INTERNAL,
    flow_run_id: str | None = None,
    flow_id: str | None = None,
    task_run_id: str | None = None,
) -> Iterator[trace.Span]:
    """A current span under the run's stored ``traceparent`` (or the current span when None)."""
    with tracer(service).start_as_current_span(
        name,
        context=parent_of(parent),
        kind=kind,
        attributes=attributes(flow_run_id, flow_id, task_run_id),
    ) as span:
        yield span


def step_traceparent(
    name: str, parent: str | None, *, service: str, flow_run_id: str | None = None, flow_id: str | None = None
) -> str | None:
    """A short span for one step of a run (``queue_flow_run``) under its stored ``parent``;
    the step's traceparent, for the actor that comes next. None, and no span, without a parent."""
    if parent is None:
        return None
    if not exporting(service):
        return parent  # no span to add: the next actor joins the run's trace at its parent
    with run_span(name, parent, service=service, flow_run_id=flow_run_id, flow_id=flow_id) as span:
        return traceparent(span)


# ---- the home's span files -------------------------------------------------


def span_record(span: ReadableSpan, service: str) -> dict[str, Any]:
    """One span as ``flowbus trace`` reads it: ids as hex, times in ns since the epoch."""
    ctx = span.context
    parent = span.parent
    record: dict[str, Any] = {
        "trace_id": format(ctx.trace_id, "032x") if ctx is not None else None,
        "span_id": format(ctx.span_id, "016x") if ctx is not None else None,
        "parent_id": format(parent.span_id, "016x") if parent is not None else None,
        "name": span.name,
        "service": service,
        "start": span.start_time,
        "end": span.end_time,
        "attributes": dict(span.attributes or {}),
    }
    if span.links:
        record["links"] = [format(link.context.trace_id, "032x") for link in span.links]
    if not span.status.is_ok:
        record["status"] = span.status.status_code.name
    return record


class SpanRecorder:
    """The fast lane's spans when they go to the home's files alone: on the hot path
    a tuple (the caller's ``traceparent`` header, name, times, run ids), about a
    microsecond where an SDK span costs twenty-five; a daemon thread turns them
    into the same JSON lines, in the same file, every ``FLUSH_SECONDS``. The
    parent's context is parsed there by the W3C propagator; a parent not sampled
    gives no span (parent-based, as the SDK's sampler)."""

    FLUSH_SECONDS = 1.0

    def __init__(self, exporter: JsonLinesExporter) -> None:
        self.exporter = exporter
        self.pending: deque[tuple[str, str, int, int, dict[str, str]]] = deque()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._flushing = threading.Lock()

    def record(self, traceparent: str, name: str, start: int, end: int, attributes: dict[str, str]) -> None:
        self.pending.append((traceparent, name, start, end, attributes))
        if self._thread is None or not self._thread.is_alive():  # first, or in a forked process
            self._thread = threading.Thread(target=self._run, name="flowbus-span-recorder", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            self._wake.wait(self.FLUSH_SECONDS)
            self.flush()

    def flush(self) -> None:
        with self._flushing:
            lines = []
            pending = self.pending
            service = self.exporter.service
            while pending:
                traceparent, name, start, end, attributes = pending.popleft()
                parent = trace.get_current_span(_W3C.extract({"traceparent": traceparent})).get_span_context()
                if not parent.is_valid or not parent.trace_flags.sampled:
                    continue
                record = {
                    "trace_id": format(parent.trace_id, "032x"),
                    "span_id": format(_ids.generate_span_id(), "016x"),
                    "parent_id": format(parent.span_id, "016x"),
                    "name": name,
                    "service": service,
                    "start": start,
                    "end": end,
                    "attributes": attributes,
                }
                lines.append(json.dumps(record) + "\n")
            if lines:
                self.exporter.write("".join(lines))


class JsonLinesExporter(SpanExporter):
    """Appends each span as one JSON line to ``<folder>/<service>-<pid>.jsonl``.

    Called from the batch processor's thread only, one batch at a time; the
    file is opened on the first batch, so a process that makes no span
    leaves no file, and a forked one writes its own."""

    def __init__(self, folder: Path, service: str) -> None:
        self.folder = folder
        self.service = service
        self._file: IO[str] | None = None
        self._pid = 0
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        text = "".join(json.dumps(span_record(s, self.service), default=str) + "\n" for s in spans)
        return SpanExportResult.SUCCESS if self.write(text) else SpanExportResult.FAILURE

    def write(self, text: str) -> bool:
        """Append whole lines (from the batch processor's thread or a SpanRecorder's)."""
        with self._lock:
            try:
                out = self._open()
                out.write(text)
                out.flush()
            except OSError:
                return False
        return True

    def _open(self) -> IO[str]:
        pid = os.getpid()
        if self._file is None or self._pid != pid:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._file = (self.folder / f"{self.service}-{pid}.jsonl").open("a", encoding="utf-8")
            self._pid = pid
        return self._file

    def shutdown(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True
