"""Creating flow runs (docs/semantics.md, "Creating flow runs").

``create_flow_runs`` takes a batch of create commands (the group committer
gathers concurrent ones) and, in one transaction, inserts each new run
(Scheduled, version 1), its task runs (Pending) and its first state-history
entry with prebuilt statements run with executemany, and stages in the
outbox ``flowbus.evt.flow_run.<id>.created``, ``...<id>.state`` and, when
the run is already due, its ``flowbus.runq.<label-set key>`` message
(message id ``subjects.run_queue_msg_id``, the same one the scheduler uses,
so the run is queued once); when it is due later, the ``created`` event also
goes to ``flowbus.hint.scheduler.wake`` (core NATS), to wake the scheduler.

Idempotency: a create whose key (per flow; per flow group for the
scheduler's auto-scheduled runs, which never expire) is already taken
returns the first run and changes nothing. Inside a batch the same holds by lookup; across
processes the unique constraint (flow_id, idempotency_key), or
(flow_group_id, idempotency_key) for auto-scheduled runs, decides: the batch
that loses rolls back, and each of its commands is retried alone, where the
loser finds the winner's run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from types import SimpleNamespace
from typing import Any

from sqlalchemy import bindparam, insert, select, true, update
from sqlalchemy.exc import IntegrityError

from flowbus import subjects
from flowbus.db.bulk import Bulk
from flowbus.db.connection import WriteConnection
from flowbus.db.engine import Database
from flowbus.db.outbox import OutboxBatch
from flowbus.db.tables import Flow, FlowGroup, FlowRun, Project, StateHistory, TaskRun
from flowbus.db.views import flow_run_out
from flowbus.names import generate_run_name
from flowbus.parameters import merge_parameters
from flowbus.runtime.batching import write_batch
from flowbus.schemas.common import Archived, Conflict, FlowbusError, NotFound
from flowbus.schemas.flows import ParameterSpec, RunConfigSpec
from flowbus.schemas.runs import CreateFlowRun, FlowRunCreated, FlowRunOut, RunQueued, StateChanged
from flowbus.states import StateType

SCHEDULED_MESSAGE = "Flow run scheduled."
_AUTO = "auto:"  # prefixes a group id where keys are held per group

_f = Flow.__table__  # type: ignore[attr-defined]
_g = FlowGroup.__table__  # type: ignore[attr-defined]
_p = Project.__table__  # type: ignore[attr-defined]
_fr = FlowRun.__table__  # type: ignore[attr-defined]

# Prebuilt once: building statements per request costs more than running them.
_TARGET_COLUMNS = (
    _f.c.id,
    _f.c.name,
    _f.c.archived,
    _f.c.parameters,
    _f.c.tasks,
    _f.c.run_config,
    _f.c.flow_group_id,
    _g.c.labels.label("group_labels"),
    _g.c.default_parameters.label("group_default_parameters"),
    _g.c.run_config.label("group_run_config"),
    _p.c.name.label("project_name"),
)
_FROM_TARGET = _f.join(_g, _g.c.id == _f.c.flow_group_id).join(_p, _p.c.id == _f.c.project_id)
_SELECT_FLOW = select(*_TARGET_COLUMNS).select_from(_FROM_TARGET).where(_f.c.id == bindparam("flow_id"))
_SELECT_UNARCHIVED = select(*_TARGET_COLUMNS).select_from(_FROM_TARGET).where(_f.c.archived.is_(False))
_SELECT_GROUP = select(_g.c.id).where(_g.c.id == bindparam("group_id"))
_SELECT_KEYS = select(_fr).where(
    _fr.c.flow_id == bindparam("flow_id"), _fr.c.idempotency_key.in_(bindparam("keys", expanding=True))
)
# The scheduler's keys are unique per group (index uq_flow_run_auto_key).
_SELECT_AUTO_KEYS = select(_fr).where(
    _fr.c.flow_group_id == bindparam("group_id"),
    _fr.c.auto_scheduled == true(),  # the partial indexes' own condition, so they are used
    _fr.c.idempotency_key.in_(bindparam("keys", expanding=True)),
)
_RELEASE_OR_REFRESH_KEY = (
    update(_fr)
    .where(_fr.c.id == bindparam("b_id"))
    .values(idempotency_key=bindparam("key"), idempotency_expires=bindparam("expires"))
)
_INSERT_RUN = Bulk(insert(_fr))
_INSERT_TASK_RUN = Bulk(insert(TaskRun.__table__))  # type: ignore[attr-defined]
_INSERT_HISTORY = Bulk(insert(StateHistory.__table__))  # type: ignore[attr-defined]


@dataclass(frozen=True)
class _Target:
    """What a create needs of the flow it targets, its group and project."""

    flow_id: str
    flow_name: str
    flow_group_id: str
    project_name: str
    archived: bool
    parameters: list[ParameterSpec]
    tasks: list[dict[str, Any]]
    flow_run_config: RunConfigSpec
    group_labels: list[str] | None
    group_default_parameters: dict[str, Any]
    group_run_config: RunConfigSpec

    @classmethod
    def of(cls, row: Any) -> _Target:
        return cls(
            flow_id=row.id,
            flow_name=row.name,
            flow_group_id=row.flow_group_id,
            project_name=row.project_name,
            archived=row.archived,
            parameters=[ParameterSpec.model_validate(p) for p in row.parameters],
            tasks=list(row.tasks),
            flow_run_config=RunConfigSpec.model_validate(row.run_config or {}),
            group_labels=row.group_labels,
            group_default_parameters=dict(row.group_default_parameters or {}),
            group_run_config=RunConfigSpec.model_validate(row.group_run_config or {}),
        )


class _CreateRunsBatch:
    def __init__(self, conn: WriteConnection, now: datetime, idempotency_ttl: float | None) -> None:
        self.conn = conn
        self.now = now
        self.ttl = idempotency_ttl
        self.targets: dict[tuple[str, str | None, str | None], _Target | FlowbusError] = {}
        # (flow id, key) -> the run that holds the key: stored, or created in this batch;
        # an auto-scheduled run's key is held per group: (AUTO + group id, key).
        self.keys: dict[tuple[str, str], FlowRunOut] = {}
        self.expires: dict[str, datetime] = {}  # run id -> when its key expires (TTL set)
        self.key_updates: list[dict[str, Any]] = []
        self.runs: list[dict[str, Any]] = []
        self.task_runs: list[dict[str, Any]] = []
        self.history: list[dict[str, Any]] = []
        self.events = OutboxBatch()

    # ---- reading ----------------------------------------------------------

    async def load(self, commands: Sequence[CreateFlowRun]) -> None:
        """Resolve every distinct target, then look up every key in one query per flow."""
        wanted: dict[str, set[str]] = {}
        wanted_auto: dict[str, tuple[_Target, set[str]]] = {}
        for cmd in commands:
            target = await self.target(cmd)
            if not isinstance(target, _Target) or cmd.idempotency_key is None:
                continue
            if cmd.auto_scheduled:
                wanted_auto.setdefault(target.flow_group_id, (target, set()))[1].add(cmd.idempotency_key)
            else:
                wanted.setdefault(target.flow_id, set()).add(cmd.idempotency_key)
        for flow_id, keys in wanted.items():
            rows = (await self.conn.execute(_SELECT_KEYS, {"flow_id": flow_id, "keys": sorted(keys)})).all()
            target = self.targets[(flow_id, None, None)]
            assert isinstance(target, _Target)
            for row in rows:
                self.keys[(flow_id, row.idempotency_key)] = flow_run_out(row, target.flow_name, target.project_name)
                if row.idempotency_expires is not None:
                    self.expires[row.id] = row.idempotency_expires
        for group_id, (target, keys) in wanted_auto.items():
            rows = (await self.conn.execute(_SELECT_AUTO_KEYS, {"group_id": group_id, "keys": sorted(keys)})).all()
            for row in rows:
                # The holder may be another version of the flow: its name is the group's.
                self.keys[(_AUTO + group_id, row.idempotency_key)] = flow_run_out(
                    row, target.flow_name, target.project_name
                )

    async def target(self, cmd: CreateFlowRun) -> _Target | FlowbusError:
        key = (cmd.flow_id or "", cmd.version_group_id, None if cmd.flow_id else f"{cmd.project_name}/{cmd.flow_name}")
        if key not in self.targets:
            try:
                target = await self._resolve(cmd)
                self.targets[key] = target
                self.targets.setdefault((target.flow_id, None, None), target)
            except FlowbusError as refusal:
                self.targets[key] = refusal
        return self.targets[key]

    async def _by_id(self, flow_id: str) -> _Target:
        cached = self.targets.get((flow_id, None, None))
        if isinstance(cached, _Target):
            return cached
        row = (await self.conn.execute(_SELECT_FLOW, {"flow_id": flow_id})).first()
        if row is None:
            raise NotFound(f"Flow {flow_id} not found")
        return _Target.of(row)

    async def _resolve(self, cmd: CreateFlowRun) -> _Target:
        """The flow a create targets: by id, by version group, or by name (+ project)."""
        if cmd.flow_id is not None:
            target = await self._by_id(cmd.flow_id)
            if target.archived:
                raise Archived(f"Flow {target.flow_id} is archived.")
            return target
        if cmd.version_group_id is not None:
            group_id = cmd.version_group_id
            rows = (await self.conn.execute(_SELECT_UNARCHIVED.where(_f.c.flow_group_id == group_id))).all()
            if not rows:
                if (await self.conn.execute(_SELECT_GROUP, {"group_id": group_id})).first() is None:
                    raise NotFound(f"Version group {group_id} not found")
                raise NotFound(f"Version group {group_id} has no unarchived flows.")
            if len(rows) > 1:
                raise Conflict(f"Version group {group_id} has {len(rows)} unarchived flows; give a flow id.")
            return _Target.of(rows[0])
        stmt = _SELECT_UNARCHIVED.where(_f.c.name == cmd.flow_name)
        if cmd.project_name is not None:
            stmt = stmt.where(_p.c.name == cmd.project_name)
        rows = (await self.conn.execute(stmt.order_by(_f.c.version.desc()))).all()
        where = f' in project "{cmd.project_name}"' if cmd.project_name else ""
        if not rows:
            raise NotFound(f'No unarchived flow named "{cmd.flow_name}"{where} found.')
        if len({r.flow_group_id for r in rows}) > 1:
            projects = ", ".join(sorted({r.project_name for r in rows}))
            raise Conflict(f'Flow name "{cmd.flow_name}" is not unique (projects: {projects}); give a project.')
        if len(rows) > 1:
            raise Conflict(f'Flow "{cmd.flow_name}" has {len(rows)} unarchived versions; give a flow id.')
        return _Target.of(rows[0])

    # ---- deciding ---------------------------------------------------------

    async def apply(self, cmd: CreateFlowRun) -> FlowRunOut | FlowbusError:
        target = await self.target(cmd)
        if isinstance(target, FlowbusError):
            return target
        key = cmd.idempotency_key
        holder = _AUTO + target.flow_group_id if cmd.auto_scheduled else target.flow_id
        if key is not None:
            existing = self.keys.get((holder, key))
            if existing is not None:
                expires = self.expires.get(existing.id)
                if expires is None or expires > self.now:
                    if expires is not None and self.ttl is not None:
                        # A sliding window: every repeat starts the key's period again.
                        self._set_key(existing.id, key, self.now + timedelta(seconds=self.ttl))
                    return existing
                # The old run keeps its history but gives up the key.
                self._set_key(existing.id, None, None)
        try:
            out = self._create(cmd, target)
        except FlowbusError as refusal:
            return refusal
        if key is not None:
            self.keys[(holder, key)] = out
            self.expires.pop(out.id, None)
            if self.ttl is not None and not cmd.auto_scheduled:
                self.expires[out.id] = self.now + timedelta(seconds=self.ttl)
        return out

    def _set_key(self, run_id: str, key: str | None, expires: datetime | None) -> None:
        self.key_updates.append({"b_id": run_id, "key": key, "expires": expires})
        if expires is not None:
            self.expires[run_id] = expires

    def _create(self, cmd: CreateFlowRun, target: _Target) -> FlowRunOut:
        """Stage one new run: its row, its task runs, its first history entry and its events."""
        now = self.now
        parameters = merge_parameters(target.parameters, target.group_default_parameters, cmd.parameters)
        labels = resolve_labels(cmd, target.group_labels, target.group_run_config, target.flow_run_config)
        start = cmd.scheduled_start_time or now
        key = cmd.idempotency_key
        expiring = key is not None and self.ttl is not None and not cmd.auto_scheduled
        # Only what a create decides: the table definitions fill in the rest (new ids, version 1, ...).
        row = _INSERT_RUN.complete(
            {
                "flow_id": target.flow_id,
                "flow_group_id": target.flow_group_id,
                "name": cmd.run_name or generate_run_name(),
                "parameters": parameters,
                "context": dict(cmd.context),
                "labels": labels,
                "run_config": cmd.run_config.model_dump(mode="json") if cmd.run_config else None,
                "scheduled_start_time": start,
                "idempotency_key": key,
                "idempotency_expires": now + timedelta(seconds=self.ttl) if expiring and self.ttl else None,
                "auto_scheduled": cmd.auto_scheduled,
                "state": StateType.SCHEDULED.value,
                "state_message": SCHEDULED_MESSAGE,
                "state_timestamp": now,
                "state_result": None,
                "state_serialized": None,
                "created": now,
                "updated": now,
            }
        )
        self.runs.append(row)
        run_id = row["id"]
        self.task_runs.extend(_task_run_row(run_id, task, now) for task in target.tasks)
        self.history.append(
            {
                "flow_run_id": run_id,
                "type": StateType.SCHEDULED.value,
                "message": SCHEDULED_MESSAGE,
                "result": None,
                "version": row["version"],
                "timestamp": now,
            }
        )
        out = _run_out(row, target)
        self._stage_events(out, start)
        return out

    def _stage_events(self, out: FlowRunOut, start: datetime) -> None:
        """``created`` and the first ``state``; then the run-queue message if it is due, else a wake hint."""
        run_id, version, labels = out.id, out.version, out.labels
        created = FlowRunCreated(
            flow_run_id=run_id, flow_id=out.flow_id, name=out.name, labels=labels, scheduled_start_time=start
        )
        payload = self.events.emit(created)
        self.events.emit(StateChanged(flow_run_id=run_id, version=version, state=out.state))
        if start <= self.now:
            queued = RunQueued(
                flow_run_id=run_id, flow_id=out.flow_id, version=version, labels=labels, scheduled_start_time=start
            )
            self.events.emit(queued)
        else:
            self.events.hint(subjects.SCHEDULER_WAKE, payload)

    # ---- writing ----------------------------------------------------------

    async def flush(self) -> None:
        for params in self.key_updates:
            await self.conn.execute(_RELEASE_OR_REFRESH_KEY, params)
        await self.conn.run_bulk(_INSERT_RUN, self.runs)
        await self.conn.run_bulk(_INSERT_TASK_RUN, self.task_runs)
        await self.conn.run_bulk(_INSERT_HISTORY, self.history)


def _task_run_row(flow_run_id: str, task: dict[str, Any], now: datetime) -> dict[str, Any]:
    """A new run's task run (Pending), with what a create decides; the table fills in the rest."""
    return {
        "flow_run_id": flow_run_id,
        "task_slug": task["slug"],
        "task_name": task["name"],
        "max_retries": task.get("max_retries", 0),
        "retry_delay_seconds": task.get("retry_delay_seconds"),
        "state": StateType.PENDING.value,
        "state_timestamp": now,
        "state_result": None,
        "state_serialized": None,
        "created": now,
        "updated": now,
    }


