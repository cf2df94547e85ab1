"""``flowbus get agents`` and ``flowbus agent local start``.

Reads: ``flowbus.cmd.heartbeat.list_agents`` replies (through the client); the
local agent reads run queues and writes states, see ``flowbus.agent.local``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flowbus.cli._output import table, when
from flowbus.cli.app import client_command, fail, get_app, local_agent_app
from flowbus.client import CLIENT_ERRORS, NATS_HINT, AsyncClient, describe_error


@client_command(get_app, "agents", "List agents with their labels and when each was last seen.")
async def get_agents(client: AsyncClient) -> None:
    agents = (await client.get_agents()).agents
    if not agents:
        typer.echo("No agents.")
        return
    table(
        [("NAME", "ID", "TYPE", "LABELS", "LAST SEEN", "ONLINE")]
        + [
            (
                a.name,
                a.id,
                a.type,
                ",".join(a.labels) or "-",
                when(a.last_seen),
                "yes" if client.agent_online(a) else "no",
            )
            for a in agents
        ]
    )


@local_agent_app.command(
    "start", help="Start a local agent that runs flow runs here (SIGINT/SIGTERM: running flows finish, then it stops)."
)
def local_agent_start(
    label: Annotated[list[str] | None, typer.Option("--label", "-l")] = None,
    name: Annotated[str | None, typer.Option("--name")] = None,
    no_hostname_label: Annotated[bool, typer.Option("--no-hostname-label")] = False,
    limit: Annotated[
        int | None, typer.Option("--limit", min=1, help="Most flow runs at once; more wait in the queue.")
    ] = None,
    flow_root: Annotated[
        list[Path] | None,
        typer.Option(
            "--flow-root",
            metavar="DIR",
            help="Run only flows whose code lies inside this folder (repeatable; symlinks and .. are followed "
            "before the check). Default: FLOWBUS_AGENT__FLOW_ROOTS, else any flow.",
        ),
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            "--metrics-port",
            min=0,
            max=65535,
            help="Serve /metrics on this port (0: a free one, printed at start). Default: FLOWBUS_AGENT__METRICS_PORT,"
            " else none.",
        ),
    ] = None,
) -> None:
    from flowbus.agent.local import run_local_agent
    from flowbus.settings import Settings

    settings = Settings()
    if metrics_port is not None:
        settings = settings.model_copy(
            update={"agent": settings.agent.model_copy(update={"metrics_port": metrics_port})}
        )
    try:
        run_local_agent(
            labels=label or [],
            name=name,
            hostname_label=not no_hostname_label,
            settings=settings,
            limit=limit,
            flow_roots=flow_root or None,
        )
    except CLIENT_ERRORS as exc:
        raise fail(describe_error(exc, nats_hint=NATS_HINT)) from None
    except ValueError as exc:
        raise fail(str(exc)) from None
