"""Entry module of the state service.

Handlers and loops: see ``handlers.py``; the log retention runs only while
this instance holds the lease ``state.log_retention``; its own gauges for
/metrics: ``metrics.py``.
Run alone with ``flowbus service run state`` or
``uvicorn flowbus_services.state.main:app``. No work happens at import.
"""

from __future__ import annotations

from faststream.asgi import AsgiFastStream

from flowbus import subjects
from flowbus.runtime.lease import leased
from flowbus.runtime.service import ServiceContext, build_service
from flowbus.settings import Settings
from flowbus_services.state.handlers import clean_up_flow_runs, prune_logs, register, write_logs
from flowbus_services.state.metrics import add_metrics

NAME = subjects.Service.STATE
LOG_RETENTION_LEASE = "state.log_retention"


def _register(ctx: ServiceContext) -> None:
    register(ctx)
    add_metrics(ctx)


def build_app(settings: Settings | None = None) -> AsgiFastStream:
    return build_service(
        NAME,
        settings or Settings(),
        _register,
        # One instance at a time prunes the logs: two would only delete the same rows twice.
        loops=[write_logs, clean_up_flow_runs, leased(LOG_RETENTION_LEASE, prune_logs)],
    )


app = build_app()
