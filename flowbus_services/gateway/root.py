"""The root fields every client may ask first: ``hello`` and ``api``. Reads and writes nothing on NATS."""

from __future__ import annotations

from typing import Any

from ariadne import QueryType

from flowbus.version import __version__

query = QueryType()


@query.field("hello")
def resolve_hello(*_: Any) -> str:
    return "👋"


@query.field("api")
def resolve_api(*_: Any) -> dict[str, str]:
    return {"backend": "flowbus", "mode": "normal", "version": __version__, "core_version": __version__}


BINDABLES = [query]
