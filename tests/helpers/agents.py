"""In-process agents for the integration tests: started as tasks, stopped and awaited on the way out."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from flowbus.agent.local import LocalAgent


@asynccontextmanager
async def running_agents(*agents: LocalAgent) -> AsyncIterator[list[asyncio.Task[None]]]:
    """Each agent runs while the block does; leaving it stops them and waits until they have stopped."""
    tasks = [asyncio.create_task(a.run()) for a in agents]
    try:
        yield tasks
    finally:
        for a in agents:
            a.stop()
        await asyncio.gather(*tasks)
