"""The GraphQL fields of API keys: ``viewer`` (any key, who it is), and
``api_key``, ``create_api_key``, ``delete_api_key`` (admin only, auth.py).

Lists come from the key store (the primary database); creating and deleting
are the gateway's own NATS commands, so they behave exactly as from the CLI.
Writes: ``flowbus.cmd.gateway.create_api_key`` and ``delete_api_key`` (through the client).
"""

from __future__ import annotations

from typing import Any

from ariadne import MutationType, QueryType

from flowbus.schemas.api_keys import ApiKeyOut
from flowbus_services.gateway.auth import ROLE_PERMISSIONS, Permission
from flowbus_services.gateway.context import Info, request_context

query = QueryType()
mutation = MutationType()


def _row(key: ApiKeyOut) -> dict[str, Any]:
    return {"id": key.id, "name": key.name, "role": key.role.value, "created": key.created, "last_used": key.last_used}


@query.field("viewer")
def resolve_viewer(_: Any, info: Info) -> dict[str, Any]:
    principal = request_context(info).principal
    allowed = ROLE_PERMISSIONS[principal.role]
    return {
        "name": principal.name,
        "role": principal.role.value,
        "permissions": [p.value for p in Permission if p in allowed],
    }


@query.field("api_key")
async def resolve_api_keys(_: Any, info: Info) -> list[dict[str, Any]]:
    listing = await request_context(info).gateway.keys.list()
    return [_row(key) for key in listing.keys]


@mutation.field("create_api_key")
async def resolve_create_api_key(_: Any, info: Info, input: dict[str, Any]) -> dict[str, Any]:
    # The message validates name and role (VALIDATION_ERROR) before anything is sent.
    created = await request_context(info).gateway.client.create_api_key(input["name"], input["role"])
    return {"id": created.id, "key": created.key}


@mutation.field("delete_api_key")
async def resolve_delete_api_key(_: Any, info: Info, input: dict[str, Any]) -> dict[str, Any]:
    await request_context(info).gateway.client.delete_api_key(input["name"])
    return {"success": True, "error": None}


BINDABLES = [query, mutation]
