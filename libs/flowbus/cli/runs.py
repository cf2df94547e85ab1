"""``flowbus run``, ``watch``, ``logs``, ``cancel`` and ``get flow-run``, ``flow-runs``, ``history``.

Writes: ``flowbus.cmd.run_creation.create_flow_run`` and ``flowbus.cmd.state.*``
(through the client); ``run --execute`` also runs the flow here, as an
agent's runner would (``flowbus.agent.runner.execute_here``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from flowbus.cli._output import log_line, state_line, table, when
from flowbus.cli._parse import aware_time, log_level, parse_params, read_param_file, start_time, state_type
from flowbus.cli._watching import quiet_echo, show_run
from flowbus.cli.app import app, client_command, fail, get_app
from flowbus.client import AsyncClient
from flowbus.links import flow_run_url
from flowbus.runtime import telemetry
from flowbus.schemas.common import NotFound
from flowbus.schemas.runs import FlowRunOut, LogRecord
from flowbus.states import StateType

# How long `run --execute` lets the watch print the run's last logs and final state.
EXECUTE_WATCH_TAIL = 30.0


async def _execute(client: AsyncClient, create: Callable[[], Awaitable[FlowRunOut]], quiet: bool) -> int:
    """`run --execute`: create the run, claim it and run it in this process
    (flowbus.agent.runner.execute_here, the agent's runner code), printing what
    --watch prints; the exit code, 0 when the run ends Success."""
    from flowbus.agent.runner import Interrupted, NotClaimed, StopSignals, execute_here

    echo = quiet_echo if quiet else typer.echo
    # Signals are caught from before the run exists, so SIGINT or SIGTERM at any
    # point ends the run Failed instead of leaving it Scheduled where no agent
    # can take it.
    with StopSignals() as signals:
        created = await create()
        _announce(client, created, quiet)
        watcher = asyncio.create_task(
            show_run(client, created.id, StateType.SUBMITTED, created.scheduled_start_time, echo)
        )
        settled = False
        # From here this process is the run's runner: it waits out a restart as an agent's does.
        client.outage_seconds = client.settings.nats.outage_retry_seconds
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
    common = _run_fields(param, param_file, context, label, run_name, idempotency_key, start_at, start_in)
    create = _creator(client, flow_id, name, project, common)
    if execute:
        from flowbus.agent.runner import agentless_label

        # One label no agent has: no agent can take the run this process runs
        # (as in 1.x, it joins the --label values and replaces the flow's labels).
        common["labels"] = [*(label or []), agentless_label()]
        code = await _execute(client, create, quiet)
    else:
        code = await _create(client, create, watch, quiet)
    if code:
        raise typer.Exit(code)


def _run_fields(
    param: list[str] | None,
    param_file: Path | None,
    context: list[str] | None,
    labels: list[str] | None,
    run_name: str | None,
    idempotency_key: str | None,
    start_at: str | None,
    start_in: str | None,
) -> dict[str, Any]:
    """The fields the run is created with, from `run`'s options; --param wins over --param-file."""
    parameters = read_param_file(param_file) if param_file is not None else {}
    parameters.update(parse_params(param))
    return {
        "parameters": parameters,
        "context": parse_params(context, "--context"),
        "labels": labels,
        "run_name": run_name,
        "scheduled_start_time": start_time(start_at, start_in),
        "idempotency_key": idempotency_key,
    }


def _creator(
    client: AsyncClient, flow_id: str | None, name: str | None, project: str | None, fields: dict[str, Any]
) -> Callable[[], Awaitable[FlowRunOut]]:
    """Create the run of the flow given by id (or its group's id) or by name; ``fields`` is read when it runs."""

    async def create() -> FlowRunOut:
        with telemetry.tracer().start_as_current_span("flowbus run"):
            return await _create_run(client, flow_id, name, project, fields)

    return create


async def _create_run(
    client: AsyncClient, flow_id: str | None, name: str | None, project: str | None, fields: dict[str, Any]
) -> FlowRunOut:
    if flow_id is not None:
        try:
            return await client.create_flow_run_out(flow_id, **fields)
        except NotFound:
            return await client.create_flow_run_out(version_group_id=flow_id, **fields)
    return await client.create_flow_run_out(flow_name=name, project_name=project, **fields)


async def _create(client: AsyncClient, create: Callable[[], Awaitable[FlowRunOut]], watch: bool, quiet: bool) -> int:
    """`run` without --execute: create the run, print it, and with --watch follow it; the exit code."""
    created = await create()
    _announce(client, created, quiet)
    if not watch:
        return 0
    echo = quiet_echo if quiet else typer.echo
    return await show_run(client, created.id, created.state.type, created.scheduled_start_time, echo)


def _announce(client: AsyncClient, created: FlowRunOut, quiet: bool) -> None:
    """The created run: its id alone when quiet, else its name, id and, when the UI's URL is known, its page."""
    if quiet:
        typer.echo(created.id)
        return
    typer.echo(f"Flow run {created.name} created: {created.id}")
    url = flow_run_url(client.settings, created.id)
    if url is not None:
        typer.echo(f"Flow run URL: {url}")


@client_command(app, "watch", "Stream a flow run's states and logs (stored, then live) until it ends.")
async def watch_run(client: AsyncClient, flow_run_id: str) -> None:
    run = (await client.get_flow_run(flow_run_id)).run
    code = await show_run(client, run.id, run.state.type, run.scheduled_start_time, typer.echo)
    if code:
        raise typer.Exit(code)


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
        "level": log_level(level),
        "since": aware_time(since, "--since"),
        "until": aware_time(until, "--until"),
        "limit": limit,
    }
    if not follow:
        for record in await client.get_flow_run_logs(flow_run_id, **filters):
            typer.echo(log_line(record))
        return
    async for item in client.follow_flow_run(flow_run_id, **filters):
        if isinstance(item, LogRecord):
            typer.echo(log_line(item))


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
        ("state", f"{state_line(run.state.type, run.state.message)} (since {when(run.state.timestamp)})"),
        ("late", "yes: still Scheduled past its start time" if run.late else "no"),
        ("parameters", json.dumps(run.parameters)),
        ("context", json.dumps(run.context)),
        ("labels", ", ".join(run.labels) or "-"),
        ("scheduled", when(run.scheduled_start_time)),
        ("started", when(run.start_time)),
        ("ended", when(run.end_time)),
        ("agent", run.agent_id or "-"),
        ("idempotency key", run.idempotency_key or "-"),
    ]
    for key, value in rows:
        typer.echo(f"{key + ':':<17}{value}")
    if not detail.task_runs:
        typer.echo(f"{'task runs:':<17}-")
        return
    typer.echo("task runs:")
    table(
        [("TASK", "STATE", "VERSION", "MESSAGE")]
        + [(t.task_slug, t.state.type.value, str(t.version), t.state.message or "") for t in detail.task_runs],
        indent="  ",
    )


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
    late: Annotated[
        bool, typer.Option("--late", help="Only runs still Scheduled scheduler.late_after past their start time.")
    ] = False,
) -> None:
    states = [state_type(s) for s in state] if state else None
    runs = await client.get_flow_runs(
        flow_id=flow,
        flow_group_id=flow_group,
        project_name=project,
        states=states,
        limit=limit,
        offset=offset,
        late=True if late else None,
    )
    if not runs:
        typer.echo("No late flow runs." if late else "No flow runs.")
        return
    table(
        [("NAME", "ID", "FLOW", "STATE", "SCHEDULED", "VERSION")]
        + [(r.name, r.id, r.flow_name, _run_state(r), when(r.scheduled_start_time), str(r.version)) for r in runs]
    )


def _run_state(run: FlowRunOut) -> str:
    return f"{run.state.type.value} (LATE)" if run.late else run.state.type.value


@client_command(get_app, "history", "Show a flow run's state history, oldest first (--tasks: task runs too).")
async def get_history(
    client: AsyncClient,
    flow_run_id: str,
    tasks: Annotated[bool, typer.Option("--tasks", help="Include the task runs' states.")] = False,
) -> None:
    entries = await client.get_flow_run_history(flow_run_id, include_task_runs=tasks)
    slugs = {t.id: t.task_slug for t in (await client.get_flow_run(flow_run_id)).task_runs} if tasks else {}
    table(
        [("TIME", "RUN", "VERSION", "STATE", "MESSAGE")]
        + [
            (
                when(e.timestamp),
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
    typer.echo(f"Flow run {flow_run_id}: {state_line(out.state.type, out.state.message)}")
