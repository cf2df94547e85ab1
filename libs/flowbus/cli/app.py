"""The typer application of the ``flowbus`` command, and what its command modules share.

The command groups are declared here; ``projects``, ``flows``, ``runs``,
``agents``, ``keys`` and ``system`` add their commands to them, and the package
imports them all. A command body that talks to the server is an ``async`` function
taking a connected client (``client_command``): when nothing answers at the
NATS URL it fails at once with one line naming it, and a service's error is
printed as ``CODE: message``, with exit code 1.
"""

from __future__ import annotations

import asyncio
import inspect
import typing
from collections.abc import Awaitable, Callable
from functools import wraps
from typing import Any, TypeVar

import typer

from flowbus.client import CLIENT_ERRORS, NATS_HINT, AsyncClient, describe_error
from flowbus.runtime import telemetry
from flowbus.settings import Settings

app = typer.Typer(help="flowbus: workflow orchestration over NATS.", no_args_is_help=True, add_completion=False)
create_app = typer.Typer(help="Create things.", no_args_is_help=True)
get_app = typer.Typer(help="Show things.", no_args_is_help=True)
delete_app = typer.Typer(help="Delete things.", no_args_is_help=True)
agent_app = typer.Typer(help="Run agents.", no_args_is_help=True)
local_agent_app = typer.Typer(help="The local agent.", no_args_is_help=True)
db_app = typer.Typer(help="Database maintenance.", no_args_is_help=True)
project_app = typer.Typer(help="Change or delete projects.", no_args_is_help=True)
flow_app = typer.Typer(help="Archive flows, change their settings, schedule, labels, defaults.", no_args_is_help=True)
app.add_typer(create_app, name="create")
app.add_typer(get_app, name="get")
app.add_typer(delete_app, name="delete")
app.add_typer(agent_app, name="agent")
agent_app.add_typer(local_agent_app, name="local")
app.add_typer(db_app, name="db")
app.add_typer(project_app, name="project")
app.add_typer(flow_app, name="flow")

T = TypeVar("T")


def fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"Error: {message}", err=True)
    return typer.Exit(code)


def with_client(fn: Callable[..., Awaitable[T]]) -> Callable[..., T]:
    """Run an async command body with a connected client; map failures to one line."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        async def go() -> T:
            settings = Settings()
            telemetry.configure(settings, "cli")  # its spans are the CLI's
            async with AsyncClient(settings) as client:
                return await fn(client, *args, **kwargs)

        try:
            return asyncio.run(go())
        except CLIENT_ERRORS as exc:
            raise fail(describe_error(exc, nats_hint=NATS_HINT)) from None

    return wrapper


def _strip_client(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Hide the injected client from typer's view of the signature."""
    # Resolved annotations: typer ignores Annotated[...] options given as strings.
    hints = typing.get_type_hints(fn, include_extras=True)
    sig = inspect.signature(fn)
    params = [p.replace(annotation=hints.get(p.name, p.annotation)) for p in list(sig.parameters.values())[1:]]
    fn.__signature__ = sig.replace(parameters=params, return_annotation=None)  # type: ignore[attr-defined]
    return fn


def client_command(
    typer_app: typer.Typer, name: str, help_text: str, hidden: bool = False
) -> Callable[[Callable[..., Awaitable[Any]]], Any]:
    def decorate(fn: Callable[..., Awaitable[Any]]) -> Any:
        wrapped = _strip_client(with_client(fn))
        return typer_app.command(name, help=help_text, hidden=hidden)(wrapped)

    return decorate
