"""The Python client: ``AsyncClient`` for asyncio code, ``Client`` for scripts.

Both speak the command subjects of flowbus.subjects and unwrap the reply
envelope: data is returned, an error is raised as the matching
``FlowbusError`` subclass (NotFound, Archived, ...). ``watch_flow_run``
streams a run's state events and logs from JetStream.

Reads: ``flowbus.evt.flow_run.<id>.>`` and ``flowbus.logs.<id>`` (watching).
Writes: ``flowbus.cmd.*`` requests.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeAlias, TypeVar

from nats.aio.client import Client as NatsClient
from nats.errors import ConnectionReconnectingError, NoRespondersError
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError
from pydantic import BaseModel, JsonValue, ValidationError

from flowbus import subjects
from flowbus.ids import uuid7
from flowbus.runtime.nats import NatsUnavailable, connect
from flowbus.schemas.agents import AgentList, AgentOut, ListAgents
from flowbus.schemas.common import Empty, Message, Reply, error_from_info, validation_failed
from flowbus.schemas.flows import (
    ArchiveFlow,
    CreateProject,
    Deleted,
    DeleteProject,
    FlowGroupOut,
    FlowList,
    FlowOut,
    GetFlow,
    GetProject,
    ListFlows,
    ProjectList,
    ProjectOut,
    ProjectRef,
    RegisterFlow,
    RenameProject,
    SerializedFlow,
    SetFlowGroupDefaultParameters,
    SetFlowGroupLabels,
    SetFlowScheduleState,
    SetFlowSettings,
    SetProjectDescription,
    UnarchiveFlow,
)
from flowbus.schemas.runs import (
    CancelFlowRun,
    CreateFlowRun,
    FlowRunDeleted,
    FlowRunDetail,
    FlowRunList,
    FlowRunOut,
    GetFlowRun,
    GetFlowRunHistory,
    GetFlowRunLogs,
    HistoryEntry,
    ListFlowRuns,
    LogBatch,
    LogList,
    LogRecord,
    SetFlowRunState,
    SetTaskRunState,
    StateChanged,
    StateHistoryList,
    StateSet,
    StateSpec,
)
from flowbus.settings import Settings
from flowbus.states import State, StateType, is_finished

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")
# A state to set: ``Success(message="It worked!")``, the JSON form
# ``{"type": "Success", "message": "It worked!"}``, or a StateType.
StateLike: TypeAlias = State | type[State] | StateType | Mapping[str, Any]


# A watcher that vanishes leaves consumers behind; the server drops them after this.
WATCH_CONSUMER_EXPIRY = 60.0
# An agent is online while its last heartbeat is at most this many intervals old.
AGENT_ONLINE_BEATS = 3
# An idempotent command's first try: long enough for any healthy service.
FIRST_ATTEMPT_TIMEOUT = 2.0
# About how long a replicated stream takes to elect a new leader after losing one.
FAILOVER_SECONDS = 30.0


class ServiceUnavailable(ConnectionError):
    """The server is reachable but no instance of a service answered."""


class AsyncClient:
    def __init__(self, settings: Settings | None = None, nc: NatsClient | None = None) -> None:
        self.settings = settings or Settings()
        self._nc = nc
        self._owns_connection = nc is None

    async def __aenter__(self) -> AsyncClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> NatsClient:
        if self._nc is None:
            self._nc = await connect(self.settings, "flowbus-client")
        return self._nc

    async def close(self) -> None:
        if self._nc is not None and self._owns_connection and not self._nc.is_closed:
            # flush, not drain: drain waits up to 30 s on idle JetStream subscriptions.
            await self._nc.flush()
            await self._nc.close()
        self._nc = None if self._owns_connection else self._nc

    @property
    def nc(self) -> NatsClient:
        assert self._nc is not None, "call connect() first"
        return self._nc

    async def request(self, subject: str, message: Message, reply: type[M], *, idempotent: bool = False) -> M:
        """Send a command and unwrap its reply envelope.

        A command that no service received (none running yet, or this
        connection failing over to another NATS node) is resent for up to
        ``unavailable_retry_seconds``. A command that may have been received but
        got no answer is resent once only when ``idempotent`` (a query, or a
        command carrying an idempotency key): its first attempt then waits
        briefly, since during a fail-over a request can vanish with a node.
        """
        nc = await self.connect()
        payload = message.model_dump_json().encode()
        service = subjects.service_of(subject)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.nats.unavailable_retry_seconds
        delay = 0.05
        full = self.settings.nats.request_timeout
        timeouts = [min(FIRST_ATTEMPT_TIMEOUT, full), full] if idempotent else [full]
        while True:
            try:
                msg = await nc.request(subject, payload, timeout=timeouts[0])
                break
            except (NoRespondersError, ConnectionReconnectingError) as exc:
                # Nothing received the command (a service restarting, or this
                # connection failing over to another NATS node): safe to resend.
                if loop.time() + delay > deadline:
                    raise ServiceUnavailable(
                        f"no {service} service is running (nothing answered on {subject})"
                    ) from exc
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.5)
            except NatsTimeout as exc:
                if len(timeouts) > 1:
                    timeouts.pop(0)
                    continue
                # It may have been applied: not resent; the caller decides.
                raise ServiceUnavailable(f"the {service} service did not answer in time") from exc
        envelope = Reply[reply].model_validate_json(msg.data)  # type: ignore[valid-type]
        if not envelope.ok:
            assert envelope.error is not None
            raise error_from_info(envelope.error)
        assert envelope.data is not None
        return envelope.data  # type: ignore[no-any-return]

    # ---- projects and flows -------------------------------------------------

    async def create_project(
        self, name: str, description: str | None = None, skip_if_exists: bool = False
    ) -> ProjectOut:
        cmd = CreateProject(name=name, description=description, skip_if_exists=skip_if_exists)
        return await self.request(subjects.Registration.CREATE_PROJECT, cmd, ProjectOut)

    async def get_project(self, name: str) -> ProjectOut:
        return await self.request(subjects.Registration.GET_PROJECT, GetProject(name=name), ProjectOut, idempotent=True)

    async def get_projects(self) -> list[ProjectOut]:
        out = await self.request(subjects.Registration.LIST_PROJECTS, Empty(), ProjectList, idempotent=True)
        return out.projects

    async def register(
        self,
        serialized_flow: SerializedFlow,
        project_name: str,
        version_group_id: str | None = None,
        idempotency_key: str | None = None,
        labels: list[str] | None = None,
        set_schedule_active: bool = True,
    ) -> FlowOut:
        cmd = RegisterFlow(
            project_name=project_name,
            serialized_flow=serialized_flow,
            version_group_id=version_group_id,
            idempotency_key=idempotency_key,
            labels=labels,
            set_schedule_active=set_schedule_active,
        )
        return await self.request(
            subjects.Registration.REGISTER_FLOW, cmd, FlowOut, idempotent=idempotency_key is not None
        )

    async def get_flow(self, flow_id: str) -> FlowOut:
        return await self.request(subjects.Registration.GET_FLOW, GetFlow(flow_id=flow_id), FlowOut, idempotent=True)

    async def rename_project(self, name: str, new_name: str) -> ProjectOut:
        cmd = RenameProject(project=ProjectRef(name=name), new_name=new_name)
        return await self.request(subjects.Registration.RENAME_PROJECT, cmd, ProjectOut)

    async def set_project_description(self, name: str, description: str | None) -> ProjectOut:
        cmd = SetProjectDescription(project=ProjectRef(name=name), description=description)
        return await self.request(subjects.Registration.SET_PROJECT_DESCRIPTION, cmd, ProjectOut)

    async def delete_project(self, name: str) -> Deleted:
        cmd = DeleteProject(project=ProjectRef(name=name))
        return await self.request(subjects.Registration.DELETE_PROJECT, cmd, Deleted)

    async def archive_flow(self, flow_id: str) -> FlowOut:
        return await self.request(
            subjects.Registration.ARCHIVE_FLOW, ArchiveFlow(flow_id=flow_id), FlowOut, idempotent=True
        )

    async def unarchive_flow(self, flow_id: str) -> FlowOut:
        return await self.request(
            subjects.Registration.UNARCHIVE_FLOW, UnarchiveFlow(flow_id=flow_id), FlowOut, idempotent=True
        )

    async def set_flow_settings(
        self,
        flow_id: str,
        *,
        heartbeat_enabled: bool | None = None,
        lazarus_enabled: bool | None = None,
        version_locking_enabled: bool | None = None,
    ) -> FlowOut:
        cmd = SetFlowSettings(
            flow_id=flow_id,
            heartbeat_enabled=heartbeat_enabled,
            lazarus_enabled=lazarus_enabled,
            version_locking_enabled=version_locking_enabled,
        )
        return await self.request(subjects.Registration.SET_FLOW_SETTINGS, cmd, FlowOut, idempotent=True)

    # The three mutations of seed 000, by their GraphQL names.
    async def disable_flow_heartbeat(self, flow_id: str, value: bool = True) -> FlowOut:
        return await self.set_flow_settings(flow_id, heartbeat_enabled=not value)

    async def disable_lazarus_for_flow(self, flow_id: str, value: bool = True) -> FlowOut:
        return await self.set_flow_settings(flow_id, lazarus_enabled=not value)

    async def enable_flow_version_locking(self, flow_id: str, value: bool = True) -> FlowOut:
        return await self.set_flow_settings(flow_id, version_locking_enabled=value)

    async def set_flow_schedule_state(self, flow_id: str, active: bool) -> FlowOut:
        cmd = SetFlowScheduleState(flow_id=flow_id, active=active)
        return await self.request(subjects.Registration.SET_FLOW_SCHEDULE_STATE, cmd, FlowOut, idempotent=True)

    async def set_flow_group_labels(self, flow_group_id: str, labels: list[str] | None) -> FlowGroupOut:
        cmd = SetFlowGroupLabels(flow_group_id=flow_group_id, labels=labels)
        return await self.request(subjects.Registration.SET_FLOW_GROUP_LABELS, cmd, FlowGroupOut, idempotent=True)

    async def set_flow_group_default_parameters(
        self, flow_group_id: str, parameters: dict[str, JsonValue]
    ) -> FlowGroupOut:
        cmd = SetFlowGroupDefaultParameters(flow_group_id=flow_group_id, parameters=parameters)
        return await self.request(
            subjects.Registration.SET_FLOW_GROUP_DEFAULT_PARAMETERS, cmd, FlowGroupOut, idempotent=True
        )

    async def get_flows(
        self,
        project_name: str | None = None,
        name: str | None = None,
        archived: bool | None = None,
        newest_only: bool = True,
    ) -> list[FlowOut]:
        query = ListFlows(project_name=project_name, name=name, archived=archived, newest_only=newest_only)
        return (await self.request(subjects.Registration.LIST_FLOWS, query, FlowList, idempotent=True)).flows

    # ---- runs ---------------------------------------------------------------

    async def create_flow_run(
        self,
        flow_id: str | None = None,
        *,
        version_group_id: str | None = None,
        flow_name: str | None = None,
        project_name: str | None = None,
        parameters: dict[str, JsonValue] | None = None,
        context: dict[str, JsonValue] | None = None,
        labels: list[str] | None = None,
        run_name: str | None = None,
        scheduled_start_time: datetime | None = None,
        idempotency_key: str | None = None,
    ) -> FlowRunOut:
        """Create a run (Scheduled, version 1); ``scheduled_start_time`` must be timezone-aware."""
        cmd = build(
            CreateFlowRun,
            flow_id=flow_id,
            version_group_id=version_group_id,
            flow_name=flow_name,
            project_name=project_name,
            parameters=parameters or {},
            context=context or {},
            labels=labels,
            run_name=run_name,
            scheduled_start_time=scheduled_start_time,
            # A random key per call makes the client's own retries safe.
            idempotency_key=idempotency_key or f"client-{uuid7()}",
        )
        return await self.request(subjects.RunCreation.CREATE_FLOW_RUN, cmd, FlowRunOut, idempotent=True)

    async def get_flow_run(self, flow_run_id: str) -> FlowRunDetail:
        """The run (with its version and state), its task runs, and what a runner needs."""
        return await self.request(
            subjects.State.GET_FLOW_RUN, build(GetFlowRun, flow_run_id=flow_run_id), FlowRunDetail, idempotent=True
        )

    async def get_flow_run_info(self, flow_run_id: str) -> FlowRunDetail:
        """The 1.x name of :meth:`get_flow_run`."""
        return await self.get_flow_run(flow_run_id)

    async def get_flow_runs(
        self,
        flow_id: str | None = None,
        flow_group_id: str | None = None,
        project_name: str | None = None,
        states: Sequence[StateType | str] | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[FlowRunOut]:
        """Runs, newest scheduled first; NOT_FOUND for an unknown project."""
        query = build(
            ListFlowRuns,
            flow_id=flow_id,
            flow_group_id=flow_group_id,
            project_name=project_name,
            states=list(states) if states is not None else None,
            limit=limit,
            offset=offset,
        )
        return (await self.request(subjects.State.LIST_FLOW_RUNS, query, FlowRunList, idempotent=True)).runs

    async def set_flow_run_state(
        self,
        flow_run_id: str,
        version: int,
        state: StateLike,
        message: str | None = None,
        agent_id: str | None = None,
    ) -> StateSet:
        """Set a state at the run's current ``version`` (optimistic locking).

        ``state`` is a State object (``Success(message="It worked!")``), its JSON
        form (``{"type": "Success", "message": "It worked!"}``) or a StateType;
        ``message``, when given, replaces the state's own.
        """
        cmd = build(
            SetFlowRunState,
            flow_run_id=flow_run_id,
            version=version,
            state=state_spec(state, message),
            agent_id=agent_id,
        )
        return await self.request(subjects.State.SET_FLOW_RUN_STATE, cmd, StateSet)

    async def set_task_run_state(
        self, task_run_id: str, version: int, state: StateLike, message: str | None = None
    ) -> StateSet:
        """Set a task run's state at its current ``version``; ``state`` as for set_flow_run_state."""
        cmd = build(SetTaskRunState, task_run_id=task_run_id, version=version, state=state_spec(state, message))
        return await self.request(subjects.State.SET_TASK_RUN_STATE, cmd, StateSet)

    async def cancel_flow_run(self, flow_run_id: str, message: str | None = None) -> StateSet:
        """Cancel a run: Cancelling while it runs, Cancelled before; a finished run is
        left as it is (``changed`` is False)."""
        cmd = build(CancelFlowRun, flow_run_id=flow_run_id, message=message)
        return await self.request(subjects.State.CANCEL_FLOW_RUN, cmd, StateSet, idempotent=True)

    async def get_flow_run_history(self, flow_run_id: str, include_task_runs: bool = False) -> list[HistoryEntry]:
        """Every accepted state of the run (and of its task runs), oldest first."""
        query = build(GetFlowRunHistory, flow_run_id=flow_run_id, include_task_runs=include_task_runs)
        return (
            await self.request(subjects.State.GET_FLOW_RUN_HISTORY, query, StateHistoryList, idempotent=True)
        ).entries

    async def get_flow_run_logs(
        self,
        flow_run_id: str,
        level: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 1000,
    ) -> list[LogRecord]:
        """Stored logs in time order: ``level`` and above, ``since``/``until`` inclusive (timezone-aware)."""
        query = build(
            GetFlowRunLogs,
            flow_run_id=flow_run_id,
            level=level.upper() if level else None,
            since=since,
            until=until,
            limit=limit,
        )
        return (await self.request(subjects.State.GET_FLOW_RUN_LOGS, query, LogList, idempotent=True)).records

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

    async def get_agents(self) -> AgentList:
        return await self.request(subjects.Heartbeat.LIST_AGENTS, ListAgents(), AgentList, idempotent=True)

    async def watch_flow_run(self, flow_run_id: str) -> AsyncIterator[StateChanged | LogRecord | FlowRunDeleted]:
        """Yield the run's state changes and log records, from the first, live.

        Both come from JetStream (deliver all), so nothing published
        before the watch started is missed. Ends after a finished state.
        """
        nc = await self.connect()
        js = nc.jetstream()
        queue: asyncio.Queue[StateChanged | LogRecord | FlowRunDeleted] = asyncio.Queue()

        async def on_event(msg: Any) -> None:
            if msg.subject.endswith(".state"):
                queue.put_nowait(StateChanged.model_validate_json(msg.data))
            elif msg.subject.endswith(".deleted"):
                queue.put_nowait(FlowRunDeleted.model_validate_json(msg.data))

        delivered = 0  # stream sequence of the last log batch received
        progressed = asyncio.Event()

        async def on_logs(msg: Any) -> None:
            nonlocal delivered
            for record in LogBatch.model_validate_json(msg.data).records:
                queue.put_nowait(record)
            delivered = msg.metadata.sequence.stream
            progressed.set()

        # Plain ephemeral push consumers: nats-py's ordered consumer drops live
        # messages when other subjects of the stream interleave with the filter.
        def config() -> ConsumerConfig:
            return ConsumerConfig(deliver_policy=DeliverPolicy.ALL, inactive_threshold=WATCH_CONSUMER_EXPIRY)

        async def subscribe(subject: str, stream: str, cb: Callable[[Any], Awaitable[None]]) -> Any:
            # A stream electing a new leader (NATS fail-over) refuses consumers for
            # a few seconds: keep trying for as long as a command would.
            loop = asyncio.get_running_loop()
            deadline = loop.time() + max(self.settings.nats.request_timeout, FAILOVER_SECONDS)
            while True:
                try:
                    return await js.subscribe(subject, stream=stream, cb=cb, config=config())
                except NatsError:
                    if loop.time() > deadline:
                        raise
                    await asyncio.sleep(0.5)

        events = await subscribe(subjects.flow_run_events(flow_run_id), subjects.EVENTS_STREAM, on_event)
        logs = await subscribe(subjects.logs(flow_run_id), subjects.LOGS_STREAM, on_logs)
        try:
            while True:
                item = await queue.get()
                yield item
                if isinstance(item, FlowRunDeleted):
                    return
                if isinstance(item, StateChanged) and is_finished(item.state.type):
                    # The runner ships its logs before the final state; the two
                    # streams arrive independently, so wait for the last batch.
                    last = await _last_sequence(js, subjects.LOGS_STREAM, subjects.logs(flow_run_id))
                    while delivered < last:
                        progressed.clear()
                        await progressed.wait()
                    while not queue.empty():
                        yield queue.get_nowait()
                    return
        finally:
            await events.unsubscribe()
            await logs.unsubscribe()


