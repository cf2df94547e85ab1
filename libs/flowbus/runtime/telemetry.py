"""OpenTelemetry set-up shared by every component.

Spans are always created (faststream's NATS middleware puts the W3C trace
context in message headers, so one trace spans CLI, services and agent);
they are exported over OTLP/HTTP when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set
(the OpenTelemetry SDK's own variable; docker-compose.yml points it at the
collector), and to the console when the ``otel_console`` setting
(``FLOWBUS_OTEL_CONSOLE``) is on.
"""

from __future__ import annotations

import os
from functools import cache

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter


@cache
def tracer_provider(service: str, console: bool = False) -> TracerProvider:
    provider = TracerProvider(resource=Resource.create({"service.name": f"flowbus-{service}"}))
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    if console:
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    return provider


def tracer(service: str, console: bool = False) -> trace.Tracer:
    return tracer_provider(service, console).get_tracer("flowbus")
