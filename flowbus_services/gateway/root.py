"""The root fields every client may ask first: ``hello`` and ``api``. Reads and writes nothing on NATS."""

from __future__ import annotations

from typing import Any

from ariadne import QueryType

from flowbus.client._agents import AGENT_ONLINE_BEATS
from flowbus.version import __version__
from flowbus_services.gateway.context import Info, request_context

query = QueryType()


@query.field("hello")
def resolve_hello(*_: Any) -> str:
    return "👋"


@query.field("api")
def resolve_api(_: Any, info: Info) -> dict[str, Any]:
    settings = request_context(info).gateway.settings
    return {
        "backend": "flowbus",
        "mode": "normal",
        "version": __version__,
        "core_version": __version__,
        # What `flowbus get agents` calls online: heard from within this many seconds.
        "agent_online_seconds": AGENT_ONLINE_BEATS * settings.heartbeat.agent_interval_seconds,
    }


BINDABLES = [query]
