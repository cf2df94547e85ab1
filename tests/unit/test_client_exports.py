"""``flowbus.client`` is a package of private modules: its public names stay importable from it."""

from __future__ import annotations

import flowbus
import flowbus.client

PUBLIC = {
    "AGENT_ONLINE_BEATS",
    "CLIENT_ERRORS",
    "FAILOVER_SECONDS",
    "FIRST_ATTEMPT_TIMEOUT",
    "NATS_HINT",
    "REPLAY_LOG_LIMIT",
    "WATCH_CONSUMER_EXPIRY",
    "AsyncClient",
    "Client",
    "FollowItem",
    "NatsUnavailable",
    "ServiceUnavailable",
    "StateLike",
    "WatchItem",
    "build",
    "describe_error",
    "state_spec",
}


def test_the_public_names_are_exported() -> None:
    assert set(flowbus.client.__all__) == PUBLIC
    namespace: dict[str, object] = {}
    exec("from flowbus.client import *", namespace)
    assert set(namespace) >= PUBLIC


def test_the_top_level_package_hands_out_the_blocking_client() -> None:
    assert flowbus.Client is flowbus.client.Client