def build(model: type[M], **fields: Any) -> M:
    """A command from the caller's values, refused as a service would refuse it
    (ValidationFailed, code VALIDATION_ERROR) when they are invalid."""
    try:
        return model(**fields)
    except ValidationError as exc:
        raise validation_failed(exc) from None


def state_spec(state: StateLike, message: str | None = None) -> StateSpec:
    """The wire form of a state given as a State object (or class), its JSON dict
    or a StateType; ``message``, when given, replaces the state's own."""
    if isinstance(state, type):
        state = state()
    fields: dict[str, Any]
    if isinstance(state, State):
        fields = {"type": state.type, "message": state.message, "result": state.result}
    elif isinstance(state, str):
        fields = {"type": state}
    else:
        fields = dict(state)
    if message is not None:
        fields["message"] = message
    return build(StateSpec, **fields)


async def _last_sequence(js: JetStreamContext, stream: str, subject: str) -> int:
    """Stream sequence of the newest message on ``subject`` (0 when there is none)."""
    try:
        return (await js.get_last_msg(stream, subject)).seq or 0
    except NotFoundError:
        return 0


class Client:
    """Blocking client for scripts: every AsyncClient method, run on a private loop thread."""

    def __init__(self, settings: Settings | None = None) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="flowbus-client", daemon=True)
        self._thread.start()
        self._async = AsyncClient(settings)

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def close(self) -> None:
        self._run(self._async.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def create_project(self, name: str, description: str | None = None, skip_if_exists: bool = False) -> ProjectOut:
        return self._run(self._async.create_project(name, description, skip_if_exists))

    def get_projects(self) -> list[ProjectOut]:
        return self._run(self._async.get_projects())

    def register(self, serialized_flow: SerializedFlow, project_name: str, **kwargs: Any) -> FlowOut:
        return self._run(self._async.register(serialized_flow, project_name, **kwargs))

    def get_flow(self, flow_id: str) -> FlowOut:
        return self._run(self._async.get_flow(flow_id))

    def archive_flow(self, flow_id: str) -> FlowOut:
        return self._run(self._async.archive_flow(flow_id))

    def unarchive_flow(self, flow_id: str) -> FlowOut:
        return self._run(self._async.unarchive_flow(flow_id))

    def set_flow_settings(self, flow_id: str, **settings: bool | None) -> FlowOut:
        return self._run(self._async.set_flow_settings(flow_id, **settings))

    def disable_flow_heartbeat(self, flow_id: str, value: bool = True) -> FlowOut:
        return self._run(self._async.disable_flow_heartbeat(flow_id, value))

    def disable_lazarus_for_flow(self, flow_id: str, value: bool = True) -> FlowOut:
        return self._run(self._async.disable_lazarus_for_flow(flow_id, value))

    def enable_flow_version_locking(self, flow_id: str, value: bool = True) -> FlowOut:
        return self._run(self._async.enable_flow_version_locking(flow_id, value))

    def set_flow_schedule_state(self, flow_id: str, active: bool) -> FlowOut:
        return self._run(self._async.set_flow_schedule_state(flow_id, active))

    def set_flow_group_labels(self, flow_group_id: str, labels: list[str] | None) -> FlowGroupOut:
        return self._run(self._async.set_flow_group_labels(flow_group_id, labels))

    def set_flow_group_default_parameters(self, flow_group_id: str, parameters: dict[str, JsonValue]) -> FlowGroupOut:
        return self._run(self._async.set_flow_group_default_parameters(flow_group_id, parameters))

    def rename_project(self, name: str, new_name: str) -> ProjectOut:
        return self._run(self._async.rename_project(name, new_name))

    def set_project_description(self, name: str, description: str | None) -> ProjectOut:
        return self._run(self._async.set_project_description(name, description))

    def delete_project(self, name: str) -> Deleted:
        return self._run(self._async.delete_project(name))

    def get_flows(self, **kwargs: Any) -> list[FlowOut]:
        return self._run(self._async.get_flows(**kwargs))

    def create_flow_run(
        self,
        flow_id: str | None = None,
        *,
        version_group_id: str | None = None,
        parameters: dict[str, JsonValue] | None = None,
        labels: list[str] | None = None,
        run_name: str | None = None,
        scheduled_start_time: datetime | None = None,
        idempotency_key: str | None = None,
        context: dict[str, JsonValue] | None = None,
        flow_name: str | None = None,
        project_name: str | None = None,
    ) -> str:
        """Create a run and return its id (as the 1.x client did)."""
        run = self._run(
            self._async.create_flow_run(
                flow_id,
                version_group_id=version_group_id,
                flow_name=flow_name,
                project_name=project_name,
                parameters=parameters,
                context=context,
                labels=labels,
                run_name=run_name,
                scheduled_start_time=scheduled_start_time,
                idempotency_key=idempotency_key,
            )
        )
        return run.id

    def get_flow_run(self, flow_run_id: str) -> FlowRunDetail:
        return self._run(self._async.get_flow_run(flow_run_id))

    def get_flow_run_info(self, flow_run_id: str) -> FlowRunDetail:
        return self._run(self._async.get_flow_run_info(flow_run_id))

    def get_flow_runs(
        self,
        flow_id: str | None = None,
        flow_group_id: str | None = None,
        project_name: str | None = None,
        states: Sequence[StateType | str] | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[FlowRunOut]:
        return self._run(self._async.get_flow_runs(flow_id, flow_group_id, project_name, states, limit, offset))

    def set_flow_run_state(
        self,
        flow_run_id: str,
        version: int,
        state: StateLike,
        message: str | None = None,
        agent_id: str | None = None,
    ) -> StateSet:
        return self._run(self._async.set_flow_run_state(flow_run_id, version, state, message, agent_id))

    def set_task_run_state(
        self, task_run_id: str, version: int, state: StateLike, message: str | None = None
    ) -> StateSet:
        return self._run(self._async.set_task_run_state(task_run_id, version, state, message))

    def cancel_flow_run(self, flow_run_id: str, message: str | None = None) -> StateSet:
        return self._run(self._async.cancel_flow_run(flow_run_id, message))

    def get_flow_run_history(self, flow_run_id: str, include_task_runs: bool = False) -> list[HistoryEntry]:
        return self._run(self._async.get_flow_run_history(flow_run_id, include_task_runs))

    def get_flow_run_logs(
        self,
        flow_run_id: str,
        level: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 1000,
    ) -> list[LogRecord]:
        return self._run(self._async.get_flow_run_logs(flow_run_id, level, since, until, limit))

    def get_agents(self) -> AgentList:
        return self._run(self._async.get_agents())

    def watch_flow_run(self, flow_run_id: str) -> Iterator[StateChanged | LogRecord | FlowRunDeleted]:
        """Blocking form of :meth:`AsyncClient.watch_flow_run`: the same items, as they arrive.

        Each item is fetched on the client's loop thread, so the caller's thread
        just blocks (pushed, not polled) until the next one; leaving the loop
        early removes the stream consumers.
        """
        stream = self._async.watch_flow_run(flow_run_id)
        done = object()

        async def step() -> StateChanged | LogRecord | FlowRunDeleted | object:
            # Caught here: StopAsyncIteration must not cross the thread hand-off.
            try:
                return await anext(stream)
            except StopAsyncIteration:
                return done

        try:
            while (item := self._run(step())) is not done:
                assert isinstance(item, StateChanged | LogRecord | FlowRunDeleted)
                yield item
        finally:
            if isinstance(stream, AsyncGenerator) and self._loop.is_running():
                self._run(stream.aclose())


__all__ = ["AsyncClient", "Client", "NatsUnavailable", "ServiceUnavailable"]
