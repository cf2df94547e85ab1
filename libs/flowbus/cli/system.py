"""``flowbus up``, ``flowbus service run`` and ``flowbus db upgrade``: running and maintaining the system."""

from __future__ import annotations

from typing import Annotated

import typer

from flowbus.cli.app import app, db_app, fail, service_app
from flowbus.runtime.nats import NatsUnavailable
from flowbus.settings import Settings


@app.command("up", help="Start NATS, the database and all services in the foreground (Ctrl-C stops).")
def up() -> None:
    from flowbus.embedded import run_foreground

    try:
        run_foreground(Settings())
    except NatsUnavailable as exc:
        raise fail(str(exc)) from None
    except (RuntimeError, ValueError) as exc:  # already running, a service process failed, bad up.processes
        raise fail(str(exc)) from None


@service_app.command("run", help="Run one service alone under uvicorn, with /healthz, /readyz, /docs/asyncapi.")
def service_run(
    name: Annotated[str, typer.Argument(help="registration, run_creation, state, heartbeat or scheduler")],
    host: str = "127.0.0.1",
    port: int = 0,
) -> None:
    import uvicorn

    from flowbus.embedded import SERVICE_MODULES, build_service_app

    if name not in SERVICE_MODULES:
        raise fail(f"unknown service {name!r}; choose from {', '.join(SERVICE_MODULES)}")
    uvicorn.run(build_service_app(name, Settings()), host=host, port=port, log_level="info")


@db_app.command("upgrade", help="Apply the schema migrations to FLOWBUS_DATABASE_URL.")
def db_upgrade() -> None:
    from flowbus.db.migrate import upgrade

    url = Settings().resolved_database_url()
    upgrade(url)
    typer.echo(f"database at {url} is up to date")
