"""The scheduler's own metrics: the run queues as agents see them, late runs, releases.

When scraped: due runs (Scheduled, start time passed) by label set, with the
age of the oldest, in one grouped query over the ``ix_flow_run_due`` index;
the due runs that no online agent can take (``subjects.agent_can_take``
over the agents with a recent heartbeat); late runs (``db.views``). The
label sets reported are the ``metrics.max_label_sets`` with the most due
runs; the rest are summed under ``(other)``. Reads flow_run and agent; no NATS subject.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from sqlalchemy import Text, cast, func, select
from sqlmodel import col

from flowbus import subjects
from flowbus.client import AGENT_ONLINE_BEATS
from flowbus.db.tables import Agent, FlowRun, utcnow
from flowbus.db.views import count_late_runs
from flowbus.runtime.metrics import Families, label_set
from flowbus.runtime.service import ServiceContext
from flowbus.states import StateType
from flowbus_services.scheduler.release import ReleaseCursor

OTHER = "(other)"
MAX_AGENTS = 1000


def _labels(text: str | None) -> tuple[str, ...]:
    try:
        value = json.loads(text) if text else []
    except ValueError:
        return ()
    return tuple(sorted({str(v) for v in value})) if isinstance(value, list) else ()


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def add_metrics(ctx: ServiceContext, cursor: ReleaseCursor) -> None:
    def released(f: Families) -> None:
        f.counter(
            "flowbus_runs_released", "Due runs this instance put on the run queues (first releases and re-sends)."
        ).add(cursor.released_total)

    async def run_queues(f: Families) -> None:
        now = utcnow()
        key = cast(col(FlowRun.labels), Text)
        due = (
            select(key, func.count(), func.min(col(FlowRun.scheduled_start_time)))
            .where(col(FlowRun.state) == StateType.SCHEDULED.value, col(FlowRun.scheduled_start_time) <= now)
            .group_by(key)
        )
        cutoff = now - timedelta(seconds=AGENT_ONLINE_BEATS * ctx.settings.heartbeat.agent_interval_seconds)
        online = select(col(Agent.labels)).where(col(Agent.last_seen) >= cutoff).limit(MAX_AGENTS)
        async with ctx.db.read_session() as session:
            groups = (await session.execute(due)).all()
            agents = [labels or [] for (labels,) in (await session.execute(online)).all()]
            late = await count_late_runs(session, ctx.settings.scheduler.late_after)
        # One entry per label set (the JSON text of one set may be written more than one way).
        sets: dict[tuple[str, ...], tuple[int, datetime]] = {}
        for text, count, oldest in groups:
            labels = _labels(text)
            known = sets.get(labels)
            first = _aware(oldest)
            sets[labels] = (count + known[0], min(first, known[1])) if known else (int(count), first)
        ranked = sorted(sets.items(), key=lambda kv: (-kv[1][0], kv[0]))
        limit = ctx.settings.metrics.max_label_sets
        depth = f.gauge(
            "flowbus_runq_due_runs",
            "Due runs not claimed yet (Scheduled, start time passed), by label set.",
            ["labels"],
        )
        age = f.gauge(
            "flowbus_runq_oldest_due_seconds",
            "How long the oldest due, unclaimed run has been due, by label set.",
            ["labels"],
        )
        unmatched = f.gauge(
            "flowbus_runq_unmatched_due_runs",
            "Due runs that no online agent can take (none has all their labels), by label set.",
            ["labels"],
        )
        rest_count, rest_oldest, rest_unmatched = 0, None, 0
        for index, (labels, (count, oldest)) in enumerate(ranked):
            orphan = not any(subjects.agent_can_take(agent, labels) for agent in agents)
            if index < limit:
                name = label_set(labels)
                depth.add(count, name)
                age.add(max(0.0, (now - oldest).total_seconds()), name)
                unmatched.add(count if orphan else 0, name)
            else:
                rest_count += count
                rest_oldest = oldest if rest_oldest is None else min(rest_oldest, oldest)
                rest_unmatched += count if orphan else 0
        if rest_oldest is not None:
            depth.add(rest_count, OTHER)
            age.add(max(0.0, (now - rest_oldest).total_seconds()), OTHER)
            unmatched.add(rest_unmatched, OTHER)
        f.gauge(
            "flowbus_late_runs",
            "Runs still Scheduled scheduler.late_after after their start time (flowbus get flow-runs --late).",
        ).add(late)

    ctx.metrics.add(released)
    ctx.metrics.add_scrape("run_queues", run_queues)
