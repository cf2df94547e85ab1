"""The state service's own gauges for /metrics: flow runs by unfinished state.

Computed when scraped, by one grouped count over the ``state`` index
(finished runs grow without end, so they are counted as they finish, by
``flowbus_state_transitions_total``, not here). Reads flow_run; no NATS subject.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlmodel import col

from flowbus.db.tables import FlowRun
from flowbus.runtime.metrics import Families
from flowbus.runtime.service import ServiceContext
from flowbus.states import StateType, is_finished

UNFINISHED = tuple(t.value for t in StateType if not is_finished(t))
# Reported even when no run is in them, so that a dashboard shows a 0.
ALWAYS = (StateType.SCHEDULED, StateType.SUBMITTED, StateType.RUNNING, StateType.CANCELLING)


def add_metrics(ctx: ServiceContext) -> None:
    async def runs_by_state(f: Families) -> None:
        query = (
            select(col(FlowRun.state), func.count())
            .where(col(FlowRun.state).in_(UNFINISHED))
            .group_by(col(FlowRun.state))
        )
        async with ctx.db.read_session() as session:
            counts = {state: int(n) for state, n in (await session.execute(query)).all()}
        gauge = f.gauge(
            "flowbus_flow_runs",
            "Flow runs in each unfinished state now (finished ones are counted as"
            " they finish: flowbus_state_transitions_total).",
            ["state"],
        )
        for state in sorted({*(s.value for s in ALWAYS), *counts}):
            gauge.add(counts.get(state, 0), state)

    ctx.metrics.add_scrape("flow_runs", runs_by_state)
