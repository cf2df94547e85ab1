"""The chaos suite's figures: what a probe's runs show in the database, the executions ledger and EVENTS.

A probe (tests/chaos/) drives real processes through a fault, then hands
this module what it knows: the flows whose runs it made, the run id each
idempotency key was acknowledged with, the ledger its flow's task wrote one
line to per execution, and which runs the fault itself killed. ``analyse``
computes every figure of the external review's checks (docs/reliability.md,
"The chaos suite"):

- lost: an acknowledged run that is not in ``flow_run``; unacknowledged: a
  key the client never got an answer for within its bound;
- duplicated: an idempotency key with more than one run; ack_mismatch: a
  key acknowledged with an id other than the database's run for it;
- executed_more_than_once: a run whose task body started more than once;
  success_without_execution: a Success run whose task never started;
- stuck: a run not finished when the probe stopped waiting;
- failed_after_running: a Failed run whose task body had completed;
  failed_healthy: a Failed run none of whose processes the fault killed;
- history_gaps / history_duplicates: flow-run versions that are not 1..n,
  task-run versions that are not 2..n; history_tail_mismatch: a run or task
  run whose row disagrees with its last history entry;
- events_missing / events_extra: history entries with no
  ``flowbus.evt.flow_run.<id>.{state,task_state}`` event in FLOWBUS_EVENTS
  (and runs with no ``created`` event), and events with no history entry or
  published twice;
- outbox_left: outbox rows no publisher has sent.

Each is an integer that must be zero; recovery times and the rest are
reported only. ``ChaosReport`` gathers every probe's summary into one JSON
document (``CHAOS_REPORT``). Reads the database and the EVENTS stream
(``flowbus.evt.flow_run.>``); writes nothing to either.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nats.aio.client import Client
from nats.errors import TimeoutError as NatsTimeout
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from flowbus import subjects
from flowbus.states import StateType, is_finished

# Figures that must be zero in every probe (docs/reliability.md, "The chaos suite").
RUN_FIGURES = (
    "unacknowledged",
    "lost",
    "duplicated",
    "ack_mismatch",
    "executed_more_than_once",
    "success_without_execution",
    "stuck",
    "failed_after_running",
    "failed_healthy",
    "history_gaps",
    "history_duplicates",
    "history_tail_mismatch",
    "events_missing",
    "events_extra",
    "outbox_left",
)

# A task body's lines in the ledger: "start|end <flow run id> <pid> <pgid> <unix time>".
LEDGER_FLOW = """
import os
import time
import flowbus
from flowbus import Flow, Parameter, task

for _ in range(1200):  # while the hold file exists the flow is still loading: its run stays Submitted
    if not os.path.exists({hold!r}):
        break
    time.sleep(0.05)


def _line(event):
    run_id = flowbus.context.get("flow_run_id")
    line = f"{{event}} {{run_id}} {{os.getpid()}} {{os.getpgid(0)}} {{time.time():.3f}}\\n"
    fd = os.open({ledger!r}, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, line.encode())  # one write with O_APPEND: concurrent lines stay whole
    finally:
        os.close(fd)


@task
def record(seconds):
    _line("start")
    time.sleep(seconds)
    _line("end")


with Flow({name!r}) as flow:
    record(Parameter("seconds", default=0.2))
