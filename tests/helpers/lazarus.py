"""The five services in this process with Lazarus tuned for a test, and
Lazarus's counters and heartbeat app at hand."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

from faststream.asgi import AsgiFastStream

from flowbus.client import AsyncClient
from flowbus.settings import LazarusSettings, Settings
from flowbus_services.heartbeat.lazarus import LazarusStats
from flowbus_services.heartbeat.main import lazarus_stats
from flowbus_services.registry import SERVICE_MODULES, build_service_app
from tests.helpers.waiting import eventually


@dataclass
class Services:
    client: AsyncClient
    stats: LazarusStats
    heartbeat: AsgiFastStream
    settings: Settings


@asynccontextmanager
async def lazarus_services(settings: Settings, lazarus: LazarusSettings) -> AsyncIterator[Services]:
    tuned = settings.model_copy(update={"lazarus": lazarus})
    async with AsyncExitStack() as apps:
        heartbeat: AsgiFastStream | None = None
        for name in SERVICE_MODULES:
            app = build_service_app(name, tuned)
            await apps.enter_async_context(app)
            if name == "heartbeat":
                heartbeat = app
        assert heartbeat is not None
        async with AsyncClient(tuned) as client:
            yield Services(client, lazarus_stats(heartbeat), heartbeat, tuned)


async def pass_ended(stats: LazarusStats) -> None:
    """Wait for the Lazarus pass under way to end (it read every run the pass
    that acted just now read, with the same cutoff)."""

    async def passes() -> int:
        return stats.passes

    seen = stats.passes
    await eventually(passes, "a Lazarus pass to end", until=lambda p: p > seen)
