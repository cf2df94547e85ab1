"""``flowbus auth init|add|list|rotate|remove``: the NATS credentials of this home.

They live in ``$FLOWBUS_HOME/auth`` (``flowbus.bus_auth.AuthStore``); a running
``flowbus up`` is told to reload its users (the nats-server config it wrote is
updated and the server gets SIGHUP). ``init`` prepares them for a NATS server
that ``flowbus up`` does not start (docker-compose.yml): the default
credentials and a nats-server include file with their users. No NATS
subject: files and a signal.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Annotated

import typer

from flowbus.bus_auth import AuthStore, BusRole, accounts_include, update_server_users, write_atomically
from flowbus.cli._output import table
from flowbus.cli.app import app, fail
from flowbus.settings import Settings

auth_app = typer.Typer(help="NATS credentials: one per component role, more for other machines.", no_args_is_help=True)
app.add_typer(auth_app, name="auth")


def _store(settings: Settings) -> AuthStore:
    return AuthStore(settings.auth_path())


def reload_server(settings: Settings, store: AuthStore) -> str:
    """Give the running ``flowbus up``'s nats-server the new users; what happened, for the user."""
    try:
        endpoint = json.loads(settings.endpoint_file.read_text())
        pid, config = int(endpoint["nats_pid"]), Path(endpoint["nats_config"])
    except (OSError, ValueError, KeyError, TypeError):
        return "No running flowbus up with an embedded NATS server here: the next `flowbus up` uses them."
    update_server_users(config, store.users())
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        return "The NATS server is not running: the next `flowbus up` uses them."
    return "The running NATS server reloaded its users."


@auth_app.command("init")
def init(
    nats_include: Annotated[
        Path | None,
        typer.Option(
            "--nats-include",
            help="Also write a nats-server include file with the users and their permissions (`accounts` block).",
        ),
    ] = None,
) -> None:
    """Make the default credentials (one per role) where missing, for a NATS server of your own."""
    settings = Settings()
    store = _store(settings)
    try:
        made = store.ensure_defaults()
    except OSError as exc:
        raise fail(f"Cannot write the NATS credentials in {store.path}: {exc}") from None
    typer.echo(
        f"Made NATS credentials {', '.join(c.name for c in made)} in {store.path}."
        if made
        else f"The default NATS credentials exist already in {store.path}."
    )
    if nats_include is not None:
        # Public keys and permissions only, so readable by a server running as another user.
        try:
            nats_include.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(nats_include, accounts_include(store.users(), settings.embedded_nats.limits()), 0o644)
        except OSError as exc:
            raise fail(f"Cannot write the NATS include file {nats_include}: {exc}") from None
        typer.echo(f"Wrote the NATS server's users to {nats_include} (`include` it in the server's configuration).")


@auth_app.command("add")
def add(
    name: str,
    role: Annotated[BusRole, typer.Option("--role", "-r", help="The credential's role (docs/security.md).")],
) -> None:
    """Make a credential (e.g. for an agent on another machine) and print how to use it."""
    settings = Settings()
    store = _store(settings)
    try:
        credential = store.add(name, role)
    except (ValueError, FileExistsError) as exc:
        raise fail(str(exc)) from None
    path = store.credential_file(credential.name)
    typer.echo(f"Created NATS credential {name!r} (role {role.value}) in {path} (mode 0600).")
    typer.echo(reload_server(settings, store))
    typer.echo("Copy the file to the machine that will use it, keep it private, and there set:")
    typer.echo(f"  FLOWBUS_NATS_CREDS=/path/to/{path.name}")
    typer.echo("  FLOWBUS_NATS_URL=nats://<this host>:<port>   (flowbus up's banner shows the port)")


@auth_app.command("list")
def list_credentials() -> None:
    """The credentials the NATS server accepts: name, role, public key (never a secret)."""
    users = _store(Settings()).users()
    if not users:
        typer.echo("No NATS credentials here (flowbus up makes them on its first start).")
        return
    table(
        [("NAME", "ROLE", "PUBLIC KEY", "STATE")]
        + [(u.name, u.role.value, u.public_key, "retired" if u.retired else "active") for u in users]
    )


@auth_app.command("rotate")
def rotate(
    names: Annotated[list[str] | None, typer.Argument(help="Credentials to replace (default: all).")] = None,
) -> None:
    """Replace credentials with new keys. The old keys stay valid until the next
    `flowbus up` start, so running processes keep working until they restart."""
    settings = Settings()
    store = _store(settings)
    try:
        fresh = store.rotate(names or None)
    except KeyError as exc:
        raise fail(str(exc.args[0])) from None
    for credential in fresh:
        typer.echo(f"Rotated {credential.name!r}: {store.credential_file(credential.name)}")
    typer.echo(reload_server(settings, store))
    typer.echo("Copies of these files on other machines must be replaced; old keys end at the next `flowbus up`.")


@auth_app.command("remove")
def remove(name: str) -> None:
    """Remove a credential: the server refuses it (and drops its connections) from the reload on."""
    settings = Settings()
    store = _store(settings)
    if name in {role.value for role in BusRole}:
        raise fail(f"{name!r} is a component's default credential; rotate it instead.")
    try:
        store.remove(name)
    except KeyError as exc:
        raise fail(str(exc.args[0])) from None
    typer.echo(f"Removed NATS credential {name!r}.")
    typer.echo(reload_server(settings, store))
