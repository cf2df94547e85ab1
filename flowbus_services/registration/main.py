"""Entry module of the registration service.

Run alone with ``flowbus service run registration`` or
``uvicorn flowbus_services.registration.main:app``. No work happens at import.
"""

from __future__ import annotations

from faststream.asgi import AsgiFastStream

from flowbus import subjects
from flowbus.runtime.service import build_service
from flowbus.settings import Settings
from flowbus_services.registration.handlers import register

NAME = subjects.Service.REGISTRATION


def build_app(settings: Settings | None = None) -> AsgiFastStream:
    return build_service(NAME, settings or Settings(), register)


app = build_app()
