"""API keys of the gateway: the roles a key can have.

The commands that create, list and delete keys (``flowbus.cmd.gateway.*``)
are added beside these by the gateway's key store.
"""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    """What a key may do: ``admin`` everything; ``user`` everything but keys;
    ``runner`` what an agent and its runs need; ``read-only`` queries and subscriptions."""

    ADMIN = "admin"
    USER = "user"
    RUNNER = "runner"
    READ_ONLY = "read-only"
