"""The installed ``flowbus`` command: the shared library's commands, and the two that start services.

``flowbus up`` and ``flowbus service run`` need the services, which the
shared library never imports: this module adds them to ``flowbus.cli.app``.
The ``flowbus`` console script runs ``main`` (as does ``python -m flowbus_services.cli``).
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Annotated, Any

import typer

from flowbus.cli import app
from flowbus.cli.app import fail
from flowbus.runtime.nats import NatsUnavailable, nats_servers
from flowbus.settings import Settings

service_app = typer.Typer(help="Run one service on its own.", no_args_is_help=True)


@app.command("up", help="Start NATS, the database and all services in the foreground (Ctrl-C stops).")
def up(
    traces: Annotated[
        bool,
        typer.Option(
            "--traces",
            help="Every process of this home (services, CLI, SDK, agents, runners) writes its spans"
            " under $FLOWBUS_HOME/traces; `flowbus trace RUN_ID` prints a run's.",
        ),
    ] = False,
) -> None:
    from flowbus_services.up import log_to_stderr, run_foreground

    if traces:
        # Read by this process's settings and inherited by what it starts; endpoint.json tells the others.
        os.environ["FLOWBUS_TRACES"] = "1"
    settings = Settings()
    log_to_stderr(settings, "up")
    try:
        run_foreground(settings)
    except NatsUnavailable as exc:
        raise fail(str(exc)) from None
    except (RuntimeError, ValueError) as exc:  # already running, a service process failed, bad up.processes
        raise fail(str(exc)) from None


@service_app.command(
    "run", help="Run one service alone under uvicorn, with /healthz, /readyz, /metrics, /docs/asyncapi."
)
def service_run(
    name: Annotated[str, typer.Argument(help="registration, run_creation, state, heartbeat, scheduler or gateway")],
    host: str = "127.0.0.1",
    port: int = 0,
) -> None:
    import uvicorn

    from flowbus_services.registry import SERVICE_MODULES, build_service_app
    from flowbus_services.up import log_to_stderr

    if name not in SERVICE_MODULES:
        raise fail(f"unknown service {name!r}; choose from {', '.join(SERVICE_MODULES)}")
    settings = Settings()
    log_to_stderr(settings, name)
    try:
        asyncio.run(nats_servers(settings))
    except NatsUnavailable as exc:  # no FLOWBUS_NATS_URL and no `flowbus up`, not even one starting
        raise fail(str(exc)) from None
    if name == "gateway":
        # The gateway is an HTTP server itself: --host and --port are its own.

        from flowbus_services.supervisor import run_services, serve_until_stopped

        gateway = settings.gateway.model_copy(update={"host": host, "port": port or settings.gateway.port})
        settings = settings.model_copy(update={"gateway": gateway})
        print(f"GraphQL: http://{gateway.host}:{gateway.port}/graphql", flush=True)
        try:
            run_services(serve_until_stopped(lambda n: build_service_app(n, settings), [name]))
        except OSError as exc:
            raise fail(f"the gateway cannot listen on {gateway.host}:{gateway.port}: {exc}") from None
        return
    # Our log lines, not uvicorn's own configuration; its start line (the port) but no line per request.
    logging.getLogger("uvicorn.error").setLevel(logging.INFO)
    uvicorn.run(build_service_app(name, settings), host=host, port=port, log_config=None, access_log=False)


app.add_typer(service_app, name="service")


def _move(entries: list[Any], name: str, index: int) -> None:
    entry = next(e for e in entries if e.name == name)
    entries.remove(entry)
    entries.insert(index, entry)


# The help has always listed `up` first and the `service` group after `agent`.
_move(app.registered_commands, "up", 0)
_move(app.registered_groups, "service", [g.name for g in app.registered_groups].index("agent") + 1)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
