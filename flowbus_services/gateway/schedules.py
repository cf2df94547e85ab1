"""The GraphQL field of a flow's schedule: ``flow_schedule``, its next start times as the scheduler would create them.

The scheduler owns the computation (clocks, the group's schedule over the
flow's, parameters and labels), so the gateway asks it, through its client,
rather than repeat it (docs/architecture.md, "Scheduler: runs from clocks").
Writes: ``flowbus.cmd.scheduler.get_schedule`` requests; reads their replies.
"""

from __future__ import annotations

from typing import Any, Final

from ariadne import QueryType

from flowbus.schemas.schedules import ScheduleOut
from flowbus_services.gateway.context import Info, request_context
from flowbus_services.gateway.errors import Code, refusal

# How many upcoming start times one request may list: a page, not a calendar.
MAX_UPCOMING: Final = 100

query = QueryType()


def _schedule(out: ScheduleOut) -> dict[str, Any]:
    return {
        "flow_id": out.flow_id,
        "active": out.active,
        "source": out.source,
        "upcoming": [{"start": u.start, "labels": u.labels, "parameters": u.parameters} for u in out.upcoming],
    }


@query.field("flow_schedule")
async def resolve_flow_schedule(_: Any, info: Info, flow_id: str, count: int = 10) -> dict[str, Any]:
    if not 1 <= count <= MAX_UPCOMING:
        raise refusal(f"count must be between 1 and {MAX_UPCOMING}, got {count}.", Code.VALIDATION_ERROR)
    # An unknown flow is the scheduler's NotFound, answered NOT_FOUND (errors.py).
    return _schedule(await request_context(info).gateway.client.get_schedule(flow_id, count))


BINDABLES = [query]
