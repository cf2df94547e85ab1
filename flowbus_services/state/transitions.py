"""The one code path that changes the state of a flow or task run.

``apply_transitions`` checks a batch of state commands against their
versions, asks ``rules.py`` what each change does, and writes every change,
cascades included, in one transaction with prebuilt statements; the
conditional UPDATE is the lock (docs/architecture.md, "State transitions").

Stages ``flowbus.evt.flow_run.<id>.state`` / ``...task_state`` (message id
``subjects.state_event_msg_id``) and, when a run re-enters a due Scheduled
state, ``flowbus.runq.<label-set key>`` (``subjects.run_queue_msg_id``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, func, insert, select, update

from flowbus.db.bulk import Bulk
from flowbus.db.connection import WriteConnection
from flowbus.db.engine import Database
from flowbus.db.outbox import OutboxBatch
from flowbus.db.tables import FlowRun, StateHistory, TaskRun
from flowbus.runtime.batching import write_batch
from flowbus.schemas.common import FlowbusError, NotFound, VersionLockingError
from flowbus.schemas.runs import (
    CancelFlowRun,
    RunQueued,
    SetFlowRunState,
    SetTaskRunState,
    StateChanged,
    StateOut,
    StateSet,
    StateSpec,
)
from flowbus.states import StateType
from flowbus_services.state.rules import (
    CASCADES,
    Effect,
    RunKind,
    cancel_target,
    cascaded_state,
    decide,
    resurrection_effects,
)

StateCommand = SetFlowRunState | SetTaskRunState | CancelFlowRun

_fr = FlowRun.__table__  # type: ignore[attr-defined]
_tr = TaskRun.__table__  # type: ignore[attr-defined]

# Prebuilt once: building statements per request costs more than running them.
_SELECT_FLOW_RUNS = select(
    _fr.c.id,
    _fr.c.flow_id,
    _fr.c.state,
    _fr.c.state_message,
    _fr.c.state_timestamp,
    _fr.c.version,
    _fr.c.start_time,
    _fr.c.end_time,
    _fr.c.agent_id,
    _fr.c.scheduled_start_time,
    _fr.c.labels,
    _fr.c.times_resurrected,
).where(_fr.c.id.in_(bindparam("ids", expanding=True)))
_TASK_COLUMNS = (
    _tr.c.id,
    _tr.c.flow_run_id,
    _tr.c.state,
    _tr.c.state_message,
    _tr.c.state_timestamp,
    _tr.c.version,
    _tr.c.start_time,
    _tr.c.end_time,
)
_SELECT_TASK_RUNS = select(*_TASK_COLUMNS).where(_tr.c.id.in_(bindparam("ids", expanding=True)))
_sh = StateHistory.__table__  # type: ignore[attr-defined]
# A cascade's view of a flow run's task runs: with the retries each may use,
# and how many times each has run (its Running entries; task_run keeps no count).
_RUN_COUNT = (
    select(func.count())
    .where(
        _sh.c.flow_run_id == bindparam("flow_run_id"),  # the indexed column narrows the count
        _sh.c.task_run_id == _tr.c.id,
        _sh.c.type == StateType.RUNNING.value,
    )
    .correlate(_tr)
    .scalar_subquery()
    .label("run_count")
)
_SELECT_TASK_RUNS_OF = select(*_TASK_COLUMNS, _tr.c.max_retries, _RUN_COUNT).where(
    _tr.c.flow_run_id == bindparam("flow_run_id")
)
_SELECT_VERSION = {
    RunKind.FLOW_RUN: select(_fr.c.version).where(_fr.c.id == bindparam("id")),
    RunKind.TASK_RUN: select(_tr.c.version).where(_tr.c.id == bindparam("id")),
}
_STATE_COLUMNS = (
    "state",
    "state_message",
    "state_timestamp",
    "state_result",
    "state_serialized",
    "version",
    "updated",
)
_UPDATE_FLOW_RUN = Bulk(
    update(_fr)
    .where(_fr.c.id == bindparam("b_id"), _fr.c.version == bindparam("b_version"))
    .values({c: bindparam(c) for c in (*_STATE_COLUMNS, "start_time", "end_time", "agent_id", "times_resurrected")})
)
_UPDATE_TASK_RUN = Bulk(
    update(_tr)
    .where(_tr.c.id == bindparam("b_id"), _tr.c.version == bindparam("b_version"))
    .values({c: bindparam(c) for c in (*_STATE_COLUMNS, "start_time", "end_time")})
)
_INSERT_HISTORY = Bulk(insert(_sh))


@dataclass
class _Run:
    """A flow or task run as this batch sees it (updated as commands apply)."""

    kind: RunKind
    id: str
    flow_run_id: str
    state: StateType
    message: str | None
    timestamp: datetime
    version: int
    start_time: datetime | None
    end_time: datetime | None
    agent_id: str | None = None
    flow_id: str | None = None
    scheduled_start_time: datetime | None = None
    labels: list[str] = field(default_factory=list)
    times_resurrected: int = 0

    @classmethod
    def of(cls, kind: RunKind, row: Any) -> _Run:
        flow = kind is RunKind.FLOW_RUN
        return cls(
            kind=kind,
            id=row.id,
            flow_run_id=row.id if flow else row.flow_run_id,
            state=StateType(row.state),
            message=row.state_message,
            timestamp=row.state_timestamp,
            version=row.version,
            start_time=row.start_time,
            end_time=row.end_time,
            agent_id=row.agent_id if flow else None,
            flow_id=row.flow_id if flow else None,
            scheduled_start_time=row.scheduled_start_time if flow else None,
            labels=list(row.labels or []) if flow else [],
            times_resurrected=row.times_resurrected if flow else 0,
        )


class _RaceLost(Exception):
    """Another writer changed a run between this batch's read and its write."""


