"""What resolvers reach through ``info.context``: the process's gateway and the request.

``Gateway`` is one per process: the settings, the database for reads
(read-only sessions; a replica when ``gateway.read_database_url`` is set),
the flowbus client that sends every write as a NATS command, and the key
store. ``RequestContext`` is one per request: who sent it, its headers, and
the batch loaders of its queries. Reads and writes nothing on NATS itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias, cast

from graphql import GraphQLResolveInfo

from flowbus.client import AsyncClient
from flowbus.db.engine import Database
from flowbus.settings import Settings
from flowbus_services.gateway.auth import Principal


@dataclass
class Gateway:
    settings: Settings
    db: Database  # reads only
    client: AsyncClient
    # Verifies a bearer token: ``async verify(token) -> Principal | None``.
    keys: Any = None


@dataclass
class RequestContext:
    gateway: Gateway
    principal: Principal
    headers: Mapping[str, str] = field(default_factory=dict)
    # Per-request batch loaders, keyed by what they load (see queries).
    loaders: dict[Any, Any] = field(default_factory=dict)


# graphql-core 3.2's resolve info is not generic over its context: this is the one
# typed way from a resolver's ``info`` to the request's context.
Info: TypeAlias = GraphQLResolveInfo


def request_context(info: Info) -> RequestContext:
    return cast(RequestContext, info.context)
