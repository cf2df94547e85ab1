"""The transition rules: the one place that says whether a run may change
state and what an accepted change does.

``RULES`` is an ordered list. Each rule names the run kinds, the from-states
and the to-states it applies to; it may refuse the change (``Conflict``) and
it lists the effects of an accepted one (``Effect``). The rules are compiled
at import into one plan per (kind, from, to), so ``decide`` costs a lookup on
the hot path. ``transitions.py`` loads and writes the rows and applies the
effects; the version check (optimistic locking) happens there, before the
rules, because it needs the stored row.
See docs/architecture.md, "State transitions". Reads and writes no subject.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum, StrEnum

from flowbus.schemas.common import Conflict
from flowbus.schemas.runs import StateSpec
from flowbus.states import CANCELLED_MESSAGE, StateType, is_a, is_active_task_run, is_failed, is_finished


class RunKind(StrEnum):
    FLOW_RUN = "flow run"
    TASK_RUN = "task run"


class Effect(Enum):
    """What an accepted change does besides setting the state."""

    RECORD_AGENT = "record the claiming agent"
    CLEAR_END_TIME = "clear end_time: an explicit re-run starts over"
    SET_START_TIME = "set start_time, unless an earlier Running set it"
    SET_END_TIME = "set end_time"
    CANCEL_TASK_RUNS = "cancel the unfinished task runs"
    FAIL_TASK_RUNS = "retry or fail the Running and Retrying task runs"
    REQUEUE_IF_DUE = "queue the run again on its run queue when it is due"
    # A Lazarus resurrection's own two (``resurrection_effects``), not in RULES:
    # they follow the command's flag, not the (from, to) pair.
    COUNT_RESURRECTION = "add one to times_resurrected"
    RESTART_TASK_RUNS = "send the finished task runs back to Scheduled"


CASCADES = (Effect.CANCEL_TASK_RUNS, Effect.FAIL_TASK_RUNS, Effect.RESTART_TASK_RUNS)

ANY = frozenset(StateType)
FINISHED = frozenset(t for t in StateType if is_finished(t))
FAILED = frozenset(t for t in StateType if is_failed(t))
CLAIMABLE = frozenset({*(t for t in StateType if is_a(t, StateType.SCHEDULED)), StateType.QUEUED})
BOTH_KINDS = frozenset(RunKind)
FLOW_RUNS = frozenset({RunKind.FLOW_RUN})
TASK_RUNS = frozenset({RunKind.TASK_RUN})

CANCELLING_MESSAGE = "Flow run is being cancelled."
TASK_FAILED_MESSAGE = "Flow run failed."
TASK_RETRYING_MESSAGE = "Flow run failed; the task run has retries left."
RESURRECTED_MESSAGE = "Rescheduled by a Lazarus process."


@dataclass(frozen=True, slots=True)
class Proposal:
    kind: RunKind
    run_id: str
    current: StateType
    target: StateType
    # For a task run: the state of its flow run.
    flow_run_state: StateType | None = None


Check = Callable[[Proposal], None]


@dataclass(frozen=True)
class Rule:
    """Applies to a change of a run of ``kinds`` from one of ``from_states``
    to one of ``to_states``; ``check`` raises ``Conflict`` to refuse it."""

    doc: str
    kinds: frozenset[RunKind]
    from_states: frozenset[StateType]
    to_states: frozenset[StateType]
    check: Check | None = None
    effects: tuple[Effect, ...] = ()

    def applies(self, kind: RunKind, current: StateType, target: StateType) -> bool:
        return kind in self.kinds and current in self.from_states and target in self.to_states


def refuse_leaving_finished(p: Proposal) -> None:
    raise Conflict(
        f"{p.kind.capitalize()} {p.run_id} is already finished ({p.current.value}); it cannot enter {p.target.value}."
    )


def refuse_second_claim(p: Proposal) -> None:
    raise Conflict(f"{p.kind.capitalize()} {p.run_id} was already claimed ({p.current.value}).")


def task_runs_inside_running_flow_run(p: Proposal) -> None:
    if p.flow_run_state is None or not is_a(p.flow_run_state, StateType.RUNNING):
        state = p.flow_run_state.value if p.flow_run_state else "unknown"
        raise Conflict(f"Task run {p.run_id} cannot run while its flow run is {state}.")


RULES: tuple[Rule, ...] = (
    # Refusals, in the order their messages win.
    Rule(
        "A finished run stays finished, except an explicit re-run to Scheduled.",
        BOTH_KINDS,
        FINISHED - FAILED,
        ANY - {StateType.SCHEDULED},
        check=refuse_leaving_finished,
    ),
    Rule(
        "A failed run stays failed, except a re-run to Scheduled, or a task run's"
        " retry (Prefect 1.x's runner sets Failed, then Retrying).",
        BOTH_KINDS,
        FAILED,
        ANY - {StateType.SCHEDULED, StateType.RETRYING},
        check=refuse_leaving_finished,
    ),
    Rule(
        "Only a task run retries after it failed.",
        FLOW_RUNS,
        FAILED,
        frozenset({StateType.RETRYING}),
        check=refuse_leaving_finished,
    ),
    Rule(
        "A failed task run retries only while its flow run runs.",
        TASK_RUNS,
        FAILED,
        frozenset({StateType.RETRYING}),
        check=task_runs_inside_running_flow_run,
    ),
    Rule(
        "One agent claims a run: Submitted only from a Scheduled (or Queued) state.",
        BOTH_KINDS,
        ANY - CLAIMABLE,
        frozenset({StateType.SUBMITTED}),
        check=refuse_second_claim,
    ),
    Rule(
        "A task run runs only while its flow run runs.",
        TASK_RUNS,
        ANY,
        frozenset({StateType.RUNNING}),
        check=task_runs_inside_running_flow_run,
    ),
    # Effects, in the order they apply.
    Rule(
        "Submitted records the claiming agent.",
        FLOW_RUNS,
        ANY,
        frozenset({StateType.SUBMITTED}),
        effects=(Effect.RECORD_AGENT,),
    ),
    Rule(
        "Scheduled starts a run over, and queues it again when it is due.",
        FLOW_RUNS,
        ANY,
        frozenset({StateType.SCHEDULED}),
        effects=(Effect.CLEAR_END_TIME, Effect.REQUEUE_IF_DUE),
    ),
    Rule(
        "A task run retried after it failed is no longer finished.",
        TASK_RUNS,
        FAILED,
        frozenset({StateType.RETRYING}),
        effects=(Effect.CLEAR_END_TIME,),
    ),
    Rule(
        "The first Running sets start_time.",
        BOTH_KINDS,
        ANY,
        frozenset({StateType.RUNNING}),
        effects=(Effect.SET_START_TIME,),
    ),
    Rule("A finished state sets end_time.", BOTH_KINDS, ANY, FINISHED, effects=(Effect.SET_END_TIME,)),
    Rule(
        "Cancelled cancels the flow run's unfinished task runs.",
        FLOW_RUNS,
        ANY,
        frozenset({StateType.CANCELLED}),
        effects=(Effect.CANCEL_TASK_RUNS,),
    ),
    Rule(
        "Failed retries the flow run's Running task runs that have retries left,"
        " and fails those (Running or Retrying) that have none.",
        FLOW_RUNS,
        ANY,
        FAILED,
        effects=(Effect.FAIL_TASK_RUNS,),
    ),
)


@dataclass(frozen=True, slots=True)
class Plan:
    """The rules of one (kind, from, to): the refusals to check, then the effects."""

    checks: tuple[Check, ...]
    effects: tuple[Effect, ...]


def _compile(rules: Iterable[Rule]) -> dict[RunKind, dict[StateType, dict[StateType, Plan]]]:
    rules = tuple(rules)
    plans: dict[RunKind, dict[StateType, dict[StateType, Plan]]] = {}
    shared: dict[Plan, Plan] = {}
    for kind in RunKind:
        for current in StateType:
            for target in StateType:
                applying = [r for r in rules if r.applies(kind, current, target)]
                found = Plan(
                    checks=tuple(r.check for r in applying if r.check is not None),
                    effects=tuple(e for r in applying for e in r.effects),
                )
                plans.setdefault(kind, {}).setdefault(current, {})[target] = shared.setdefault(found, found)
    return plans


_PLANS = _compile(RULES)


def decide(
    kind: RunKind, run_id: str, current: StateType, target: StateType, flow_run_state: StateType | None = None
) -> tuple[Effect, ...]:
    """Raise ``Conflict`` when the rules refuse the change; else its effects, in order.

    ``flow_run_state``: for a task run, the state of its flow run.
    """
    found = _PLANS[kind][current][target]
    if found.checks:  # most changes have none: no proposal to build
        proposal = Proposal(kind, run_id, current, target, flow_run_state)
        for refuse in found.checks:
            refuse(proposal)
    return found.effects


# ---- Lazarus ------------------------------------------------------------------

# What Lazarus resurrects: a run claimed or started whose runner is gone.
RESURRECTABLE = frozenset({StateType.SUBMITTED, StateType.RUNNING})


def resurrection_effects(run_id: str, current: StateType, task_run_states: Iterable[StateType]) -> tuple[Effect, ...]:
    """Raise ``Conflict`` unless the flow run may be resurrected; else the
    effects a resurrection adds to those of its Scheduled.

    Checked again here, in the writing transaction, because a runner may have
    started a task run since Lazarus read the run (a task run's change does
    not move its flow run's version).
    """
    if current not in RESURRECTABLE:
        raise Conflict(f"Flow run {run_id} is {current.value}; only a Submitted or Running run can be resurrected.")
    active = sorted({s.value for s in task_run_states if is_active_task_run(s)})
    if active:
        raise Conflict(f"Flow run {run_id} has an active task run ({', '.join(active)}); it is not resurrected.")
    return (Effect.COUNT_RESURRECTION, Effect.RESTART_TASK_RUNS)


# ---- what the commands and cascades propose -------------------------------------

_CANCELLING = (StateType.CANCELLING, CANCELLING_MESSAGE)
_CANCELLED = (StateType.CANCELLED, CANCELLED_MESSAGE)


def cancel_target(current: StateType) -> tuple[StateType, str] | None:
    """What cancelling a flow run in ``current`` proposes, with its default
    message: nothing for a finished or Cancelling run, Cancelling for a
    running one (its runner stops the flow), else Cancelled."""
    if is_finished(current) or current is StateType.CANCELLING:
        return None
    return _CANCELLING if is_a(current, StateType.RUNNING) else _CANCELLED


def has_retries_left(max_retries: int, run_count: int) -> bool:
    """``run_count``: the task run's Running entries, the last (dead) run
    included, so the retries used so far are ``run_count - 1``."""
    return run_count <= max_retries


_TASK_CANCELLED = StateSpec(type=StateType.CANCELLED, message=CANCELLED_MESSAGE)
_TASK_FAILED = StateSpec(type=StateType.FAILED, message=TASK_FAILED_MESSAGE)
_TASK_RETRYING = StateSpec(type=StateType.RETRYING, message=TASK_RETRYING_MESSAGE)
_TASK_RESCHEDULED = StateSpec(type=StateType.SCHEDULED, message=RESURRECTED_MESSAGE)


def cascaded_state(cascade: Effect, task_run_state: StateType, max_retries: int, run_count: int) -> StateSpec | None:
    """What a flow run's ``cascade`` does to one of its task runs; None: it is left as it is.

    A Retrying task run that still has its retry keeps it: it is Retrying already.
    """
    if cascade is Effect.CANCEL_TASK_RUNS:
        return None if is_finished(task_run_state) else _TASK_CANCELLED
    if cascade is Effect.RESTART_TASK_RUNS:
        # The next attempt runs every task again: a finished task run would
        # refuse its Running. Pending and Scheduled ones can run as they are.
        return _TASK_RESCHEDULED if is_finished(task_run_state) else None
    if task_run_state is not StateType.RUNNING and task_run_state is not StateType.RETRYING:
        return None
    if not has_retries_left(max_retries, run_count):
        return _TASK_FAILED
    return _TASK_RETRYING if task_run_state is StateType.RUNNING else None
