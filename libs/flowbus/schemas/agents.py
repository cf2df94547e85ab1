"""Messages of the heartbeat service: heartbeats and the agent registry."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from flowbus.schemas.common import LIST_LIMIT_DEFAULT, Message
from flowbus.schemas.flows import Key, Labels, Limit, Name, Offset
from flowbus.schemas.schedules import PlannerStatus


class RunHeartbeat(Message):
    """Published on ``flowbus.hb.flow_run.<id>`` by a runner every interval."""

    flow_run_id: Key
    task_run_id: Key | None = None
    timestamp: datetime


class RegisterAgent(Message):
    agent_id: Key
    name: Name
    type: Name = "local"
    labels: Labels = Field(default_factory=list)


class AgentHeartbeat(Message):
    """Published on ``flowbus.hb.agent.<id>``."""

    agent_id: Key
    timestamp: datetime


class AgentOut(Message):
    id: str
    name: str
    type: str
    labels: list[str]
    last_seen: datetime


class ListAgents(Message):
    """Agents by name, a page at a time."""

    limit: Limit = LIST_LIMIT_DEFAULT
    offset: Offset = 0


class AgentList(Message):
    agents: list[AgentOut]


class SchedulerStatus(Message):
    released_total: int
    last_release: datetime | None
    # None when this instance does not plan runs from clocks (setting scheduler.plan_runs, or standing by).
    planner: PlannerStatus | None = None
    # The leases the instance that answered holds (its loops run only while it does).
    leases_held: list[str] = Field(default_factory=list)
    # Runs still Scheduled ``scheduler.late_after`` past their start time, now.
    late_runs: int = 0