"""


@dataclass(frozen=True)
class Execution:
    event: str  # "start" or "end"
    run_id: str
    pid: int
    pgid: int
    at: float  # unix time


def read_ledger(path: Path) -> list[Execution]:
    if not path.exists():
        return []
    found = []
    for line in path.read_text().splitlines():
        event, run_id, pid, pgid, at = line.split()
        found.append(Execution(event, run_id, int(pid), int(pgid), float(at)))
    return found


@dataclass
class Load:
    """What a load generator saw: per idempotency key, the run id it was
    acknowledged with (None: never) and how many attempts that took."""

    acked: dict[str, str | None] = field(default_factory=dict)
    attempts: dict[str, int] = field(default_factory=dict)
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    # (sent, acknowledged), monotonic, of each attempt that was answered: for recovery times.
    ack_times: list[tuple[float, float]] = field(default_factory=list)

    def first_ack_after(self, moment: float) -> float | None:
        """When the first attempt sent after ``moment`` was acknowledged (one in flight before does not count)."""
        later = [acked for sent, acked in self.ack_times if sent > moment]
        return min(later) if later else None


@dataclass(frozen=True)
class RunRow:
    id: str
    flow_id: str
    state: StateType
    message: str | None
    version: int
    idempotency_key: str | None
    agent_id: str | None
    times_resurrected: int


@dataclass(frozen=True)
class HistoryRow:
    flow_run_id: str
    task_run_id: str | None
    type: str
    version: int


@dataclass(frozen=True)
class TaskRunRow:
    id: str
    flow_run_id: str
    state: str
    version: int


def database_engine(url: str) -> AsyncEngine:
    return create_async_engine(url, pool_pre_ping=False)


async def fetch_runs(engine: AsyncEngine, flow_ids: Sequence[str]) -> list[RunRow]:
    query = text(
        "SELECT id, flow_id, state, state_message, version, idempotency_key, agent_id, times_resurrected"
        " FROM flow_run WHERE flow_id IN :flows"
    ).bindparams(_expanding("flows"))
    async with engine.connect() as conn:
        rows = (await conn.execute(query, {"flows": list(flow_ids)})).all()
    return [RunRow(r[0], r[1], StateType(r[2]), r[3], r[4], r[5], r[6], r[7]) for r in rows]


def _expanding(name: str) -> Any:
    from sqlalchemy import bindparam

    return bindparam(name, expanding=True)


async def wait_until_final(
    engine: AsyncEngine, flow_ids: Sequence[str], expected: int, timeout: float, interval: float = 0.5
) -> list[RunRow]:
    """Poll until the flows have ``expected`` runs (at least) and every one is finished, or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        runs = await fetch_runs(engine, flow_ids)
        if len(runs) >= expected and all(is_finished(r.state) for r in runs):
            return runs
        if time.monotonic() >= deadline:
            return runs
        await asyncio.sleep(interval)


OUTBOX_WAIT_SECONDS = 30.0


async def outbox_rows(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(text("SELECT count(*) FROM outbox"))).scalar_one())


async def wait_outbox_empty(engine: AsyncEngine, timeout: float) -> int:
    """Poll until no outbox row is left, or ``timeout`` passes; the rows left."""
    deadline = time.monotonic() + timeout
    while (left := await outbox_rows(engine)) and time.monotonic() < deadline:
        await asyncio.sleep(0.25)
    return left


async def read_flow_run_events(nc: Client, timeout: float = 30) -> list[tuple[str, str, dict[str, Any]]]:
    """Every ``flowbus.evt.flow_run.<id>.<fact>`` message in FLOWBUS_EVENTS, from the first:
    (run id, fact, payload). An ordered consumer: each message once, in stream order."""
    js = nc.jetstream()
    info = await js.stream_info(subjects.EVENTS_STREAM)
    if info.state.messages == 0:
        return []
    sub = await js.subscribe(f"{subjects.PREFIX}.evt.flow_run.>", ordered_consumer=True, stream=subjects.EVENTS_STREAM)
    found: list[tuple[str, str, dict[str, Any]]] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            try:
                msg = await sub.next_msg(timeout=2)
            except NatsTimeout:
                break  # nothing more (num_pending said so, or the filter matched nothing)
            parts = msg.subject.split(".")
            found.append((parts[3], parts[4], json.loads(msg.data)))
            if msg.metadata.num_pending == 0:
                break
    finally:
        await sub.unsubscribe()
    return found


async def fetch_history(engine: AsyncEngine, run_ids: Sequence[str]) -> tuple[list[HistoryRow], list[TaskRunRow], int]:
    """The runs' state history and task runs, and the outbox rows left (all owners)."""
    history: list[HistoryRow] = []
    task_runs: list[TaskRunRow] = []
    async with engine.connect() as conn:
        for chunk in _chunks(list(run_ids), 500):
            query = text(
                "SELECT flow_run_id, task_run_id, type, version FROM state_history WHERE flow_run_id IN :runs"
            ).bindparams(_expanding("runs"))
            history += [HistoryRow(*r) for r in (await conn.execute(query, {"runs": chunk})).all()]
            query = text("SELECT id, flow_run_id, state, version FROM task_run WHERE flow_run_id IN :runs").bindparams(
                _expanding("runs")
            )
            task_runs += [TaskRunRow(*r) for r in (await conn.execute(query, {"runs": chunk})).all()]
    return history, task_runs, await outbox_rows(engine)


