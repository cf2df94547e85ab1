"""``flowbus register``, ``get flows``, ``get flow`` and the ``flow`` group (archive, settings, schedule, ...).

Writes: ``flowbus.cmd.registration.*`` (through the client).
"""

from __future__ import annotations

import importlib
import json
import os
import runpy
import sys
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from flowbus.cli._parse import aware_time, parse_params
from flowbus.cli.app import app, client_command, fail, flow_app, get_app
from flowbus.client import AsyncClient
from flowbus.links import flow_url
from flowbus.schemas.flows import ClockSpec, FlowOut, ScheduleSpec
from flowbus.settings import parse_duration


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


@client_command(
    flow_app,
    "schedule",
    "Turn a flow's auto-scheduling on or off; set its group's schedule to one clock (--cron or --interval), "
    "or --clear it so the flow's own applies.",
)
async def flow_schedule(
    client: AsyncClient,
    flow_id: str,
    on: Annotated[
        bool | None, typer.Option("--on/--off", help="Turn the schedule on (after any change) or off.")
    ] = None,
    cron: Annotated[str | None, typer.Option("--cron", help='A cron clock, e.g. "0 6 * * *".')] = None,
    timezone: Annotated[str | None, typer.Option("--timezone", help="The --cron clock's timezone, e.g. UTC.")] = None,
    interval: Annotated[str | None, typer.Option("--interval", help="An interval clock: 2s, 30m, 1h, 1d...")] = None,
    start_date: Annotated[
        str | None, typer.Option("--start-date", help="The --interval clock's start, ISO 8601 with a timezone.")
    ] = None,
    clear: Annotated[bool, typer.Option("--clear", help="Unset the group's schedule: the flow's own applies.")] = False,
) -> None:
    schedule = _group_schedule(cron, timezone, interval, start_date, clear)
    if on is None and schedule is None and not clear:
        raise fail("give --on or --off, or one of --cron, --interval and --clear", 2)
    flow: FlowOut | None = None
    if on is False:
        # Off first: a schedule the switched-on flow could not take is then accepted.
        flow = await client.set_flow_schedule_state(flow_id, False)
    if schedule is not None or clear:
        group_id = (flow or await client.get_flow(flow_id)).flow_group_id
        await client.set_flow_group_schedule(group_id, schedule)
        flow = await client.get_flow(flow_id)
    if on:
        flow = await client.set_flow_schedule_state(flow_id, True)
    assert flow is not None
    typer.echo(f"{flow.name}: schedule {_describe_schedule(flow)}, {_on(flow.is_schedule_active)}")


def _group_schedule(
    cron: str | None, timezone: str | None, interval: str | None, start_date: str | None, clear: bool
) -> ScheduleSpec | None:
    """The one-clock schedule `flow schedule` was given, or None (none given, or --clear); exit 2 on bad options."""
    if sum((cron is not None, interval is not None, clear)) > 1:
        raise fail("give only one of --cron, --interval and --clear", 2)
    if timezone is not None and cron is None:
        raise fail("--timezone goes with --cron", 2)
    if start_date is not None and interval is None:
        raise fail("--start-date goes with --interval", 2)
    if cron is not None:
        clock: dict[str, object] = {"type": "cron", "cron": cron, "timezone": timezone}
    elif interval is not None:
        try:
            seconds = parse_duration(interval).total_seconds()
        except ValueError as exc:
            raise fail(f"--interval: {exc}", 2) from None
        clock = {"type": "interval", "interval_seconds": seconds, "start_date": aware_time(start_date, "--start-date")}
    else:
        return None
    try:
        return ScheduleSpec(clocks=[ClockSpec.model_validate(clock)])
    except ValidationError as exc:
        problems = "; ".join(f"{e['loc'][-1]}: {e['msg']}" if e["loc"] else e["msg"] for e in exc.errors())
        raise fail(f"bad schedule: {problems}", 2) from None


def _describe_schedule(flow: FlowOut) -> str:
    if flow.schedule is None:
        return "none"
    return "; ".join(_describe_clock(c) for c in flow.schedule.clocks)


def _describe_clock(clock: ClockSpec) -> str:
    if clock.type == "cron":
        return f"cron {clock.cron!r}" + (f" in {clock.timezone}" if clock.timezone else "")
    if clock.type == "interval":
        start = f" from {clock.start_date.isoformat()}" if clock.start_date else ""
        return f"every {clock.interval_seconds:g}s{start}"
    return f"{len(clock.dates or [])} dates"


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
    group = await client.set_flow_group_default_parameters(flow.flow_group_id, parse_params(param))
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
        url = flow_url(client.settings, out.id)
        if url is not None:
            typer.echo(f"Flow URL: {url}")
