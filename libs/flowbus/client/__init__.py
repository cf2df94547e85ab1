"""The Python client: ``AsyncClient`` for asyncio code, ``Client`` for scripts.

Both speak the command subjects of ``flowbus.subjects`` and unwrap the reply
envelope: data is returned, an error is raised as the matching
``FlowbusError`` subclass. The private modules hold one concern each: the
transport (``_transport``), one module per resource, watching (``_watch``)
and the blocking twin (``_sync``); import from here, not from them.

Reads: ``flowbus.evt.flow_run.<id>.>`` and ``flowbus.logs.<id>`` (watching).
Writes: ``flowbus.cmd.*`` requests.
"""

from __future__ import annotations

from flowbus.client._agents import AGENT_ONLINE_BEATS
from flowbus.client._async import AsyncClient
from flowbus.client._commands import StateLike, build, state_spec
from flowbus.client._errors import CLIENT_ERRORS, NATS_HINT, describe_error
from flowbus.client._run_info import FlowRunInfo
from flowbus.client._sync import Client
from flowbus.client._transport import FIRST_ATTEMPT_TIMEOUT, ServiceUnavailable
from flowbus.client._watch import (
    FAILOVER_SECONDS,
    REPLAY_LOG_LIMIT,
    WATCH_CONSUMER_EXPIRY,
    FollowItem,
    WatchItem,
)
from flowbus.runtime.nats import NatsUnavailable

__all__ = [
    "AGENT_ONLINE_BEATS",
    "CLIENT_ERRORS",
    "FAILOVER_SECONDS",
    "FIRST_ATTEMPT_TIMEOUT",
    "NATS_HINT",
    "REPLAY_LOG_LIMIT",
    "WATCH_CONSUMER_EXPIRY",
    "AsyncClient",
    "Client",
    "FlowRunInfo",
    "FollowItem",
    "NatsUnavailable",
    "ServiceUnavailable",
    "StateLike",
    "WatchItem",
    "build",
    "describe_error",
    "state_spec",
]
