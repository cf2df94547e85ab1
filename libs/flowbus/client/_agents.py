"""Agents: the heartbeat service's list of agents, why a due run is still waiting,
and the scheduler's status.

Writes: ``flowbus.cmd.heartbeat.register_agent``, ``flowbus.cmd.heartbeat.list_agents``,
``flowbus.hb.agent.<id>``,
``flowbus.cmd.scheduler.status`` (and the run queries of ``_runs``).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from flowbus import subjects
from flowbus.client._commands import build
from flowbus.client._runs import Runs
from flowbus.ids import uuid7
from flowbus.schemas.agents import AgentHeartbeat, AgentList, AgentOut, ListAgents, RegisterAgent
from flowbus.schemas.common import LIST_LIMIT_DEFAULT
from flowbus.states import StateType

# An agent is online while its last heartbeat is at most this many intervals old.
AGENT_ONLINE_BEATS = 3


class Agents(Runs):
    """Agents, and the explanation of a run no agent takes."""

    async def explain_waiting_run(self, flow_run_id: str) -> str | None:
        """Why a due Scheduled run is not being picked up, or None when nothing is wrong.

        1.x left users guessing; this names the cause: no agent online, or no
        online agent whose labels cover the run's.
        """
        run = (await self.get_flow_run(flow_run_id)).run
        if run.state.type is not StateType.SCHEDULED or run.scheduled_start_time > datetime.now(UTC):
            return None
        online = [a for a in (await self.get_agents()).agents if self.agent_online(a)]
        if not online:
            return "No agent is online: start one with `flowbus agent local start`."
        if not any(subjects.agent_can_take(a.labels, run.labels) for a in online):
            seen = "; ".join(f"{a.name}: {a.labels}" for a in online)
            needs = f"labels {run.labels}" if run.labels else "an agent without labels"
            return f"No online agent can take this run: it needs {needs}; online agents have {seen}."
        return None

    def agent_online(self, agent: AgentOut) -> bool:
        """Online: heard from within the last few agent heartbeat intervals."""
        window = timedelta(seconds=AGENT_ONLINE_BEATS * self.settings.heartbeat.agent_interval_seconds)
        return agent.last_seen >= datetime.now(UTC) - window

    async def send_agent_heartbeat(self, agent_id: str) -> None:
        """Publish one heartbeat of the agent now (fire and forget: the heartbeat
        service records its last seen; one for an unknown agent is dropped there)."""
        beat = build(AgentHeartbeat, agent_id=agent_id, timestamp=datetime.now(UTC))
        nc = await self.connect()
        await nc.publish(subjects.agent_heartbeat(agent_id), beat.model_dump_json().encode())

    async def register_agent(
        self, name: str, *, agent_type: str = "local", labels: list[str] | None = None, agent_id: str | None = None
    ) -> AgentOut:
        """Register (or, with the ``agent_id`` of a known agent, update) an agent; a new id when none is given."""
        cmd = build(RegisterAgent, agent_id=agent_id or uuid7(), name=name, type=agent_type, labels=labels or [])
        return await self.request(subjects.HeartbeatCommands.REGISTER_AGENT, cmd, AgentOut, idempotent=True)

    async def get_agents(self, *, limit: int = LIST_LIMIT_DEFAULT, offset: int = 0) -> AgentList:
        """Agents by name: ``limit`` of them (at most ``LIST_LIMIT_MAX``) from ``offset`` on."""
        query = build(ListAgents, limit=limit, offset=offset)
        return await self.request(subjects.HeartbeatCommands.LIST_AGENTS, query, AgentList, idempotent=True)
