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
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from flowbus.client import AsyncClient, ServiceUnavailable
from flowbus.runtime.nats import NatsUnavailable
from flowbus.schemas.common import FlowbusError, NotFound
from flowbus.schemas.flows import FlowOut
from flowbus.schemas.runs import LOG_LEVELS, FlowRunDeleted, FlowRunOut, HistoryEntry, LogRecord, StateChanged
from flowbus.settings import Settings, parse_duration
from flowbus.states import StateType, is_failed, is_finished

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


def client_command(
    typer_app: typer.Typer, name: str, help_text: str, hidden: bool = False
) -> Callable[[Callable[..., Awaitable[Any]]], Any]:
    def decorate(fn: Callable[..., Awaitable[Any]]) -> Any:
        wrapped = _strip_client(with_client(fn))
        return typer_app.command(name, help=help_text, hidden=hidden)(wrapped)

    return decorate


# ---- running the system ---------------------------------------------------


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


def _parse_params(values: list[str] | None, option: str = "--param") -> dict[str, Any]:
    """KEY=VALUE pairs; VALUE is JSON when it parses, else the string itself."""
    params: dict[str, Any] = {}
    for item in values or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise fail(f"{option} takes KEY=VALUE, got {item!r}", 2)
        try:
            params[key] = json.loads(raw)
        except ValueError:
            params[key] = raw
    return params


