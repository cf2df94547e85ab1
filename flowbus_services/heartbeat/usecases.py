"""Heartbeat use cases. Owns the agent and run_heartbeat tables.

The Zombie Killer lives in ``zombies.py``, Lazarus in ``lazarus.py`` and the
requeue of stuck claims in ``claims.py``; they only ever *propose*
transitions to the state service, never write runs. A heartbeat counts at
the time this service receives it, never the sender's clock.
"""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from flowbus.db.engine import Database
from flowbus.db.tables import Agent, RunHeartbeat, utcnow
from flowbus.schemas.agents import AgentList, AgentOut, ListAgents, RegisterAgent


def _agent_out(agent: Agent) -> AgentOut:
    return AgentOut(id=agent.id, name=agent.name, type=agent.type, labels=agent.labels, last_seen=agent.last_seen)


async def register_agent(db: Database, cmd: RegisterAgent) -> AgentOut:
    async with db.write_session() as session:
        agent = await session.get(Agent, cmd.agent_id)
        if agent is None:
            agent = Agent(id=cmd.agent_id, name=cmd.name, type=cmd.type, labels=sorted(set(cmd.labels)))
        else:
            agent.name, agent.type, agent.labels = cmd.name, cmd.type, sorted(set(cmd.labels))
            agent.last_seen = utcnow()
        session.add(agent)
        await session.flush()
        return _agent_out(agent)


async def agent_seen(db: Database, agent_id: str) -> None:
    """Record that an agent was heard from now."""
    async with db.write_session() as session:
        await session.execute(update(Agent).where(Agent.id == agent_id).values(last_seen=utcnow()))  # type: ignore[arg-type]


async def list_agents(db: Database, query: ListAgents) -> AgentList:
    async with db.read_session() as session:
        stmt = select(Agent).order_by(Agent.name, Agent.id).limit(query.limit).offset(query.offset)
        rows = (await session.execute(stmt)).all()
        return AgentList(agents=[_agent_out(a) for (a,) in rows])


async def run_heartbeat(db: Database, flow_run_id: str) -> bool:
    """Record that a run's heartbeat arrived now; False when the run does not exist."""
    now = utcnow()
    try:
        async with db.write_session() as session:
            row = await session.get(RunHeartbeat, flow_run_id)
            if row is None:
                session.add(RunHeartbeat(flow_run_id=flow_run_id, last_heartbeat=now))
            else:
                # Unconditionally: a row stamped ahead (by a sender's clock, as
                # older versions stored) must not outlive the run's silence.
                row.last_heartbeat = now
                session.add(row)
        return True
    except IntegrityError:
        return False
