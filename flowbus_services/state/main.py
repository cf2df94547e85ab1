"""Entry module of the state service.

Run alone with ``flowbus service run state`` or
``uvicorn flowbus_services.state.main:app``. No work happens at import.
"""

from __future__ import annotations

from faststream.asgi import AsgiFastStream

from flowbus import subjects
from flowbus.runtime.service import build_service
from flowbus.settings import Settings
from flowbus_services.state.handlers import clean_up_flow_runs, register, write_logs

NAME = subjects.Service.STATE


def build_app(settings: Settings | None = None) -> AsgiFastStream:
    return build_service(NAME, settings or Settings(), register, loops=[write_logs, clean_up_flow_runs])


app = build_app()