def _read_param_file(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise fail(f"--param-file {path}: {exc}", 2) from None
    if not isinstance(data, dict):
        raise fail(f"--param-file {path}: the file must hold a JSON object", 2)
    return data


def _aware_time(value: str | None, option: str) -> datetime | None:
    """An ISO 8601 time with its zone; a naive one is refused rather than guessed."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise fail(f"{option} takes an ISO 8601 time, e.g. 2030-01-31T09:00:00+01:00, got {value!r}", 2) from None
    if parsed.tzinfo is None:
        raise fail(f"{option} {value!r} has no timezone; add one, e.g. {value}Z (UTC) or {value}+01:00", 2)
    return parsed


def _start_time(start_at: str | None, start_in: str | None) -> datetime | None:
    if start_at is not None and start_in is not None:
        raise fail("give at most one of --start-at and --start-in", 2)
    if start_in is not None:
        try:
            return datetime.now(UTC) + parse_duration(start_in)
        except ValueError as exc:
            raise fail(f"--start-in: {exc}", 2) from None
    return _aware_time(start_at, "--start-at")


def _clock(ts: datetime) -> str:
    return f"{ts.astimezone():%H:%M:%S}"


def _when(ts: datetime | None) -> str:
    return f"{ts.astimezone():%Y-%m-%d %H:%M:%S %Z}" if ts else "-"


def _state_line(state_type: StateType, message: str | None) -> str:
    return f"{state_type.value}: {message}" if message else state_type.value


def _log_line(record: LogRecord) -> str:
    return f"{_clock(record.timestamp)} | {record.level:<7} | {record.name} | {record.message}"


Shown = HistoryEntry | StateChanged | LogRecord | FlowRunDeleted
# How many stored log records a watch replays before going live.
REPLAY_LOG_LIMIT = 10_000


def _log_key(record: LogRecord) -> tuple[Any, ...]:
    return (record.timestamp, record.task_run_id, record.name, record.level, record.message)


def _log_wanted(record: LogRecord, level: str | None, since: datetime | None, until: datetime | None) -> bool:
    return (
        (level is None or LOG_LEVELS.index(record.level) >= LOG_LEVELS.index(level))
        and (since is None or record.timestamp >= since)
        and (until is None or record.timestamp <= until)
    )


async def _follow(
    client: AsyncClient,
    flow_run_id: str,
    *,
    level: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = REPLAY_LOG_LIMIT,
) -> AsyncIterator[Shown]:
    """A run's states and logs: first what is stored, in time order, then the live
    ones (client.watch_flow_run) until the run finishes or is deleted."""
    history = await client.get_flow_run_history(flow_run_id)
    stored = await client.get_flow_run_logs(flow_run_id, level=level, since=since, until=until, limit=limit)
    replay: list[HistoryEntry | LogRecord] = [*history, *stored]
    for stored_item in sorted(replay, key=lambda i: i.timestamp):  # stable: states before logs of one instant
        yield stored_item
    if history and is_finished(history[-1].type):
        return
    # The live stream starts from the run's first message: skip what was replayed.
    last_version = history[-1].version if history else 0
    replayed = Counter(_log_key(r) for r in stored)
    async for item in client.watch_flow_run(flow_run_id):
        if isinstance(item, StateChanged) and item.version <= last_version:
            continue
        if isinstance(item, LogRecord):
            key = _log_key(item)
            if replayed[key]:
                replayed[key] -= 1
                continue
            if not _log_wanted(item, level, since, until):
                continue
        yield item


async def _watch(
    client: AsyncClient, flow_run_id: str, state: StateType, due: datetime, echo: Callable[[str], None]
) -> int:
    """The live view of `run --watch` and `watch`: the exit code (1 failed, cancelled or deleted)."""
    explainer = None
    if state is StateType.SCHEDULED:
        delay = max(0.0, (due - datetime.now(UTC)).total_seconds()) + client.settings.watch_explain_after
        explainer = asyncio.create_task(_explain_if_stuck(client, flow_run_id, delay, echo))
    code = 0
    try:
        async for item in _follow(client, flow_run_id):
            if isinstance(item, HistoryEntry | StateChanged):
                state_type, message, timestamp = _entered(item)
                if explainer is not None and state_type is not StateType.SCHEDULED:
                    explainer.cancel()
                echo(f"{_clock(timestamp)} | Entered state {_state_line(state_type, message)}")
                code = 1 if is_failed(state_type) or state_type is StateType.CANCELLED else 0
            elif isinstance(item, LogRecord):
                echo(_log_line(item))
            else:
                echo(f"Flow run deleted: {item.reason}")
                code = 1
    finally:
        if explainer is not None:
            explainer.cancel()
    return code


def _entered(item: HistoryEntry | StateChanged) -> tuple[StateType, str | None, datetime]:
    if isinstance(item, HistoryEntry):
        return item.type, item.message, item.timestamp
    return item.state.type, item.state.message, item.state.timestamp


async def _explain_if_stuck(client: AsyncClient, flow_run_id: str, after: float, echo: Callable[[str], None]) -> None:
    """If the run is still waiting a while after it is due, say why (once)."""
    await asyncio.sleep(after)
    with contextlib.suppress(FlowbusError, ServiceUnavailable):
        reason = await client.explain_waiting_run(flow_run_id)
        if reason:
            echo(f"Waiting: {reason}")


def _quiet(_line: str) -> None:
    pass


# How long `run --execute` lets the watch print the run's last logs and final state.
EXECUTE_WATCH_TAIL = 30.0


async def _execute(client: AsyncClient, create: Callable[[], Awaitable[FlowRunOut]], quiet: bool) -> int:
    """`run --execute`: create the run, claim it and run it in this process
    (flowbus.agent.runner.execute_here, the agent's runner code), printing what
    --watch prints; the exit code, 0 when the run ends Success."""
    from flowbus.agent.runner import Interrupted, NotClaimed, StopSignals, execute_here

    echo = _quiet if quiet else typer.echo
    # Signals are caught from before the run exists, so SIGINT or SIGTERM at any
    # point ends the run Failed instead of leaving it Scheduled where no agent
    # can take it.
    with StopSignals() as signals:
        created = await create()
        typer.echo(created.id if quiet else f"Flow run {created.name} created: {created.id}")
        watcher = asyncio.create_task(
            _watch(client, created.id, StateType.SUBMITTED, created.scheduled_start_time, echo)
        )
        settled = False
        try:
            await execute_here(client, created, client.settings, signals)
            settled = True
        except Interrupted:
            settled = True  # execute_here failed the run with the reason; the watch prints it
        except NotClaimed as exc:
            raise fail(str(exc)) from None
        finally:
            if settled:
                # The watch ends after the final state and the logs before it.
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(watcher, EXECUTE_WATCH_TAIL)
            watcher.cancel()
        final = (await client.get_flow_run(created.id)).run.state.type
    return 0 if final is StateType.SUCCESS else 1


@client_command(app, "run", "Create a flow run; with --watch, stream its states and logs until it ends.")
async def run(
    client: AsyncClient,
    flow_id: Annotated[str | None, typer.Option("--id", help="Flow id, or flow group (version group) id.")] = None,
    name: Annotated[str | None, typer.Option("--name", help="Flow name.")] = None,
    project: Annotated[str | None, typer.Option("--project", help="Project of --name.")] = None,
    param: Annotated[
        list[str] | None, typer.Option("--param", help="KEY=VALUE, VALUE as JSON else a string (repeatable).")
    ] = None,
    param_file: Annotated[
        Path | None, typer.Option("--param-file", help="A JSON object of parameters; --param wins over it.")
    ] = None,
    label: Annotated[list[str] | None, typer.Option("--label", help="Run label (repeatable).")] = None,
    run_name: Annotated[str | None, typer.Option("--run-name")] = None,
    context: Annotated[
        list[str] | None, typer.Option("--context", help="KEY=VALUE into the run's context (repeatable).")
    ] = None,
    idempotency_key: Annotated[
        str | None, typer.Option("--idempotency-key", help="A repeat with the same key returns the same run.")
    ] = None,
    start_at: Annotated[
        str | None, typer.Option("--start-at", help="ISO 8601 time with a timezone, e.g. 2030-01-31T09:00:00Z.")
    ] = None,
    start_in: Annotated[str | None, typer.Option("--start-in", help="Start after 90s, 10m, 2h, 1d...")] = None,
    watch: Annotated[bool, typer.Option("--watch", help="Stream states and logs; exit 1 if the run fails.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only the run id.")] = False,
    execute: Annotated[
        bool,
        typer.Option(
            "--execute", help="Run the flow here and now, with no agent; print as --watch; exit 1 unless it succeeds."
        ),
    ] = False,
) -> None:
    if (flow_id is None) == (name is None):
        raise fail("give exactly one of --id and --name", 2)
    if execute and (start_at is not None or start_in is not None):
        raise fail("--execute runs the flow now: --start-at and --start-in do not apply", 2)
    parameters = _read_param_file(param_file) if param_file is not None else {}
    parameters.update(_parse_params(param))
    common: dict[str, Any] = {
        "parameters": parameters,
        "context": _parse_params(context, "--context"),
        "labels": label,
        "run_name": run_name,
        "scheduled_start_time": _start_time(start_at, start_in),
        "idempotency_key": idempotency_key,
    }

    async def create() -> FlowRunOut:
        if flow_id is not None:
            try:
                return await client.create_flow_run(flow_id, **common)
            except NotFound:
                return await client.create_flow_run(version_group_id=flow_id, **common)
        return await client.create_flow_run(flow_name=name, project_name=project, **common)

    if execute:
        from flowbus.agent.runner import agentless_label

        # One label no agent has: no agent can take the run this process runs
        # (as in 1.x, it joins the --label values and replaces the flow's labels).
        common["labels"] = [*(label or []), agentless_label()]
        code = await _execute(client, create, quiet)
        if code:
            raise typer.Exit(code)
        return
    created = await create()
    typer.echo(created.id if quiet else f"Flow run {created.name} created: {created.id}")
    if watch:
        echo = _quiet if quiet else typer.echo
        code = await _watch(client, created.id, created.state.type, created.scheduled_start_time, echo)
        if code:
            raise typer.Exit(code)


@client_command(app, "watch", "Stream a flow run's states and logs (stored, then live) until it ends.")
async def watch_run(client: AsyncClient, flow_run_id: str) -> None:
    run = (await client.get_flow_run(flow_run_id)).run
    code = await _watch(client, run.id, run.state.type, run.scheduled_start_time, typer.echo)
    if code:
        raise typer.Exit(code)


def _level(value: str | None) -> str | None:
    if value is None:
        return None
    if value.upper() not in LOG_LEVELS:
        raise fail(f"--level takes one of {', '.join(LOG_LEVELS)}, got {value!r}", 2)
    return value.upper()


async def _logs(
    client: AsyncClient,
    flow_run_id: str,
    level: Annotated[
        str | None, typer.Option("--level", help="Minimum level: DEBUG INFO WARNING ERROR CRITICAL.")
    ] = None,
    since: Annotated[str | None, typer.Option("--since", help="ISO 8601 time with a timezone (inclusive).")] = None,
    until: Annotated[str | None, typer.Option("--until", help="ISO 8601 time with a timezone (inclusive).")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=10_000)] = 1000,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Then stream new logs until the run ends.")] = False,
) -> None:
    filters: dict[str, Any] = {
        "level": _level(level),
        "since": _aware_time(since, "--since"),
        "until": _aware_time(until, "--until"),
        "limit": limit,
    }
    if not follow:
        for record in await client.get_flow_run_logs(flow_run_id, **filters):
            typer.echo(_log_line(record))
        return
    async for item in _follow(client, flow_run_id, **filters):
        if isinstance(item, LogRecord):
            typer.echo(_log_line(item))


logs = client_command(app, "logs", "Show a flow run's stored logs; --follow streams new ones until it ends.")(_logs)
# The older spelling, kept working.
client_command(get_app, "logs", "Same as `flowbus logs`.", hidden=True)(_logs)


@client_command(get_app, "flow-run", "Show one flow run: its flow, version, state, parameters, times, task runs.")
async def get_flow_run(
    client: AsyncClient,
    flow_run_id: str,
    as_json: Annotated[bool, typer.Option("--json", help="Everything, as JSON.")] = False,
) -> None:
    detail = await client.get_flow_run(flow_run_id)
    if as_json:
        typer.echo(json.dumps(detail.model_dump(mode="json"), indent=2))
        return
    run = detail.run
    rows = [
        ("id", run.id),
        ("name", run.name),
        ("flow", f"{run.flow_name} ({run.flow_id}), project {run.project_name}"),
        ("version", str(run.version)),
        ("state", f"{_state_line(run.state.type, run.state.message)} (since {_when(run.state.timestamp)})"),
        ("parameters", json.dumps(run.parameters)),
        ("context", json.dumps(run.context)),
        ("labels", ", ".join(run.labels) or "-"),
        ("scheduled", _when(run.scheduled_start_time)),
        ("started", _when(run.start_time)),
        ("ended", _when(run.end_time)),
        ("agent", run.agent_id or "-"),
        ("idempotency key", run.idempotency_key or "-"),
    ]
    for key, value in rows:
        typer.echo(f"{key + ':':<17}{value}")
    if not detail.task_runs:
        typer.echo(f"{'task runs:':<17}-")
        return
    typer.echo("task runs:")
    _table(
        [("TASK", "STATE", "VERSION", "MESSAGE")]
        + [(t.task_slug, t.state.type.value, str(t.version), t.state.message or "") for t in detail.task_runs],
        indent="  ",
    )


def _table(rows: Sequence[Sequence[str]], indent: str = "") -> None:
    """Columns padded to their widest cell."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        typer.echo(indent + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def _state_type(value: str) -> StateType:
    by_name = {t.value.lower(): t for t in StateType}
    if value.lower() not in by_name:
        raise fail(f"--state takes one of {', '.join(t.value for t in StateType)}, got {value!r}", 2)
    return by_name[value.lower()]


@client_command(get_app, "flow-runs", "List flow runs, newest scheduled first.")
async def get_flow_runs(
    client: AsyncClient,
    flow: Annotated[str | None, typer.Option("--flow", help="Flow id.")] = None,
    flow_group: Annotated[str | None, typer.Option("--flow-group", help="Flow group (version group) id.")] = None,
    project: Annotated[str | None, typer.Option("--project")] = None,
    state: Annotated[
        list[str] | None, typer.Option("--state", help="State type, e.g. Scheduled, Running, Failed (repeatable).")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000)] = 50,
    offset: Annotated[int, typer.Option("--offset", min=0)] = 0,
) -> None:
    states = [_state_type(s) for s in state] if state else None
    runs = await client.get_flow_runs(
        flow_id=flow, flow_group_id=flow_group, project_name=project, states=states, limit=limit, offset=offset
    )
    if not runs:
        typer.echo("No flow runs.")
        return
    _table(
        [("NAME", "ID", "FLOW", "STATE", "SCHEDULED", "VERSION")]
        + [(r.name, r.id, r.flow_name, r.state.type.value, _when(r.scheduled_start_time), str(r.version)) for r in runs]
    )


@client_command(get_app, "history", "Show a flow run's state history, oldest first (--tasks: task runs too).")
async def get_history(
    client: AsyncClient,
    flow_run_id: str,
    tasks: Annotated[bool, typer.Option("--tasks", help="Include the task runs' states.")] = False,
) -> None:
    entries = await client.get_flow_run_history(flow_run_id, include_task_runs=tasks)
    slugs = {t.id: t.task_slug for t in (await client.get_flow_run(flow_run_id)).task_runs} if tasks else {}
    _table(
        [("TIME", "RUN", "VERSION", "STATE", "MESSAGE")]
        + [
            (
                _when(e.timestamp),
                "flow run" if e.task_run_id is None else f"task {slugs.get(e.task_run_id, e.task_run_id)}",
                str(e.version),
                e.type.value,
                e.message or "",
            )
            for e in entries
        ]
    )


@client_command(app, "cancel", "Cancel a flow run: Cancelling while it runs, Cancelled before it starts.")
async def cancel(
    client: AsyncClient,
    flow_run_id: str,
    message: Annotated[str | None, typer.Option("--message", "-m", help="The Cancelled state's message.")] = None,
) -> None:
    out = await client.cancel_flow_run(flow_run_id, message)
    if not out.changed:
        typer.echo(f"Flow run {flow_run_id} already finished ({out.state.type.value}): nothing to cancel.")
        return
    typer.echo(f"Flow run {flow_run_id}: {_state_line(out.state.type, out.state.message)}")


# ---- agents ---------------------------------------------------------------------


@client_command(get_app, "agents", "List agents with their labels and when each was last seen.")
async def get_agents(client: AsyncClient) -> None:
    agents = (await client.get_agents()).agents
    if not agents:
        typer.echo("No agents.")
        return
    _table(
        [("NAME", "ID", "TYPE", "LABELS", "LAST SEEN", "ONLINE")]
        + [
            (
                a.name,
                a.id,
                a.type,
                ",".join(a.labels) or "-",
                _when(a.last_seen),
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
) -> None:
    from flowbus.agent.local import run_local_agent

    try:
        run_local_agent(labels=label or [], name=name, hostname_label=not no_hostname_label, limit=limit)
    except NatsUnavailable as exc:
        raise fail(f"{exc} (is `flowbus up` running? FLOWBUS_NATS_URL overrides)") from None
    except (ServiceUnavailable, ValueError) as exc:
        raise fail(str(exc)) from None


def main() -> None:
    app()


if __name__ == "__main__":
    main()
