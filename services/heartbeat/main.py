"""Entry module of the heartbeat service.

Run alone with ``flowbus service run heartbeat`` or
``uvicorn services.heartbeat.main:app``. No work happens at import.
"""

from __future__ import annotations

from faststream.asgi import AsgiFastStream

from flowbus.runtime.service import build_service
from flowbus.settings import Settings
from services.heartbeat.handlers import register

NAME = "heartbeat"


def build_app(settings: Settings | None = None) -> AsgiFastStream:
    return build_service(NAME, settings or Settings(), register)


app = build_app()
