"""``flowbus get schedule`` and ``flowbus get scheduler``.

Reads: ``flowbus.cmd.scheduler.get_schedule`` and ``flowbus.cmd.scheduler.status`` replies (through the client).
"""

from __future__ import annotations

import json

import typer

from flowbus.cli._output import table, when
from flowbus.cli.app import client_command, get_app
from flowbus.client import AsyncClient


@client_command(get_app, "schedule", "Show a flow's schedule and its next start times.")
async def get_schedule(
    client: AsyncClient, flow_id: str, count: int = typer.Option(10, "--count", min=1, max=1000)
) -> None:
    schedule = await client.get_schedule(flow_id, count)
    if schedule.source is None:
        typer.echo(f"Flow {flow_id} has no schedule.")
        return
    typer.echo(f"Schedule ({schedule.source}'s): {'active' if schedule.active else 'off'}")
    for index, clock in enumerate(schedule.clocks):
        spec = clock.model_dump(mode="json", exclude_none=True, exclude_defaults=True)
        typer.echo(f"  clock {index}: {json.dumps(spec)}")
    if not schedule.upcoming:
        typer.echo("No upcoming start times.")
        return
    table(
        [("START", "CLOCK", "PARAMETERS", "LABELS")]
        + [
            (
                when(run.start),
                str(run.clock_index),
                json.dumps(run.parameters),
                ",".join(run.labels) if run.labels is not None else "(flow's)",
            )
            for run in schedule.upcoming
        ]
    )


@client_command(get_app, "scheduler", "Show the scheduler's status: releases, late runs, runs created from clocks.")
async def get_scheduler(client: AsyncClient) -> None:
    status = await client.get_scheduler_status()
    typer.echo(f"{'released:':<15}{status.released_total}")
    typer.echo(f"{'last release:':<15}{when(status.last_release)}")
    typer.echo(f"{'late runs:':<15}{status.late_runs}")
    typer.echo(f"{'leases held:':<15}{', '.join(status.leases_held) or '-'} (by the instance that answered)")
    planner = status.planner
    if planner is None:
        typer.echo("planner: not running in the instance that answered")
        return
    typer.echo(
        f"schedules: {planner.schedules}  created: {planner.runs_created}  deleted: {planner.runs_deleted}  "
        f"skipped: {planner.runs_skipped}  errors: {planner.errors}"
    )
    for skip in planner.recent_skips:
        typer.echo(
            f"  skipped {skip.count} run(s) of flow {skip.flow_id} (clock {skip.clock_id}) "
            f"from {when(skip.first)} to {when(skip.last)}: the scheduler was down"
        )
    if planner.last_error:
        typer.echo(f"last error: {planner.last_error}")
