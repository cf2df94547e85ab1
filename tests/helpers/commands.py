"""Commands sent as raw bytes on a plain NATS connection, as a client other
than flowbus's would send them: for what ``AsyncClient`` refuses to send."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from nats.aio.client import Client

TIMEOUT = 10.0


async def send(nc: Client, subject: str, body: bytes | Mapping[str, Any]) -> dict[str, Any]:
    """Send ``body`` (bytes as they are, a mapping as JSON) and return the decoded reply envelope."""
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    reply: dict[str, Any] = json.loads((await nc.request(subject, payload, timeout=TIMEOUT)).data)
    return reply
