"""How services, ``flowbus up`` and agents write their own logs (not a flow run's logs).

One line per record on stderr: readable text by default, JSON lines with
``log_format=json`` (``FLOWBUS_LOG_FORMAT=json``). Each line carries the
service that wrote it, the trace and span ids of the OpenTelemetry span
current when it was written, and the flow run id where there is one:

- the service comes from ``current_service``, which ``build_service`` sets
  as a service starts, so every task it starts (handlers, loops, the fast
  lane) inherits it; a record outside any falls back to the logger's name
  (``flowbus_services.<service>...``), then to the process's component;
- the run id comes from a record's ``flow_run_id`` (``extra=``), else from
  ``current_run`` (``run_context(run_id)``), which the agent sets per run
  and the services' command middleware per command naming a run;
- the ids of ``opentelemetry.trace.get_current_span()``, when it is valid.

Levels are per service: ``log_level`` (``FLOWBUS_LOG_LEVEL``, INFO) for all,
``log_levels`` (``FLOWBUS_LOG_LEVELS='{"state": "DEBUG"}'``) for some; in a
process running several services a record is kept by its own service's
level. Third-party loggers keep WARNING unless ``log_levels`` names them.

Reads and writes no NATS subject.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import IO, Any

from opentelemetry import trace

# The service whose code runs in this task (set as the service starts; tasks inherit it).
current_service: ContextVar[str | None] = ContextVar("flowbus_service", default=None)
# The flow run this task works on, when one (run_context).
current_run: ContextVar[str | None] = ContextVar("flowbus_flow_run", default=None)

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# The attributes of every LogRecord: what is not among them came from ``extra=``.
_RECORD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
_HANDLER_NAME = "flowbus"
# What ContextFilter adds to a record (written, when set, by the formatters themselves).
_CONTEXT = ("service", "flow_run_id", "trace_id", "span_id")


@contextmanager
def run_context(flow_run_id: str | None) -> Iterator[None]:
    """Log records written inside carry ``flow_run_id`` (tasks started inside inherit it)."""
    token = current_run.set(flow_run_id)
    try:
        yield
    finally:
        current_run.reset(token)


def _service_of(record: logging.LogRecord, component: str, services: frozenset[str]) -> str:
    service = current_service.get()
    if service:
        return service
    # A service's own modules log under <package>.<service>.<module>.
    parts = record.name.split(".", 2)
    if len(parts) > 1 and parts[1] in services:
        return parts[1]
    return component


class ContextFilter(logging.Filter):
    """Adds ``service``, ``flow_run_id``, ``trace_id`` and ``span_id`` to each record,
    and keeps only the records at or above their service's level."""

    def __init__(self, component: str, default_level: int = logging.INFO, levels: Mapping[str, int] | None = None):
        super().__init__()
        self.component = component
        self.default_level = default_level
        self.levels = dict(levels or {})
        self.services = _known_components()

    def filter(self, record: logging.LogRecord) -> bool:
        service = _service_of(record, self.component, self.services)
        if record.levelno < self.levels.get(service, self.default_level):
            return False
        record.service = service
        if getattr(record, "flow_run_id", None) is None:
            record.flow_run_id = current_run.get()
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            record.trace_id = format(context.trace_id, "032x")
            record.span_id = format(context.span_id, "016x")
        else:
            record.trace_id = record.span_id = None
        return True


def _timestamp(record: logging.LogRecord) -> str:
    seconds = int(record.created)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int(record.msecs):03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC), level, service, logger, message, run and trace ids,
    the exception, and any other ``extra=`` field."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": _timestamp(record),
            "level": record.levelname,
            "service": getattr(record, "service", None),
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        for key in _CONTEXT[1:]:
            value = getattr(record, key, None)
            if value is not None:
                line[key] = value
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRIBUTES and key not in _CONTEXT and key not in line:
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``2030-01-31T09:00:00.123Z INFO  [state] flowbus.runtime.outbox: message run=... trace=...``."""

    def format(self, record: logging.LogRecord) -> str:
        head = f"{_timestamp(record)} {record.levelname:<7} [{getattr(record, 'service', '-')}] {record.name}:"
        tail = []
        run = getattr(record, "flow_run_id", None)
        if run is not None:
            tail.append(f"run={run}")
        trace_id = getattr(record, "trace_id", None)
        if trace_id is not None:
            tail.append(f"trace={trace_id} span={getattr(record, 'span_id', None)}")
        line = " ".join([head, record.getMessage(), *tail])
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


def level_number(name: str) -> int:
    """A level name's number; ``ValueError`` naming the choices for anything else."""
    upper = name.strip().upper()
    if upper not in LEVELS:
        raise ValueError(f"unknown log level {name!r}: choose from {', '.join(LEVELS)}")
    return int(logging.getLevelName(upper))


def configure_logging(
    component: str,
    *,
    log_format: str = "text",
    level: str = "INFO",
    levels: Mapping[str, str] | None = None,
    stream: IO[str] | None = None,
    packages: tuple[str, ...] = ("flowbus",),
) -> logging.Handler:
    """Send this process's log records to ``stream`` (stderr) in ``log_format``; returns the handler.

    ``component`` names the process's records that no service claims (``up``,
    ``agent``, or the one service a process runs); ``packages`` are the
    loggers the levels apply to (the services' package adds its own; any
    other logger stays at WARNING). Calling it again replaces the handler it
    installed before."""
    default = level_number(level)
    per_service = {name: level_number(value) for name, value in (levels or {}).items()}
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    handler.addFilter(ContextFilter(component, default, per_service))
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    # The loggers let through the lowest level any service wants; the filter applies each one's own.
    lowest = min([default, *per_service.values()])
    root.setLevel(logging.WARNING)
    for name in packages:
        logging.getLogger(name).setLevel(lowest)
    for name, number in per_service.items():
        if "." in name or name not in _known_components():
            # A logger's name (uvicorn, sqlalchemy.engine, ...): its own level.
            logging.getLogger(name).setLevel(number)
    return handler


def _known_components() -> frozenset[str]:
    from flowbus.subjects import Service  # keeps this module light to import

    return frozenset({*(s.value for s in Service), "agent", "up"})