def version_error(kind: RunKind, run_id: str, current: int, given: int) -> VersionLockingError:
    return VersionLockingError(
        f"{kind.capitalize()} {run_id} is at version {current}, but the state was set against version {given}."
    )


class _TransitionBatch:
    def __init__(self, conn: WriteConnection, now: datetime) -> None:
        self.conn = conn
        self.now = now
        self.flow_runs: dict[str, _Run] = {}
        self.task_runs: dict[str, _Run] = {}
        # Each run's row is written once per batch, with its last values, at
        # the version the batch read (one UPDATE over many rows, on PostgreSQL,
        # changes a row once: a second change of it would not match).
        self.flow_updates: dict[str, dict[str, Any]] = {}
        self.task_updates: dict[str, dict[str, Any]] = {}
        self.history: list[dict[str, Any]] = []
        self.events = OutboxBatch()

    # ---- reading ----------------------------------------------------------

    async def load(self, commands: Sequence[StateCommand]) -> None:
        task_ids = [c.task_run_id for c in commands if isinstance(c, SetTaskRunState)]
        if task_ids:
            for row in (await self.conn.execute(_SELECT_TASK_RUNS, {"ids": task_ids})).all():
                self._add_task_run(row)
        flow_ids = {c.flow_run_id for c in commands if not isinstance(c, SetTaskRunState)}
        flow_ids.update(t.flow_run_id for t in self.task_runs.values())
        if flow_ids:
            for row in (await self.conn.execute(_SELECT_FLOW_RUNS, {"ids": list(flow_ids)})).all():
                self.flow_runs[row.id] = _Run.of(RunKind.FLOW_RUN, row)

    def _add_task_run(self, row: Any) -> _Run:
        """The batch's view of a task run: a run this batch already changed keeps its changes."""
        task_run = self.task_runs.get(row.id)
        if task_run is None:
            task_run = self.task_runs[row.id] = _Run.of(RunKind.TASK_RUN, row)
        return task_run

    # ---- deciding: the rules say whether, and what follows ------------------

    async def apply(self, cmd: StateCommand) -> StateSet | FlowbusError:
        try:
            if isinstance(cmd, SetFlowRunState):
                return await self._set_flow_run_state(cmd)
            if isinstance(cmd, SetTaskRunState):
                return self._set_task_run_state(cmd)
            return await self._cancel(cmd)
        except FlowbusError as refusal:
            return refusal

    def _flow_run(self, flow_run_id: str) -> _Run:
        run = self.flow_runs.get(flow_run_id)
        if run is None:
            raise NotFound(f"Flow run {flow_run_id} not found")
        return run

    async def _set_flow_run_state(self, cmd: SetFlowRunState) -> StateSet:
        run = self._flow_run(cmd.flow_run_id)
        if cmd.version is not None and run.version != cmd.version:
            raise version_error(run.kind, run.id, run.version, cmd.version)
        return await self._transition(run, cmd.state, cmd.agent_id, resurrect=cmd.resurrect)

    def _set_task_run_state(self, cmd: SetTaskRunState) -> StateSet:
        task_run = self.task_runs.get(cmd.task_run_id)
        if task_run is None:
            raise NotFound(f"Task run {cmd.task_run_id} not found")
        if cmd.version is not None and task_run.version != cmd.version:
            raise version_error(task_run.kind, task_run.id, task_run.version, cmd.version)
        flow_run = self.flow_runs.get(task_run.flow_run_id)
        flow_run_state = flow_run.state if flow_run else None
        effects = decide(task_run.kind, task_run.id, task_run.state, cmd.state.type, flow_run_state)
        return self._write(task_run, cmd.state, effects)

    async def _cancel(self, cmd: CancelFlowRun) -> StateSet:
        run = self._flow_run(cmd.flow_run_id)
        proposed = cancel_target(run.state)
        if proposed is None:
            current = StateOut(type=run.state, message=run.message, timestamp=run.timestamp, version=run.version)
            return StateSet(id=run.id, version=run.version, state=current, changed=False)
        target, default_message = proposed
        return await self._transition(run, StateSpec(type=target, message=cmd.message or default_message))

    async def _transition(
        self, run: _Run, spec: StateSpec, agent_id: str | None = None, *, resurrect: bool = False
    ) -> StateSet:
        """A flow-run change: the rules, the write, then the effects that follow it."""
        effects = decide(run.kind, run.id, run.state, spec.type)
        if resurrect:
            task_states = [task_run.state for task_run, _ in await self._task_runs_of(run)]
            effects = (*effects, *resurrection_effects(run.id, run.state, task_states))
        out = self._write(run, spec, effects, agent_id)
        for effect in effects:
            if effect is Effect.REQUEUE_IF_DUE:
                self._requeue_if_due(run)
            elif effect in CASCADES:
                await self._cascade(run, effect)
        return out

    def _requeue_if_due(self, run: _Run) -> None:
        if run.scheduled_start_time is None or run.scheduled_start_time > self.now:
            return
        self.events.emit(
            RunQueued(
                flow_run_id=run.id,
                flow_id=run.flow_id or "",
                version=run.version,
                labels=run.labels,
                scheduled_start_time=run.scheduled_start_time,
            )
        )

    async def _cascade(self, flow_run: _Run, cascade: Effect) -> None:
        """Apply a flow run's ``cascade`` to its task runs, each change through the rules."""
        for task_run, row in await self._task_runs_of(flow_run):
            run_count = row.run_count + self._runs_staged(task_run.id)
            spec = cascaded_state(cascade, task_run.state, row.max_retries, run_count)
            if spec is not None:
                effects = decide(task_run.kind, task_run.id, task_run.state, spec.type, flow_run.state)
                self._write(task_run, spec, effects)

    async def _task_runs_of(self, flow_run: _Run) -> list[tuple[_Run, Any]]:
        """The flow run's task runs as this batch sees them, each with its row
        (``max_retries``, ``run_count``)."""
        rows = (await self.conn.execute(_SELECT_TASK_RUNS_OF, {"flow_run_id": flow_run.id})).all()
        return [(self._add_task_run(row), row) for row in rows]

    def _runs_staged(self, task_run_id: str) -> int:
        """Running entries this batch added to a task run's history (not in the table yet)."""
        running = StateType.RUNNING.value
        return sum(1 for h in self.history if h["task_run_id"] == task_run_id and h["type"] == running)

    # ---- writing ----------------------------------------------------------

    def _write(self, run: _Run, spec: StateSpec, effects: tuple[Effect, ...], agent_id: str | None = None) -> StateSet:
        """Record one accepted change: the row update (with the effects that
        shape the row), its history entry, its event."""
        previous, given_version = run.state, run.version
        run.state, run.version = spec.type, given_version + 1
        run.message, run.timestamp = spec.message, self.now
        if effects:
            self._shape_row(run, effects, agent_id)
        values: dict[str, Any] = {
            "b_id": run.id,
            "b_version": given_version,
            "state": spec.type.value,
            "state_message": spec.message,
            "state_timestamp": self.now,
            "state_result": spec.result,
            "state_serialized": spec.serialized,
            "version": run.version,
            "updated": self.now,
            "start_time": run.start_time,
            "end_time": run.end_time,
        }
        task_run_id = None if run.kind is RunKind.FLOW_RUN else run.id
        if task_run_id is None:
            values["agent_id"] = run.agent_id
            values["times_resurrected"] = run.times_resurrected
        updates = self.flow_updates if task_run_id is None else self.task_updates
        earlier = updates.get(run.id)
        if earlier is not None:
            values["b_version"] = earlier["b_version"]
        updates[run.id] = values
        self.history.append(
            {
                "flow_run_id": run.flow_run_id,
                "task_run_id": task_run_id,
                "type": spec.type.value,
                "message": spec.message,
                "result": spec.result,
                "version": run.version,
                "timestamp": self.now,
            }
        )
        state = StateOut(type=spec.type, message=spec.message, timestamp=self.now, version=run.version)
        self.events.emit(
            StateChanged(
                flow_run_id=run.flow_run_id,
                task_run_id=task_run_id,
                version=run.version,
                state=state,
                previous=previous,
            )
        )
        return StateSet(id=run.id, version=run.version, state=state)

    def _shape_row(self, run: _Run, effects: tuple[Effect, ...], agent_id: str | None) -> None:
        """The effects that change the run's row besides its state."""
        for effect in effects:
            if effect is Effect.SET_END_TIME:
                run.end_time = self.now
            elif effect is Effect.SET_START_TIME:
                if run.start_time is None:
                    run.start_time = self.now
            elif effect is Effect.CLEAR_END_TIME:
                run.end_time = None
            elif effect is Effect.RECORD_AGENT:
                run.agent_id = agent_id
            elif effect is Effect.COUNT_RESURRECTION:
                run.times_resurrected += 1

    async def flush(self) -> None:
        for statement, updates in ((_UPDATE_FLOW_RUN, self.flow_updates), (_UPDATE_TASK_RUN, self.task_updates)):
            # In id order: concurrent batches (PostgreSQL) then lock rows in one order, never in a cycle.
            rows = [updates[run_id] for run_id in sorted(updates)]
            if rows and await self.conn.run_bulk(statement, rows) != len(rows):
                raise _RaceLost
        await self.conn.run_bulk(_INSERT_HISTORY, self.history)


async def apply_transitions(db: Database, commands: Sequence[StateCommand]) -> list[StateSet | FlowbusError]:
    """Apply a batch of state commands in one transaction; one outcome per command."""
    # A cancel, or a state set at no version, names no version: when another
    # writer wins the race, it reads again.
    unversioned = len(commands) == 1 and (isinstance(commands[0], CancelFlowRun) or commands[0].version is None)
    attempts = 5 if unversioned else 1
    for _ in range(attempts):
        try:
            return await write_batch(db, _TransitionBatch, commands)
        except _RaceLost:
            if len(commands) != 1:
                raise  # the group committer retries the commands one by one
    # A single command lost a race with another instance: report the version it lost to.
    cmd = commands[0]
    kind, run_id = (
        (RunKind.TASK_RUN, cmd.task_run_id) if isinstance(cmd, SetTaskRunState) else (RunKind.FLOW_RUN, cmd.flow_run_id)
    )
    async with db.read_connection() as conn:
        current = (await conn.execute(_SELECT_VERSION[kind], {"id": run_id})).scalar()
    given = cmd.version if not isinstance(cmd, CancelFlowRun) and cmd.version is not None else (current or 0) - 1
    return [version_error(kind, run_id, current or 0, given)]
