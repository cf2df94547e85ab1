"""NATS handlers of the heartbeat service.

Reads: ``flowbus.cmd.heartbeat.*`` (queue group ``heartbeat``),
``flowbus.hb.flow_run.*`` and ``flowbus.hb.agent.*`` (fire and forget,
queue group ``heartbeat``: a malformed heartbeat is logged and dropped; a
heartbeat counts when it arrives, its ``timestamp`` is not used).
"""

from __future__ import annotations

import logging
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from flowbus import subjects
from flowbus.runtime.service import ServiceContext
from flowbus.schemas.agents import AgentHeartbeat, AgentList, AgentOut, ListAgents, RegisterAgent, RunHeartbeat
from flowbus.schemas.common import Reply
from flowbus.subjects import HeartbeatCommands
from flowbus_services.heartbeat import usecases

log = logging.getLogger(__name__)
B = TypeVar("B", bound=BaseModel)


def register(ctx: ServiceContext) -> None:
    sub = ctx.subscriber
    queue = HeartbeatCommands.QUEUE
    db = ctx.db

    @sub(HeartbeatCommands.REGISTER_AGENT, queue=queue, title="register_agent")
    async def register_agent(cmd: RegisterAgent) -> Reply[AgentOut]:
        return Reply.success(await usecases.register_agent(db, cmd))

    @sub(HeartbeatCommands.LIST_AGENTS, queue=queue, title="list_agents")
    async def list_agents(query: ListAgents) -> Reply[AgentList]:
        return Reply.success(await usecases.list_agents(db, query))

    # Heartbeats carry no reply subject; they are parsed by hand so that a bad
    # one is dropped with a log line instead of an error reply to nobody.
    @sub(subjects.flow_run_heartbeat("*"), queue=queue, title="flow_run_heartbeat", no_reply=True)
    async def flow_run_heartbeat(body: Any) -> None:
        beat = _parse_or_drop(RunHeartbeat, body)
        if beat is not None and not await usecases.run_heartbeat(db, beat.flow_run_id):
            log.warning("heartbeat for unknown flow run %s", beat.flow_run_id)

    @sub(subjects.agent_heartbeat("*"), queue=queue, title="agent_heartbeat", no_reply=True)
    async def agent_heartbeat(body: Any) -> None:
        beat = _parse_or_drop(AgentHeartbeat, body)
        if beat is not None:
            await usecases.agent_seen(db, beat.agent_id)


def _parse_or_drop(model: type[B], body: Any) -> B | None:
    try:
        return model.model_validate(body)
    except ValidationError:
        log.warning("dropping a malformed %s", model.__name__)
        return None