def _run_out(row: Mapping[str, Any], target: _Target) -> FlowRunOut:
    return flow_run_out(SimpleNamespace(**row), target.flow_name, target.project_name)


async def create_flow_runs(
    db: Database, commands: Sequence[CreateFlowRun], idempotency_ttl: float | None
) -> list[FlowRunOut | FlowbusError]:
    """Create a batch of runs in one transaction; one outcome per command."""
    for attempt in range(2):
        try:
            return await write_batch(db, partial(_CreateRunsBatch, idempotency_ttl=idempotency_ttl), commands)
        except IntegrityError:
            # Another process took one of the keys first. Alone, the command
            # finds the winner's run on its second attempt; in a batch, the
            # group committer retries the commands one by one.
            if len(commands) != 1 or attempt == 1:
                raise
    raise AssertionError("unreachable")


def resolve_labels(
    cmd: CreateFlowRun, group_labels: list[str] | None, group_run_config: RunConfigSpec, flow_run_config: RunConfigSpec
) -> list[str]:
    """The first label set that is given wins (order: docs/semantics.md, "Creating flow runs")."""
    for candidate in (
        cmd.labels,
        cmd.run_config.labels if cmd.run_config else None,
        group_labels,
        group_run_config.labels,
        flow_run_config.labels,
    ):
        if candidate is not None:
            return sorted(set(candidate))
    return []
