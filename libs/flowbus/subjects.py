"""Every NATS subject, JetStream stream, consumer and KV bucket name of flowbus.

This is the only module that spells a subject. Services, the SDK, the agent
and the CLI import the names from here, so a rename is one edit and the
AsyncAPI document in contracts/ always matches the code.

Scheme:
- ``flowbus.cmd.<service>.<verb>``: request-reply commands, served by a queue
  group per service so that instances share the load.
- ``flowbus.evt.<entity>.<id>.<fact>``: events, kept in the EVENTS stream,
  ordered per entity.
- ``flowbus.logs.<flow_run_id>``: log batches, kept in the LOGS stream.
- ``flowbus.runq.<label-set key>``: runs that are due, kept in the RUNQ stream.
- ``flowbus.hb.<kind>.<id>``: heartbeats (core NATS, fire and forget).
- ``flowbus.hint.<service>.<what>``: hints to a service (core NATS, at most
  once, never stored): losing one costs latency, never correctness.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from enum import StrEnum
from itertools import combinations
from typing import Final

PREFIX: Final = "flowbus"


class Service(StrEnum):
    """The services: each one's name is its command subjects' token, its queue
    group and the owner tag of its outbox rows (the relay sweeps its own)."""

    REGISTRATION = "registration"
    RUN_CREATION = "run_creation"
    STATE = "state"
    HEARTBEAT = "heartbeat"
    SCHEDULER = "scheduler"
    GATEWAY = "gateway"


# ---- commands (request-reply) ---------------------------------------------


class RegistrationCommands:
    """Commands served by services/registration."""

    QUEUE: Final = Service.REGISTRATION.value
    CREATE_PROJECT: Final = f"{PREFIX}.cmd.registration.create_project"
    GET_PROJECT: Final = f"{PREFIX}.cmd.registration.get_project"
    LIST_PROJECTS: Final = f"{PREFIX}.cmd.registration.list_projects"
    REGISTER_FLOW: Final = f"{PREFIX}.cmd.registration.register_flow"
    ADD_FLOW_TASKS: Final = f"{PREFIX}.cmd.registration.add_flow_tasks"
    GET_FLOW: Final = f"{PREFIX}.cmd.registration.get_flow"
    LIST_FLOWS: Final = f"{PREFIX}.cmd.registration.list_flows"
    RENAME_PROJECT: Final = f"{PREFIX}.cmd.registration.rename_project"
    SET_PROJECT_DESCRIPTION: Final = f"{PREFIX}.cmd.registration.set_project_description"
    DELETE_PROJECT: Final = f"{PREFIX}.cmd.registration.delete_project"
    ARCHIVE_FLOW: Final = f"{PREFIX}.cmd.registration.archive_flow"
    UNARCHIVE_FLOW: Final = f"{PREFIX}.cmd.registration.unarchive_flow"
    SET_FLOW_SETTINGS: Final = f"{PREFIX}.cmd.registration.set_flow_settings"
    SET_FLOW_SCHEDULE_STATE: Final = f"{PREFIX}.cmd.registration.set_flow_schedule_state"
    SET_FLOW_GROUP_LABELS: Final = f"{PREFIX}.cmd.registration.set_flow_group_labels"
    SET_FLOW_GROUP_DEFAULT_PARAMETERS: Final = f"{PREFIX}.cmd.registration.set_flow_group_default_parameters"
    SET_FLOW_GROUP_SCHEDULE: Final = f"{PREFIX}.cmd.registration.set_flow_group_schedule"


class RunCreationCommands:
    """Commands served by services/run_creation."""

    QUEUE: Final = Service.RUN_CREATION.value
    CREATE_FLOW_RUN: Final = f"{PREFIX}.cmd.run_creation.create_flow_run"
    CREATE_FLOW_RUNS: Final = f"{PREFIX}.cmd.run_creation.create_flow_runs"


class StateCommands:
    """Commands served by services/state."""

    QUEUE: Final = Service.STATE.value
    SET_FLOW_RUN_STATE: Final = f"{PREFIX}.cmd.state.set_flow_run_state"
    SET_TASK_RUN_STATE: Final = f"{PREFIX}.cmd.state.set_task_run_state"
    GET_FLOW_RUN: Final = f"{PREFIX}.cmd.state.get_flow_run"
    # A write, though it may find the task run there: not named get_ (the queries' prefix).
    ENSURE_TASK_RUN: Final = f"{PREFIX}.cmd.state.ensure_task_run"
    GET_FLOW_RUN_LOGS: Final = f"{PREFIX}.cmd.state.get_flow_run_logs"
    GET_FLOW_RUN_HISTORY: Final = f"{PREFIX}.cmd.state.get_flow_run_history"
    LIST_FLOW_RUNS: Final = f"{PREFIX}.cmd.state.list_flow_runs"
    CANCEL_FLOW_RUN: Final = f"{PREFIX}.cmd.state.cancel_flow_run"
    DELETE_FLOW_RUN: Final = f"{PREFIX}.cmd.state.delete_flow_run"
    RENAME_RUN: Final = f"{PREFIX}.cmd.state.rename_run"


class HeartbeatCommands:
    """Commands served by services/heartbeat."""

    QUEUE: Final = Service.HEARTBEAT.value
    REGISTER_AGENT: Final = f"{PREFIX}.cmd.heartbeat.register_agent"
    LIST_AGENTS: Final = f"{PREFIX}.cmd.heartbeat.list_agents"


class SchedulerCommands:
    """Commands served by services/scheduler."""

    QUEUE: Final = Service.SCHEDULER.value
    STATUS: Final = f"{PREFIX}.cmd.scheduler.status"
    GET_SCHEDULE: Final = f"{PREFIX}.cmd.scheduler.get_schedule"


class GatewayCommands:
    """Commands served by services/gateway: its API keys (the one table it owns)."""

    QUEUE: Final = Service.GATEWAY.value
    CREATE_API_KEY: Final = f"{PREFIX}.cmd.gateway.create_api_key"
    LIST_API_KEYS: Final = f"{PREFIX}.cmd.gateway.list_api_keys"
    DELETE_API_KEY: Final = f"{PREFIX}.cmd.gateway.delete_api_key"


# Every command subject, for the validation tests and the AsyncAPI document.
COMMAND_SUBJECTS: Final[tuple[str, ...]] = tuple(
    value
    for group in (
        RegistrationCommands,
        RunCreationCommands,
        StateCommands,
        HeartbeatCommands,
        SchedulerCommands,
        GatewayCommands,
    )
    for name, value in vars(group).items()
    if name.isupper() and name != "QUEUE"
)


def service_of(subject: str) -> str:
    """The service a command subject (``flowbus.cmd.<service>.<verb>``) goes to; "" for any other subject."""
    parts = subject.split(".")
    return parts[2] if len(parts) == 4 and parts[0] == PREFIX and parts[1] == "cmd" else ""


# ---- events (JetStream stream EVENTS) --------------------------------------

EVENTS_STREAM: Final = "FLOWBUS_EVENTS"
EVENTS_ALL: Final = f"{PREFIX}.evt.>"


def project_event(project_id: str, fact: str) -> str:
    return f"{PREFIX}.evt.project.{project_id}.{fact}"


class ProjectFact(StrEnum):
    """The facts published on ``flowbus.evt.project.<id>.<fact>``."""

    CREATED = "created"
    RENAMED = "renamed"
    DESCRIBED = "described"
    DELETED = "deleted"


def api_key_event(key_id: str, fact: str) -> str:
    """``flowbus.evt.api_key.<id>.<fact>`` (created, deleted): gateways drop a revoked key at once."""
    return f"{PREFIX}.evt.api_key.{key_id}.{fact}"


API_KEY_EVENTS: Final = f"{PREFIX}.evt.api_key.*.*"


def flow_event(flow_id: str, fact: str) -> str:
    return f"{PREFIX}.evt.flow.{flow_id}.{fact}"


class FlowFact(StrEnum):
    """The facts published on ``flowbus.evt.flow.<id>.<fact>`` (and ``group_changed`` on flow groups)."""

    REGISTERED = "registered"
    ARCHIVED = "archived"
    UNARCHIVED = "unarchived"
    SETTINGS = "settings"
    SCHEDULE_ON = "schedule_on"
    SCHEDULE_OFF = "schedule_off"
    GROUP_CHANGED = "group_changed"


# The state service removes or cancels a flow's waiting runs on these facts.
FLOW_RUN_CLEANUP_FILTERS: Final = (
    f"{PREFIX}.evt.flow.*.{FlowFact.ARCHIVED}",
    f"{PREFIX}.evt.flow.*.{FlowFact.SCHEDULE_OFF}",
)
FLOW_RUN_CLEANUP_DURABLE: Final = "state-flow-run-cleanup"


# The scheduler re-plans a flow group's runs on any fact about its flows or the group (core NATS).
SCHEDULE_REPLAN_HINTS: Final = (f"{PREFIX}.evt.flow.*.*", f"{PREFIX}.evt.flow_group.*.*")


def flow_group_event(flow_group_id: str, fact: str) -> str:
    return f"{PREFIX}.evt.flow_group.{flow_group_id}.{fact}"


def flow_run_event(flow_run_id: str, fact: str) -> str:
    return f"{PREFIX}.evt.flow_run.{flow_run_id}.{fact}"


class FlowRunFact(StrEnum):
    """The facts published on ``flowbus.evt.flow_run.<id>.<fact>``."""

    CREATED = "created"
    STATE = "state"  # the flow run's own state changed
    TASK_STATE = "task_state"  # one of its task runs' state changed
    DELETED = "deleted"


def flow_run_events(flow_run_id: str) -> str:
    """Filter for every event of one flow run (its state changes, creation...)."""
    return f"{PREFIX}.evt.flow_run.{flow_run_id}.>"


def state_event_msg_id(run_id: str, version: int) -> str:
    """The ``Nats-Msg-Id`` of a flow or task run's state event at one version
    (the first from run_creation, the others from state)."""
    return f"{run_id}:state:{version}"


def event_msg_id(entity: str, entity_id: str, occurrence: str) -> str:
    """The ``Nats-Msg-Id`` of any other event: ``<entity>:<id>:<occurrence>``, where the
    occurrence is the fact itself for one that happens once (``created``, ``deleted``)
    and holds a unique token for one that may happen again."""
    return f"{entity}:{entity_id}:{occurrence}"


# ---- logs (JetStream stream LOGS) ------------------------------------------

LOGS_STREAM: Final = "FLOWBUS_LOGS"
LOGS_ALL: Final = f"{PREFIX}.logs.>"
LOGS_DURABLE: Final = "state-log-writer"


def logs(flow_run_id: str) -> str:
    return f"{PREFIX}.logs.{flow_run_id}"


def lazarus_log_msg_id(flow_run_id: str, version: int) -> str:
    """The ``Nats-Msg-Id`` of Lazarus's log batch for a run read at one
    version: two Lazarus instances that read the same version log once."""
    return f"lazarus:{flow_run_id}:{version}"


def requeue_log_msg_id(flow_run_id: str, version: int) -> str:
    """The ``Nats-Msg-Id`` of the log batch of a stuck claim's requeue, for a
    run read at one version: two heartbeat instances log it once."""
    return f"requeue:{flow_run_id}:{version}"


# ---- run queues (JetStream stream RUNQ) ------------------------------------

RUNQ_STREAM: Final = "FLOWBUS_RUNQ"
RUNQ_ALL: Final = f"{PREFIX}.runq.>"
# A run with no labels goes only to agents with no labels (the 1.x rule).
NO_LABELS_KEY: Final = "none"
# An agent consumes every non-empty subset of its labels: 2**n subjects.
MAX_AGENT_LABELS: Final = 8


def label_set_key(labels: Iterable[str]) -> str:
    """A subject-safe, order-independent key of a label set.

    Labels may hold dots, spaces or wildcards, none of which may appear in a
    subject token, so the key is a digest of the sorted, de-duplicated set.
    """
    unique = sorted(set(labels))
    if not unique:
        return NO_LABELS_KEY
    digest = hashlib.sha256("\n".join(unique).encode()).hexdigest()
    return digest[:32]


def run_queue(labels: Iterable[str]) -> str:
    return f"{PREFIX}.runq.{label_set_key(labels)}"


def run_queue_msg_id(run_id: str, version: int) -> str:
    """The ``Nats-Msg-Id`` of a run's queue message at one version: run_creation,
    state and the scheduler all queue a run under it, so JetStream keeps one."""
    return f"runq:{run_id}:{version}"


def agent_run_queues(agent_labels: Iterable[str]) -> list[str]:
    """Every run-queue subject an agent with these labels must consume.

    A run goes to an agent when the run's labels are a subset of the agent's,
    so the agent listens on the queue of every non-empty subset; an agent with
    no labels listens on the no-label queue only.
    """
    unique = sorted(set(agent_labels))
    if len(unique) > MAX_AGENT_LABELS:
        raise ValueError(f"An agent may have at most {MAX_AGENT_LABELS} labels, got {len(unique)}.")
    if not unique:
        return [run_queue([])]
    return [run_queue(subset) for size in range(1, len(unique) + 1) for subset in combinations(unique, size)]


def agent_can_take(agent_labels: Iterable[str], run_labels: Iterable[str]) -> bool:
    """The matching rule the run-queue subjects implement: a run's labels must be a
    subset of the agent's, and a run without labels goes only to an agent without."""
    agent, run = set(agent_labels), set(run_labels)
    return run <= agent if run else not agent


