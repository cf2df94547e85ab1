"""OpenTelemetry set-up shared by every component.

Spans are always created (faststream's NATS middleware puts the W3C trace
context in message headers, so one trace spans CLI, services and agent);
they are exported over OTLP/HTTP when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set
(the collector of docker-compose.yml), and to the console when
``FLOWBUS_OTEL_CONSOLE=1``.
"""

from __future__ import annotations

import os
from functools import cache

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter


@cache
def tracer_provider(service: str) -> TracerProvider:
    provider = TracerProvider(resource=Resource.create({"service.name": f"flowbus-{service}"}))
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    if os.environ.get("FLOWBUS_OTEL_CONSOLE") == "1":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    return provider


def tracer(service: str) -> trace.Tracer:
    return tracer_provider(service).get_tracer("flowbus")
