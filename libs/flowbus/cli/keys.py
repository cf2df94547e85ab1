"""``flowbus create api-key``, ``get api-keys`` and ``delete api-key``: the gateway's API keys.

Whoever reaches the NATS server may manage keys; the keys guard the HTTP
gateway. Writes: ``flowbus.cmd.gateway.*`` (through the client).
"""

from __future__ import annotations

from typing import Annotated

import typer

from flowbus.cli._output import table, when
from flowbus.cli.app import client_command, create_app, delete_app, get_app
from flowbus.client import AsyncClient
from flowbus.schemas.api_keys import Role


@client_command(create_app, "api-key", "Create an API key for the GraphQL gateway; prints the key once.")
async def create_api_key(
    client: AsyncClient,
    name: str,
    role: Annotated[
        Role,
        typer.Option(
            "--role",
            "-r",
            help=(
                "admin: everything; user: all but keys and deleting projects; "
                "runner: what agents and runs need; read-only: queries."
            ),
        ),
    ],
) -> None:
    created = await client.create_api_key(name, role)
    # The key alone on stdout, so that KEY=$(flowbus create api-key ...) captures just it.
    typer.echo(f"Created API key {created.name!r} (role {created.role.value}):", err=True)
    typer.echo(created.key)
    typer.echo("It is shown only once: store it now (flowbus keeps only its hash).", err=True)


@client_command(get_app, "api-keys", "List API keys: name, role, created, last used (never the keys).")
async def get_api_keys(client: AsyncClient) -> None:
    keys = await client.list_api_keys()
    if not keys:
        typer.echo("No API keys.")
        return
    table(
        [("NAME", "ROLE", "CREATED", "LAST USED")]
        + [(k.name, k.role.value, when(k.created), when(k.last_used) if k.last_used else "never") for k in keys]
    )


@client_command(delete_app, "api-key", "Revoke an API key: every gateway refuses it from its next request on.")
async def delete_api_key(client: AsyncClient, name: str) -> None:
    await client.delete_api_key(name)
    typer.echo(f"API key {name!r} deleted: it is refused from now on.")
