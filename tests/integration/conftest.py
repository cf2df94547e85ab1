"""Fixtures of the integration tier. The nats-server, the databases and the
services in this process are in the root conftest.py."""

from __future__ import annotations

from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.client import Client


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[Client]:
    """A plain NATS connection to the module's nats-server, for raw commands and subscriptions."""
    conn = await nats.connect(nats_url)
    try:
        yield conn
    finally:
        await conn.close()
