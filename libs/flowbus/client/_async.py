"""``AsyncClient``: every resource of the client on one connection, for asyncio code."""

from __future__ import annotations

from flowbus.client._agents import Agents
from flowbus.client._keys import ApiKeys
from flowbus.client._projects_flows import ProjectsAndFlows
from flowbus.client._schedules import Schedules
from flowbus.client._watch import Watching


class AsyncClient(ProjectsAndFlows, Agents, Schedules, ApiKeys, Watching):
    """The flowbus client for asyncio code: ``async with AsyncClient() as client: ...``.

    Each method sends one command (or a few) and returns the reply's data; an
    error reply is raised as its ``FlowbusError`` subclass, and a command no
    service answered as ``ServiceUnavailable``.
    """

    async def __aenter__(self) -> AsyncClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
