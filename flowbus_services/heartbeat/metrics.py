"""The heartbeat service's own metrics: what its loops did, agents online, runs per agent.

The Zombie Killer's, Lazarus's and the stuck-claim requeue's counters are
read from their stats objects; agents online (a heartbeat within
``AGENT_ONLINE_BEATS`` agent intervals, the rule ``flowbus get agents``
applies) and the runs each agent holds are counted when scraped, by two
bounded queries. Reads agent and flow_run; no NATS subject.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select
from sqlmodel import col

from flowbus.client import AGENT_ONLINE_BEATS
from flowbus.db.tables import Agent, FlowRun, utcnow
from flowbus.runtime.metrics import Families, label_set
from flowbus.runtime.service import ServiceContext
from flowbus.states import StateType
from flowbus_services.heartbeat.claims import StuckClaimStats
from flowbus_services.heartbeat.lazarus import LazarusStats
from flowbus_services.heartbeat.zombies import ZombieKillerStats

# A run an agent holds: claimed, executing, or being cancelled.
HELD = (StateType.SUBMITTED.value, StateType.RUNNING.value, StateType.CANCELLING.value)
# Most online agents read per scrape.
MAX_AGENTS = 1000


def add_metrics(
    ctx: ServiceContext, zombies: ZombieKillerStats, lazarus: LazarusStats, claims: StuckClaimStats
) -> None:
    def loops(f: Families) -> None:
        killed = f.counter(
            "flowbus_zombies_killed", "Running runs the Zombie Killer ended (no heartbeat), by outcome.", ["outcome"]
        )
        killed.add(zombies.flow_runs_failed, "failed")
        killed.add(zombies.flow_runs_cancelled, "cancelled")
        f.counter("flowbus_lazarus_reschedules", "Silent runs Lazarus put back to Scheduled.").add(
            lazarus.flow_runs_rescheduled
        )
        f.counter("flowbus_lazarus_failed", "Silent runs Lazarus failed at the reschedule limit.").add(
            lazarus.flow_runs_failed
        )
        requeued = f.counter(
            "flowbus_stuck_claims", "Claims never started that went back to Scheduled or Failed.", ["outcome"]
        )
        requeued.add(claims.flow_runs_requeued, "requeued")
        requeued.add(claims.flow_runs_failed, "failed")

    async def agents(f: Families) -> None:
        cutoff = utcnow() - timedelta(seconds=AGENT_ONLINE_BEATS * ctx.settings.heartbeat.agent_interval_seconds)
        online_query = (
            select(col(Agent.id), col(Agent.name), col(Agent.labels))
            .where(col(Agent.last_seen) >= cutoff)
            .limit(MAX_AGENTS)
        )
        held_query = (
            select(col(FlowRun.agent_id), func.count())
            .where(col(FlowRun.state).in_(HELD), col(FlowRun.agent_id).is_not(None))
            .group_by(col(FlowRun.agent_id))
        )
        async with ctx.db.read_session() as session:
            online = (await session.execute(online_query)).all()
            held = {agent_id: int(n) for agent_id, n in (await session.execute(held_query)).all()}
        f.gauge("flowbus_agents_online", "Agents with a heartbeat within the last 3 agent intervals.").add(len(online))
        by_labels: dict[str, int] = {}
        for _id, _name, labels in online:
            key = label_set(labels)
            by_labels[key] = by_labels.get(key, 0) + 1
        gauge = f.gauge("flowbus_agents_online_by_labels", "Online agents, by their label set.", ["labels"])
        limit = ctx.settings.metrics.max_label_sets
        for key, count in sorted(by_labels.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]:
            gauge.add(count, key)
        names = {agent_id: name for agent_id, name, _labels in online}
        runs = f.gauge(
            "flowbus_agent_runs",
            "Flow runs each agent holds (Submitted, Running or Cancelling); agent is its name, or"
            " (offline) when it sent no recent heartbeat.",
            ["agent_id", "agent"],
        )
        for agent_id, count in sorted(held.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]:
            runs.add(count, agent_id, names.get(agent_id, "(offline)"))

    ctx.metrics.add(loops)
    ctx.metrics.add_scrape("agents", agents)
