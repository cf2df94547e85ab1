"""The registry of the services: each one's name and entry module.

``flowbus up``, ``flowbus service run``, the contracts generator and the
tests start services through here. An entry module is imported only when
its service is built, so a command that runs one service loads only that one.
"""

from __future__ import annotations

import importlib

from faststream.asgi import AsgiFastStream

from flowbus.settings import Settings

SERVICE_MODULES: dict[str, str] = {
    "registration": "flowbus_services.registration.main",
    "run_creation": "flowbus_services.run_creation.main",
    "state": "flowbus_services.state.main",
    "heartbeat": "flowbus_services.heartbeat.main",
    "scheduler": "flowbus_services.scheduler.main",
    "gateway": "flowbus_services.gateway.main",
}


def build_service_app(name: str, settings: Settings) -> AsgiFastStream:
    if name not in SERVICE_MODULES:
        raise KeyError(f"unknown service {name!r}; choose from {', '.join(SERVICE_MODULES)}")
    module = importlib.import_module(SERVICE_MODULES[name])
    app: AsgiFastStream = module.build_app(settings)
    return app
