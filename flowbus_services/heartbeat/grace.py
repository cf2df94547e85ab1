"""Grace after an outage: from when the heartbeat service's loops may judge silence.

Heartbeats are core NATS: those sent while this instance was down or
disconnected are lost, so silence that began before its connection last
came up (``ServiceContext.connected_since``) shows nothing. A loop that
acts on N seconds of silence therefore judges a run no earlier than
max(its last sign of life, connected_since) + N (docs/architecture.md,
"Zombie Killer"). Reads and writes no subject.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from flowbus.db.tables import utcnow
from flowbus.runtime.service import ServiceContext


def silence_cutoff(ctx: ServiceContext, seconds: float) -> datetime | None:
    """Now minus ``seconds``: what was last heard of before it has been
    silent too long; None while the connection has been up for less than
    ``seconds`` (or is down): then nothing is judged yet."""
    cutoff = utcnow() - timedelta(seconds=seconds)
    since = ctx.connected_since
    if since is None or since > cutoff:
        return None
    return cutoff
