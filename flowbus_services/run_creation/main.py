"""Entry module of the run_creation service.

Reads: ``flowbus.cmd.run_creation.create_flow_run`` (fast lane). Writes:
``flowbus.evt.flow_run.<id>.{created,state}``, ``flowbus.runq.*`` and
``flowbus.hint.scheduler.wake`` (see ``usecases.py``).
Run alone with ``flowbus service run run_creation`` or
``uvicorn flowbus_services.run_creation.main:app``. No work happens at import.
"""

from __future__ import annotations

from faststream.asgi import AsgiFastStream

from flowbus import subjects
from flowbus.runtime.service import build_service
from flowbus.settings import Settings
from flowbus_services.run_creation.handlers import register

NAME = subjects.Service.RUN_CREATION


def build_app(settings: Settings | None = None) -> AsgiFastStream:
    return build_service(NAME, settings or Settings(), register)


app = build_app()
