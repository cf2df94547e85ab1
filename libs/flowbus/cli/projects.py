"""``flowbus create project``, ``get projects``, ``get project`` and ``project rename/describe/delete``.

Writes: ``flowbus.cmd.registration.*`` (through the client).
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from flowbus.cli.app import client_command, create_app, get_app, project_app
from flowbus.client import AsyncClient


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
