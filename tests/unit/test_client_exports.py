"""``flowbus.client`` is a package of private modules: its public names stay importable from it."""

from __future__ import annotations

import flowbus
import flowbus.client

# What flowbus.client offered as one module, and what the package added.
BEFORE = set(
    "AsyncClient Client NatsUnavailable ServiceUnavailable StateLike build state_spec AGENT_ONLINE_BEATS"  # noqa: SIM905
    " FAILOVER_SECONDS FIRST_ATTEMPT_TIMEOUT WATCH_CONSUMER_EXPIRY".split()
)
ADDED = set("describe_error CLIENT_ERRORS NATS_HINT FollowItem WatchItem REPLAY_LOG_LIMIT FlowRunInfo".split())  # noqa: SIM905
PUBLIC = BEFORE | ADDED


def test_the_public_names_are_exported() -> None:
    assert set(flowbus.client.__all__) == PUBLIC
    namespace: dict[str, object] = {}
    exec("from flowbus.client import *", namespace)
    assert set(namespace) >= PUBLIC


def test_the_top_level_package_hands_out_the_blocking_client() -> None:
    assert flowbus.Client is flowbus.client.Client
