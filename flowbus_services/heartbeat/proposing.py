"""Proposing a transition read from the database, as the heartbeat service's loops do.

Writes: ``flowbus.cmd.state.set_flow_run_state`` (through the request it is given).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable

from flowbus.schemas.common import Conflict, NotFound, VersionLockingError

log = logging.getLogger(__name__)


async def propose(request: Awaitable[object], loop: str) -> bool:
    """Send one transition at the version the loop read; False when the run
    moved on since (another writer won: the run finished or started after
    all, a second instance, a task run became active): nothing to do then."""
    try:
        await request
        return True
    except (VersionLockingError, Conflict, NotFound) as exc:
        log.info("%s skipped a run: %s", loop, exc)
        return False
