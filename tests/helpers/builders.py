"""Builders shared by the tests: unique names, serialized flows and registered flows."""

from __future__ import annotations

import uuid
from typing import Any

from flowbus.client import AsyncClient
from flowbus.schemas.flows import FlowOut, ParameterSpec, RunConfigSpec, SerializedFlow, StorageSpec, TaskSpec


def unique(prefix: str) -> str:
    """A name no other test uses: tests of one module share a nats-server and its streams."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def serialized_flow(
    name: str,
    *,
    tasks: list[str] | None = None,
    parameters: list[ParameterSpec] | None = None,
    labels: list[str] | None = None,
    path: str = "/nonexistent/flow.py",
    **extra: Any,
) -> SerializedFlow:
    return SerializedFlow(
        name=name,
        tasks=[TaskSpec(slug=f"{t}-1", name=t) for t in (tasks if tasks is not None else ["work"])],
        parameters=parameters or [],
        storage=StorageSpec(type="script", path=path),
        run_config=RunConfigSpec(labels=labels),
        **extra,
    )


async def register(client: AsyncClient, project: str, name: str, **kwargs: Any) -> FlowOut:
    await client.create_project(project, skip_if_exists=True)
    flow_kwargs = {k: kwargs.pop(k) for k in ("tasks", "parameters", "labels", "path", "schedule") if k in kwargs}
    return await client.register(serialized_flow(name, **flow_kwargs), project, **kwargs)
