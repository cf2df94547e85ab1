"""API keys: the client's side of the gateway's key commands.

Writes: ``flowbus.cmd.gateway.create_api_key``, ``list_api_keys`` and
``delete_api_key`` requests.
"""

from __future__ import annotations

from flowbus import subjects
from flowbus.client._commands import build
from flowbus.client._transport import Transport
from flowbus.schemas.api_keys import (
    ApiKeyCreated,
    ApiKeyDeleted,
    ApiKeyList,
    ApiKeyOut,
    CreateApiKey,
    DeleteApiKey,
    ListApiKeys,
    Role,
)


class ApiKeys(Transport):
    """The gateway's API keys: whoever reaches NATS may manage them (the gateway checks HTTP requests)."""

    async def create_api_key(self, name: str, role: Role | str) -> ApiKeyCreated:
        """A new key named ``name`` with ``role`` (admin, user, runner or read-only). The reply holds
        the key itself, shown this once: only its hash is stored."""
        cmd = build(CreateApiKey, name=name, role=role)
        return await self.request(subjects.GatewayCommands.CREATE_API_KEY, cmd, ApiKeyCreated)

    async def list_api_keys(self) -> list[ApiKeyOut]:
        """Every key by name, with its role, creation and last use (never the key nor its hash)."""
        out = await self.request(subjects.GatewayCommands.LIST_API_KEYS, ListApiKeys(), ApiKeyList, idempotent=True)
        return out.keys

    async def delete_api_key(self, name: str) -> ApiKeyDeleted:
        """Revoke the key named ``name``: every gateway refuses it from its next request on."""
        cmd = build(DeleteApiKey, name=name)
        return await self.request(subjects.GatewayCommands.DELETE_API_KEY, cmd, ApiKeyDeleted)
