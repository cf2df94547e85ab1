"""Raw NATS connections for tests, with a credential of the session's set (tests/conftest.py)."""

from __future__ import annotations

from typing import Any

import nats
from nats.aio.client import Client

from flowbus.bus_auth import BusRole, Credential, default_role_file
from flowbus.settings import Settings


def credential(role: BusRole = BusRole.SERVICE) -> Credential:
    """The session's credential of ``role`` (``FLOWBUS_AUTH_DIR``)."""
    return Credential.load(default_role_file(Settings().auth_path(), role))


async def raw_connect(url: str | list[str], role: BusRole = BusRole.SERVICE, **options: Any) -> Client:
    """A plain nats-py connection as ``role``."""
    return await nats.connect(url, **credential(role).connect_options(), **options)


def bus_env(url: str) -> dict[str, str]:
    """The variables that point a child process at a test's nats-server with the session's credentials."""
    return {"FLOWBUS_NATS_URL": url, "FLOWBUS_AUTH_DIR": str(Settings().auth_path())}
