"""The ``flowbus`` command: start the system, manage projects and flows, run flows.

Every command that talks to the server fails at once with a one-line error
naming the NATS URL when nothing answers there; errors from the services
are printed as ``CODE: message`` with exit code 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import os
import runpy
import sys
import typing
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from flowbus.client import AsyncClient, ServiceUnavailable
from flowbus.runtime.nats import NatsUnavailable
from flowbus.schemas.common import FlowbusError
from flowbus.schemas.flows import FlowOut
from flowbus.schemas.runs import FlowRunDeleted, LogRecord, StateChanged
from flowbus.settings import Settings
from flowbus.states import StateType, is_failed

app = typer.Typer(help="flowbus: workflow orchestration over NATS.", no_args_is_help=True, add_completion=False)
create_app = typer.Typer(help="Create things.", no_args_is_help=True)
get_app = typer.Typer(help="Show things.", no_args_is_help=True)
agent_app = typer.Typer(help="Run agents.", no_args_is_help=True)
local_agent_app = typer.Typer(help="The local agent.", no_args_is_help=True)
service_app = typer.Typer(help="Run one service on its own.", no_args_is_help=True)
db_app = typer.Typer(help="Database maintenance.", no_args_is_help=True)
project_app = typer.Typer(help="Change or delete projects.", no_args_is_help=True)
flow_app = typer.Typer(help="Archive flows, change their settings, schedule, labels, defaults.", no_args_is_help=True)
app.add_typer(create_app, name="create")
app.add_typer(get_app, name="get")
app.add_typer(agent_app, name="agent")
agent_app.add_typer(local_agent_app, name="local")
app.add_typer(service_app, name="service")
app.add_typer(db_app, name="db")
app.add_typer(project_app, name="project")
app.add_typer(flow_app, name="flow")

T = TypeVar("T")
# How long `run --watch` lets a due run wait before explaining why.
EXPLAIN_AFTER_SECONDS = 5.0


def fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"Error: {message}", err=True)
    return typer.Exit(code)


def with_client(fn: Callable[..., Awaitable[T]]) -> Callable[..., T]:
    """Run an async command body with a connected client; map failures to one line."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        async def go() -> T:
            async with AsyncClient(Settings()) as client:
                return await fn(client, *args, **kwargs)

        try:
            return asyncio.run(go())
        except NatsUnavailable as exc:
            raise fail(f"{exc} (is `flowbus up` running? FLOWBUS_NATS_URL overrides)") from None
        except ServiceUnavailable as exc:
            raise fail(str(exc)) from None
        except FlowbusError as exc:
            raise fail(f"{exc.code.value}: {exc.message}") from None

    return wrapper


