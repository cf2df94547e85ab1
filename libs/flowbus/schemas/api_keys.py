"""API keys of the gateway: the roles a key can have, the key commands and their replies, the key events.

Commands (served by the gateway, queue group ``gateway``):
``flowbus.cmd.gateway.create_api_key`` (CreateApiKey -> ApiKeyCreated),
``flowbus.cmd.gateway.list_api_keys`` (ListApiKeys -> ApiKeyList),
``flowbus.cmd.gateway.delete_api_key`` (DeleteApiKey -> ApiKeyDeleted).
Events: ``flowbus.evt.api_key.<id>.created`` (ApiKeyAdded) and
``flowbus.evt.api_key.<id>.deleted`` (ApiKeyDeleted), on which every
gateway instance drops a revoked key. No message but ApiKeyCreated, the
reply to its creator, ever carries a key; none carries its hash.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import StringConstraints

from flowbus import subjects
from flowbus.schemas.common import Message

# Letters, digits, dot, dash, underscore and @: a name that is safe in a shell,
# a log line and a table, and that cannot be mistaken for an option.
API_KEY_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._@-]*$"
API_KEY_NAME_MAX = 100
ApiKeyName = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=API_KEY_NAME_MAX, pattern=API_KEY_NAME_PATTERN),
]


class Role(StrEnum):
    """What a key may do: ``admin`` everything; ``user`` everything but keys and deleting projects;
    ``runner`` what an agent and its runs need; ``read-only`` queries and subscriptions."""

    ADMIN = "admin"
    USER = "user"
    RUNNER = "runner"
    READ_ONLY = "read-only"


class CreateApiKey(Message):
    name: ApiKeyName
    role: Role


class ListApiKeys(Message):
    """Every key, by name (never the keys themselves nor their hashes)."""


class DeleteApiKey(Message):
    name: ApiKeyName


class ApiKeyOut(Message):
    """A key as it is shown: who it is, never what it is."""

    id: str
    name: str
    role: Role
    created: datetime
    last_used: datetime | None = None


class ApiKeyCreated(ApiKeyOut):
    """The reply to CreateApiKey: the new key itself, shown this once (only its SHA-256 is stored)."""

    key: str


class ApiKeyList(Message):
    keys: list[ApiKeyOut]


class ApiKeyAdded(ApiKeyOut):
    """Published on ``flowbus.evt.api_key.<id>.created``: the new key's metadata, without the key."""

    def subject(self) -> str:
        return subjects.api_key_event(self.id, "created")

    def msg_id(self) -> str:
        return subjects.event_msg_id("api_key", self.id, "created")


class ApiKeyDeleted(Message):
    """The reply to DeleteApiKey, and the event on ``flowbus.evt.api_key.<id>.deleted``:
    every gateway instance refuses the key from then on."""

    id: str
    name: str

    def subject(self) -> str:
        return subjects.api_key_event(self.id, "deleted")

    def msg_id(self) -> str:
        return subjects.event_msg_id("api_key", self.id, "deleted")
