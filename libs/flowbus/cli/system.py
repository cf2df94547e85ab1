"""``flowbus db upgrade`` (maintenance that needs no running server) and ``flowbus get scheduler``.

Reads: ``flowbus.cmd.scheduler.status`` replies (through the client).
"""

from __future__ import annotations

import typer

from flowbus.cli._output import when
from flowbus.cli.app import client_command, db_app, get_app
from flowbus.client import AsyncClient
from flowbus.settings import Settings


@db_app.command("upgrade", help="Apply the schema migrations to FLOWBUS_DATABASE_URL.")
def db_upgrade() -> None:
    from flowbus.db.migrate import upgrade

    url = Settings().resolved_database_url()
    upgrade(url)
    typer.echo(f"database at {url} is up to date")


@client_command(get_app, "scheduler", "Show the scheduler's status: runs released, the last release, late runs.")
async def get_scheduler(client: AsyncClient) -> None:
    status = await client.get_scheduler_status()
    typer.echo(f"{'released:':<15}{status.released_total}")
    typer.echo(f"{'last release:':<15}{when(status.last_release)}")
    typer.echo(f"{'late runs:':<15}{status.late_runs}")