def _strip_client(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Hide the injected client from typer's view of the signature."""
    import inspect

    # Resolved annotations: typer ignores Annotated[...] options given as strings.
    hints = typing.get_type_hints(fn, include_extras=True)
    sig = inspect.signature(fn)
    params = [p.replace(annotation=hints.get(p.name, p.annotation)) for p in list(sig.parameters.values())[1:]]
    fn.__signature__ = sig.replace(parameters=params, return_annotation=None)  # type: ignore[attr-defined]
    return fn


def client_command(typer_app: typer.Typer, name: str, help_text: str) -> Callable[[Callable[..., Awaitable[Any]]], Any]:
    def decorate(fn: Callable[..., Awaitable[Any]]) -> Any:
        wrapped = _strip_client(with_client(fn))
        return typer_app.command(name, help=help_text)(wrapped)

    return decorate


# ---- running the system ---------------------------------------------------


@app.command("up", help="Start NATS, the database and all services in the foreground (Ctrl-C stops).")
def up() -> None:
    from flowbus.embedded import run_foreground

    try:
        run_foreground(Settings())
    except NatsUnavailable as exc:
        raise fail(str(exc)) from None
    except RuntimeError as exc:
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


# ---- projects ---------------------------------------------------------------


@client_command(create_app, "project", "Create a project.")
async def create_project(
    client: AsyncClient,
    name: str,
    description: Annotated[str | None, typer.Option("--description", "-d")] = None,
    skip_if_exists: Annotated[bool, typer.Option("--skip-if-exists")] = False,
) -> None:
    out = await client.create_project(name, description, skip_if_exists)
    typer.echo(f"{out.name} created ({out.id})" if not skip_if_exists else f"{out.name} ({out.id})")


@client_command(get_app, "projects", "List projects.")
async def get_projects(client: AsyncClient) -> None:
    for project in await client.get_projects():
        typer.echo(f"{project.name}\t{project.id}\t{project.description or ''}")


# ---- flows ------------------------------------------------------------------


@client_command(get_app, "project", "Show one project.")
async def get_project(client: AsyncClient, name: str) -> None:
    project = await client.get_project(name)
    typer.echo(json.dumps(project.model_dump(mode="json"), indent=2))


@client_command(project_app, "rename", "Rename a project.")
async def rename_project(client: AsyncClient, name: str, new_name: str) -> None:
    out = await client.rename_project(name, new_name)
    typer.echo(f"{name} renamed to {out.name}")


@client_command(project_app, "describe", "Set a project's description.")
async def describe_project(client: AsyncClient, name: str, description: str) -> None:
    await client.set_project_description(name, description or None)
    typer.echo(f"{name}: description set")


@client_command(project_app, "delete", "Delete a project with its flows, runs and logs.")
async def delete_project(
    client: AsyncClient, name: str, yes: Annotated[bool, typer.Option("--yes", help="Do not ask.")] = False
) -> None:
    if not yes and not typer.confirm(f"Delete project {name!r} with all its flows, runs and logs?"):
        raise typer.Exit(1)
    out = await client.delete_project(name)
    typer.echo(f"{name} deleted ({out.id})")


def _describe_flow(verb: str, flow: FlowOut) -> str:
    return f"{flow.name} v{flow.version} ({flow.id}): {verb}"


@client_command(flow_app, "archive", "Archive a flow: it cannot be run; its waiting runs are removed or cancelled.")
async def archive_flow(client: AsyncClient, flow_id: str) -> None:
    typer.echo(_describe_flow("archived", await client.archive_flow(flow_id)))


@client_command(flow_app, "unarchive", "Make an archived flow runnable again.")
async def unarchive_flow(client: AsyncClient, flow_id: str) -> None:
    typer.echo(_describe_flow("unarchived", await client.unarchive_flow(flow_id)))


@client_command(flow_app, "settings", "Turn heartbeats, Lazarus or version locking on or off for a flow's group.")
async def flow_settings(
    client: AsyncClient,
    flow_id: str,
    heartbeat: Annotated[bool | None, typer.Option("--heartbeat/--no-heartbeat")] = None,
    lazarus: Annotated[bool | None, typer.Option("--lazarus/--no-lazarus")] = None,
    version_locking: Annotated[bool | None, typer.Option("--version-locking/--no-version-locking")] = None,
) -> None:
    if heartbeat is None and lazarus is None and version_locking is None:
        raise fail("give at least one of --[no-]heartbeat, --[no-]lazarus, --[no-]version-locking", 2)
    flow = await client.set_flow_settings(
        flow_id, heartbeat_enabled=heartbeat, lazarus_enabled=lazarus, version_locking_enabled=version_locking
    )
    s = flow.settings
    typer.echo(
        f"{flow.name}: heartbeat {_on(s.heartbeat_enabled)}, lazarus {_on(s.lazarus_enabled)}, "
        f"version locking {_on(s.version_locking_enabled)}"
    )


def _on(value: bool) -> str:
    return "on" if value else "off"


@client_command(flow_app, "schedule", "Turn a flow's auto-scheduling on or off.")
async def flow_schedule(client: AsyncClient, flow_id: str, on: Annotated[bool, typer.Option("--on/--off")]) -> None:
    flow = await client.set_flow_schedule_state(flow_id, on)
    typer.echo(f"{flow.name}: schedule {_on(flow.is_schedule_active)}")


@client_command(flow_app, "labels", "Set (or --clear) the labels of a flow's group; its runs use them.")
async def flow_labels(
    client: AsyncClient,
    flow_id: str,
    label: Annotated[list[str] | None, typer.Option("--label", "-l")] = None,
    clear: Annotated[bool, typer.Option("--clear", help="Unset: runs use the flow's own labels.")] = False,
) -> None:
    if clear == bool(label):
        raise fail("give --label (one or more) or --clear", 2)
    flow = await client.get_flow(flow_id)
    group = await client.set_flow_group_labels(flow.flow_group_id, None if clear else label)
    typer.echo(f"{flow.name}: labels {group.labels if group.labels is not None else 'unset'}")


@client_command(flow_app, "params", "Set the default parameters of a flow's group (KEY=VALUE, VALUE as JSON).")
async def flow_params(
    client: AsyncClient,
    flow_id: str,
    param: Annotated[list[str] | None, typer.Option("--param")] = None,
) -> None:
    flow = await client.get_flow(flow_id)
    group = await client.set_flow_group_default_parameters(flow.flow_group_id, _parse_params(param))
    typer.echo(f"{flow.name}: default parameters {json.dumps(group.default_parameters)}")


@client_command(get_app, "flows", "List flows (newest version of each unless --all-versions).")
async def get_flows(
    client: AsyncClient,
    project: Annotated[str | None, typer.Option("--project")] = None,
    name: Annotated[str | None, typer.Option("--name")] = None,
    archived: Annotated[bool | None, typer.Option("--archived/--unarchived")] = None,
    all_versions: Annotated[bool, typer.Option("--all-versions")] = False,
) -> None:
    flows = await client.get_flows(project_name=project, name=name, archived=archived, newest_only=not all_versions)
    for flow in flows:
        mark = " (archived)" if flow.archived else ""
        typer.echo(f"{flow.name}\tv{flow.version}{mark}\t{flow.project_name}\t{flow.id}")


@client_command(get_app, "flow", "Show one flow.")
async def get_flow(client: AsyncClient, flow_id: str) -> None:
    flow = await client.get_flow(flow_id)
    typer.echo(json.dumps(flow.model_dump(mode="json"), indent=2))


@client_command(app, "register", "Register the flows of a script or module.")
async def register(
    client: AsyncClient,
    project: Annotated[str, typer.Option("--project")],
    path: Annotated[Path | None, typer.Option("--path", "-p")] = None,
    module: Annotated[str | None, typer.Option("--module", "-m")] = None,
    force: Annotated[bool, typer.Option("--force", help="Register even when unchanged.")] = False,
    label: Annotated[list[str] | None, typer.Option("--label", "-l")] = None,
) -> None:
    from flowbus.sdk import context
    from flowbus.sdk.flow import LOADED_SCRIPT_PREFIX, Flow

    if (path is None) == (module is None):
        raise fail("give exactly one of --path and --module", 2)
    try:
        with context.scope(loading_flow=True):
            if path is not None:
                sys.path.insert(0, str(path.resolve().parent))
                namespace = runpy.run_path(str(path.resolve()), run_name=LOADED_SCRIPT_PREFIX)
            else:
                assert module is not None
                # As `python -m` would: modules in the current folder are importable.
                sys.path.insert(0, os.getcwd())
                namespace = vars(importlib.import_module(module))
    except Exception as exc:  # the user's code: report it in one line
        raise fail(f"cannot load flows from {path or module}: {exc!r}") from None
    flows = [v for v in namespace.values() if isinstance(v, Flow)]
    if not flows:
        raise fail(f"no flows found in {path or module}")
    for flow in flows:
        out = await client.register(
            flow.serialize(),
            project,
            idempotency_key=None if force else flow.serialized_hash(),
            labels=label,
        )
        status = "skipped (unchanged)" if out.skipped else f"registered as version {out.version}"
        typer.echo(f"{flow.name}: {status} ({out.id})")


# ---- runs ---------------------------------------------------------------------


def _parse_params(values: list[str] | None) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for item in values or []:
        key, sep, raw = item.partition("=")
        if not sep:
            raise fail(f"--param takes KEY=VALUE, got {item!r}", 2)
        try:
            params[key] = json.loads(raw)
        except ValueError:
            params[key] = raw
    return params


@client_command(app, "run", "Create a flow run; with --watch, stream its states and logs until it ends.")
async def run(
    client: AsyncClient,
    flow_id: Annotated[str | None, typer.Option("--id", help="Flow id or flow group id.")] = None,
    name: Annotated[str | None, typer.Option("--name")] = None,
    project: Annotated[str | None, typer.Option("--project")] = None,
    param: Annotated[list[str] | None, typer.Option("--param", help="KEY=VALUE (VALUE parsed as JSON)")] = None,
    label: Annotated[list[str] | None, typer.Option("--label")] = None,
    run_name: Annotated[str | None, typer.Option("--run-name")] = None,
    start_time: Annotated[datetime | None, typer.Option("--start-time")] = None,
    idempotency_key: Annotated[str | None, typer.Option("--idempotency-key")] = None,
    watch: Annotated[bool, typer.Option("--watch")] = False,
) -> None:
    if (flow_id is None) == (name is None):
        raise fail("give exactly one of --id and --name", 2)
    common: dict[str, Any] = {
        "parameters": _parse_params(param),
        "labels": label,
        "run_name": run_name,
        "scheduled_start_time": start_time.astimezone() if start_time else None,
        "idempotency_key": idempotency_key,
    }
    if flow_id is not None:
        try:
            created = await client.create_flow_run(flow_id, **common)
        except FlowbusError as exc:
            if exc.code.value != "NOT_FOUND":
                raise
            created = await client.create_flow_run(version_group_id=flow_id, **common)
    else:
        created = await client.create_flow_run(flow_name=name, project_name=project, **common)
    typer.echo(f"Flow run {created.name} created: {created.id}")
    if not watch:
        return
    final_failed = False
    due_in = (created.scheduled_start_time - datetime.now(UTC)).total_seconds()
    explainer = asyncio.create_task(_explain_if_stuck(client, created.id, max(0.0, due_in) + EXPLAIN_AFTER_SECONDS))
    async for item in client.watch_flow_run(created.id):
        if isinstance(item, StateChanged) and item.state.type is not StateType.SCHEDULED:
            explainer.cancel()
        if isinstance(item, StateChanged):
            message = f": {item.state.message}" if item.state.message else ""
            typer.echo(f"{item.state.timestamp:%H:%M:%S} | Entered state {item.state.type.value}{message}")
            final_failed = is_failed(item.state.type) or item.state.type.value == "Cancelled"
        elif isinstance(item, LogRecord):
            typer.echo(f"{item.timestamp:%H:%M:%S} | {item.level:<7} | {item.name} | {item.message}")
        elif isinstance(item, FlowRunDeleted):
            typer.echo(f"Flow run deleted: {item.reason}")
            final_failed = True
    explainer.cancel()
    if final_failed:
        raise typer.Exit(1)


async def _explain_if_stuck(client: AsyncClient, flow_run_id: str, after: float) -> None:
    """If the run is still waiting a while after it is due, say why (once)."""
    await asyncio.sleep(after)
    with contextlib.suppress(FlowbusError, ServiceUnavailable):
        reason = await client.explain_waiting_run(flow_run_id)
        if reason:
            typer.echo(f"Waiting: {reason}")


@client_command(get_app, "flow-run", "Show one flow run.")
async def get_flow_run(client: AsyncClient, flow_run_id: str) -> None:
    detail = await client.get_flow_run(flow_run_id)
    typer.echo(json.dumps(detail.model_dump(mode="json"), indent=2))


@client_command(get_app, "logs", "Show a flow run's stored logs.")
async def get_logs(client: AsyncClient, flow_run_id: str) -> None:
    for record in await client.get_flow_run_logs(flow_run_id):
        typer.echo(f"{record.timestamp:%H:%M:%S} | {record.level:<7} | {record.name} | {record.message}")


# ---- agents ---------------------------------------------------------------------


@local_agent_app.command("start", help="Start a local agent that runs flow runs here (Ctrl-C stops).")
def local_agent_start(
    label: Annotated[list[str] | None, typer.Option("--label", "-l")] = None,
    name: Annotated[str | None, typer.Option("--name")] = None,
    no_hostname_label: Annotated[bool, typer.Option("--no-hostname-label")] = False,
) -> None:
    from flowbus.agent.local import run_local_agent

    try:
        run_local_agent(labels=label or [], name=name, hostname_label=not no_hostname_label)
    except NatsUnavailable as exc:
        raise fail(f"{exc} (is `flowbus up` running? FLOWBUS_NATS_URL overrides)") from None
    except (ServiceUnavailable, ValueError) as exc:
        raise fail(str(exc)) from None


def main() -> None:
    app()


if __name__ == "__main__":
    main()
