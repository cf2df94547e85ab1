"""Agents' last heartbeat is the time the heartbeat service received it,
whatever clock the agent stamped it with."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from nats.aio.client import Client

from flowbus import subjects
from flowbus.client import AsyncClient
from flowbus.schemas.agents import AgentHeartbeat, AgentOut
from tests.helpers import unique
from tests.helpers.waiting import eventually


async def _seen_after(client: AsyncClient, agent_id: str, after: datetime) -> AgentOut:
    async def agent() -> AgentOut:
        return next(a for a in (await client.get_agents()).agents if a.id == agent_id)

    return await eventually(agent, "the heartbeat recorded", until=lambda a: a.last_seen > after)


async def test_an_agents_last_seen_is_when_its_heartbeat_arrived(client: AsyncClient, nc: Client) -> None:
    agent = await client.register_agent(unique("clock"))
    seen = agent.last_seen
    for skew in (timedelta(days=1), -timedelta(days=1)):
        beat = AgentHeartbeat(agent_id=agent.id, timestamp=datetime.now(UTC) + skew)
        await nc.publish(subjects.agent_heartbeat(agent.id), beat.model_dump_json().encode())
        seen = (await _seen_after(client, agent.id, seen)).last_seen
        assert seen <= datetime.now(UTC)
