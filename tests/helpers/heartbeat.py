"""The services in this process with the heartbeat settings tuned for a test,
the heartbeat app's loop counters at hand, and ``backdate()``: a run made to
look as it did after an outage (its state and last heartbeat long ago)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from faststream.asgi import AsgiFastStream
from sqlalchemy import update

from flowbus.client import AsyncClient
from flowbus.db.engine import Database
from flowbus.db.tables import FlowRun, RunHeartbeat
from flowbus.runtime.service import service_context
from flowbus.settings import Settings
from flowbus_services.registry import SERVICE_MODULES, build_service_app


def tuned(settings: Settings, **heartbeat: Any) -> Settings:
    """``settings`` with these ``heartbeat.*`` values changed."""
    return settings.model_copy(update={"heartbeat": settings.heartbeat.model_copy(update=heartbeat)})


@dataclass
class Services:
    client: AsyncClient
    settings: Settings
    # The services' database, for setting up what an outage leaves behind.
    db: Database
    heartbeat: AsgiFastStream | None


@asynccontextmanager
async def heartbeat_services(settings: Settings, *, heartbeat: bool = True) -> AsyncIterator[Services]:
    """Every service (the heartbeat service only if ``heartbeat``) with ``settings``."""
    async with AsyncExitStack() as apps:
        started: dict[str, AsgiFastStream] = {}
        for name in SERVICE_MODULES:
            if name != "heartbeat" or heartbeat:
                started[name] = build_service_app(name, settings)
                await apps.enter_async_context(started[name])
        db = service_context(started["state"]).db
        async with AsyncClient(settings) as client:
            yield Services(client, settings, db, started.get("heartbeat"))


async def backdate(db: Database, flow_run_id: str, seconds: float) -> datetime:
    """Move the run's state time, start time and last heartbeat ``seconds`` into the past; returns that time."""
    then = datetime.now(UTC) - timedelta(seconds=seconds)
    async with db.write_session() as session:
        run = update(FlowRun).where(FlowRun.id == flow_run_id)  # type: ignore[arg-type]
        await session.execute(run.values(state_timestamp=then, start_time=then))
        beat = await session.get(RunHeartbeat, flow_run_id)
        if beat is None:
            session.add(RunHeartbeat(flow_run_id=flow_run_id, last_heartbeat=then))
        else:
            beat.last_heartbeat = then
            session.add(beat)
    return then
