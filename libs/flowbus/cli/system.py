"""``flowbus db upgrade``: maintenance that needs no running server."""

from __future__ import annotations

import typer

from flowbus.cli.app import db_app
from flowbus.settings import Settings


@db_app.command("upgrade", help="Apply the schema migrations to FLOWBUS_DATABASE_URL.")
def db_upgrade() -> None:
    from flowbus.db.migrate import upgrade

    url = Settings().resolved_database_url()
    upgrade(url)
    typer.echo(f"database at {url} is up to date")