def _chunks(items: list[str], size: int) -> Iterable[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _contiguous(versions: list[int], first: int) -> tuple[bool, bool]:
    """(has a gap, has a duplicate) for versions that must read first..n."""
    duplicate = len(versions) != len(set(versions))
    ordered = sorted(set(versions))
    gap = bool(ordered) and ordered != list(range(first, first + len(ordered)))
    return gap, duplicate


@dataclass
class Inputs:
    """What a probe knows besides the database."""

    flow_ids: Sequence[str]
    load: Load
    ledger: Path
    # Runs the fault itself killed a process of (an agent's): they may end Failed.
    killed_runs: frozenset[str] = frozenset()
    # Runs the probe finished by hand (no task of theirs ever ran).
    by_hand: frozenset[str] = frozenset()
    # Runs the probe made without an idempotency key (each counts as acknowledged).
    direct_runs: Sequence[str] = ()


async def analyse(
    engine: AsyncEngine, nc: Client, inputs: Inputs, wait_seconds: float
) -> tuple[dict[str, int], list[RunRow]]:
    """Wait (bounded) until every run is finished, then compute the figures; and the runs read."""
    expected = sum(1 for run_id in inputs.load.acked.values() if run_id) + len(inputs.direct_runs)
    runs = await wait_until_final(engine, inputs.flow_ids, expected, wait_seconds)
    # Published rows are deleted by each relay's next sweep, and a dead
    # instance's rows are published by its successor's after a grace (5 s).
    await wait_outbox_empty(engine, OUTBOX_WAIT_SECONDS)
    history, task_runs, outbox = await fetch_history(engine, [r.id for r in runs])
    events = await read_flow_run_events(nc)
    figures = dict.fromkeys(RUN_FIGURES, 0)
    figures.update(_run_figures(runs, inputs))
    figures.update(_history_figures(runs, history, task_runs))
    figures.update(_event_figures(runs, history, events))
    figures["outbox_left"] = outbox
    return figures, runs


def _run_figures(runs: list[RunRow], inputs: Inputs) -> dict[str, int]:
    figures: collections.Counter[str] = collections.Counter()
    by_id = {r.id: r for r in runs}
    by_key: dict[str, list[RunRow]] = collections.defaultdict(list)
    for r in runs:
        if r.idempotency_key is not None:
            by_key[r.idempotency_key].append(r)
    for key, run_id in inputs.load.acked.items():
        if run_id is None:
            figures["unacknowledged"] += 1
            continue
        figures["lost"] += run_id not in by_id
        rows = by_key.get(key, [])
        figures["ack_mismatch"] += len(rows) == 1 and rows[0].id != run_id
    figures["lost"] += sum(1 for run_id in inputs.direct_runs if run_id not in by_id)
    figures["duplicated"] = sum(1 for rows in by_key.values() if len(rows) > 1)

    executions = read_ledger(inputs.ledger)
    starts = collections.Counter(e.run_id for e in executions if e.event == "start")
    ends = collections.Counter(e.run_id for e in executions if e.event == "end")
    figures["executed_more_than_once"] = sum(1 for r in runs if starts[r.id] > 1)
    figures["success_without_execution"] = sum(
        1 for r in runs if r.state is StateType.SUCCESS and not starts[r.id] and r.id not in inputs.by_hand
    )
    figures["stuck"] = sum(1 for r in runs if not is_finished(r.state))
    failed = [r for r in runs if r.state is StateType.FAILED and r.id not in inputs.killed_runs]
    figures["failed_after_running"] = sum(1 for r in failed if ends[r.id])
    figures["failed_healthy"] = len(failed)
    return dict(figures)


def _history_figures(runs: list[RunRow], history: list[HistoryRow], task_runs: list[TaskRunRow]) -> dict[str, int]:
    figures: collections.Counter[str] = collections.Counter()
    versions: dict[tuple[str, str | None], list[int]] = collections.defaultdict(list)
    tails: dict[tuple[str, str | None], HistoryRow] = {}
    for h in history:
        key = (h.flow_run_id, h.task_run_id)
        versions[key].append(h.version)
        if key not in tails or h.version >= tails[key].version:
            tails[key] = h
    for (_, task_run_id), seen in versions.items():
        gap, duplicate = _contiguous(seen, 2 if task_run_id else 1)
        figures["history_gaps"] += gap
        figures["history_duplicates"] += duplicate
    figures["history_gaps"] += sum(1 for r in runs if (r.id, None) not in versions)
    for r in runs:
        tail = tails.get((r.id, None))
        figures["history_tail_mismatch"] += tail is not None and (tail.type, tail.version) != (r.state.value, r.version)
    for t in task_runs:
        tail = tails.get((t.flow_run_id, t.id))
        if tail is None:
            figures["history_tail_mismatch"] += t.version != 1  # one that never changed state has no history
        else:
            figures["history_tail_mismatch"] += (tail.type, tail.version) != (t.state, t.version)
    return dict(figures)


def _event_figures(
    runs: list[RunRow], history: list[HistoryRow], events: list[tuple[str, str, dict[str, Any]]]
) -> dict[str, int]:
    ids = {r.id for r in runs}
    mine = [e for e in events if e[0] in ids]
    created = collections.Counter(run_id for run_id, fact, _ in mine if fact == subjects.FlowRunFact.CREATED)
    published = collections.Counter(
        (run_id, payload.get("task_run_id"), payload["state"]["type"], payload["version"])
        for run_id, fact, payload in mine
        if fact in (subjects.FlowRunFact.STATE, subjects.FlowRunFact.TASK_STATE)
    )
    recorded = collections.Counter((h.flow_run_id, h.task_run_id, h.type, h.version) for h in history)
    return {
        "events_missing": sum((recorded - published).values()) + sum(1 for r in runs if not created[r.id]),
        "events_extra": sum((published - recorded).values()) + sum(n - 1 for n in created.values() if n > 1),
    }


def final_states(runs: Iterable[RunRow]) -> dict[str, int]:
    return dict(sorted(collections.Counter(r.state.value for r in runs).items()))


def failure_messages(runs: Iterable[RunRow]) -> dict[str, int]:
    """How many runs ended Failed with each message (the first 120 characters): why they failed."""
    return dict(collections.Counter((r.message or "")[:120] for r in runs if r.state is StateType.FAILED))


def nonzero(summary: Mapping[str, Any], names: Iterable[str]) -> dict[str, Any]:
    """The figures among ``names`` that are not zero: what a probe asserts is empty."""
    return {name: summary[name] for name in names if summary.get(name)}


def summarize(
    probe: str,
    figures: Mapping[str, int],
    runs: Sequence[RunRow],
    load: Load | None,
    *,
    kills: int,
    recovery: Sequence[Mapping[str, Any]],
    seconds: float,
    direct: int = 0,
    **extra: Any,
) -> dict[str, Any]:
    """A probe's JSON summary: its figures, then what explains them (reported, never asserted).
    ``direct``: runs the probe created itself, besides the load generator's."""
    summary: dict[str, Any] = {
        "probe": probe,
        "runs": len(runs),
        "kills": kills,
        "acknowledged": direct + (sum(1 for run_id in load.acked.values() if run_id) if load else 0),
        "acknowledged_after_retry": sum(1 for n in load.attempts.values() if n > 1) if load else 0,
        **figures,
        "recovery": [dict(kill) for kill in recovery],
        "final_states": final_states(runs),
        "failed_because": failure_messages(runs),
        "client_errors": dict(load.errors) if load else {},
        "seconds": round(seconds, 1),
    }
    summary.update(extra)
    return summary


def record_and_check(summary: dict[str, Any], checked: Sequence[str] = ()) -> None:
    """Add the summary to the report, then fail unless every figure (``RUN_FIGURES`` and ``checked``) is zero."""
    summary["checked"] = list(checked)
    REPORT.add(summary)
    failing = nonzero(summary, (*RUN_FIGURES, *checked))
    assert not failing, f"{summary['probe']}: {failing}\n{json.dumps(summary, indent=2)}"


class ChaosReport:
    """Every probe's JSON summary, and their sums: written where ``CHAOS_REPORT`` says."""

    def __init__(self) -> None:
        self.probes: list[dict[str, Any]] = []
        self.default_path = Path("chaos-report.json")  # the tier sets its session's temporary folder

    def add(self, summary: dict[str, Any]) -> None:
        self.probes.append(summary)

    def combined(self) -> dict[str, Any]:
        totals: collections.Counter[str] = collections.Counter()
        for probe in self.probes:
            for name in (*RUN_FIGURES, "runs", "kills", "acknowledged", *probe.get("checked", ())):
                value = probe.get(name)
                if isinstance(value, int) and not isinstance(value, bool):
                    totals[name] += value
        checked = sorted({name for probe in self.probes for name in (*RUN_FIGURES, *probe.get("checked", ()))})
        failing = {name: totals[name] for name in checked if totals[name]}
        recovery = [{"probe": probe["probe"], **kill} for probe in self.probes for kill in probe.get("recovery", [])]
        return {
            "scale": chaos_scale(),
            "probes": len(self.probes),
            "ok": not failing,
            "failing": failing,
            "totals": dict(totals),
            "recovery": recovery,
            "per_probe": self.probes,
        }

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.combined(), indent=2) + "\n")


REPORT = ChaosReport()


def chaos_scale() -> int:
    """CHAOS_SCALE (default 1): what multiplies each probe's runs, kills and durations."""
    raw = os.environ.get("CHAOS_SCALE", "1").strip() or "1"
    try:
        scale = int(raw)
    except ValueError:
        raise ValueError(f"CHAOS_SCALE must be a whole number of at least 1, got {raw!r}") from None
    if scale < 1:
        raise ValueError(f"CHAOS_SCALE must be a whole number of at least 1, got {raw!r}")
    return scale