def agent_durable(agent_labels: Iterable[str]) -> str:
    """Agents with the same label set share one durable consumer (load balancing)."""
    return f"agents-{label_set_key(agent_labels)}"


# ---- leases (JetStream KV bucket) ------------------------------------------

# One key per time-driven loop (``scheduler.release``...), its value the
# holder; the bucket's max_age (settings.lease.ttl_seconds) expires a key
# its holder stopped refreshing (runtime/lease.py).
LEASES_BUCKET: Final = "flowbus_leases"

# ---- hints (core NATS) ------------------------------------------------------

# A run was created due later (its ``created`` event as payload): wakes the
# scheduler's release loop before its next planned pass. Only such runs, so
# the scheduler does no work for the runs created already due.
SCHEDULER_WAKE: Final = f"{PREFIX}.hint.scheduler.wake"

# ---- heartbeats (core NATS) -------------------------------------------------

HEARTBEAT_ALL: Final = f"{PREFIX}.hb.>"

# Heartbeats and hints: published without a reply subject, nobody waits for an answer.
FIRE_AND_FORGET_PREFIXES: Final = (f"{PREFIX}.hb.", f"{PREFIX}.hint.")


def flow_run_heartbeat(flow_run_id: str) -> str:
    return f"{PREFIX}.hb.flow_run.{flow_run_id}"


def agent_heartbeat(agent_id: str) -> str:
    return f"{PREFIX}.hb.agent.{agent_id}"
