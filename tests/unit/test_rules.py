"""The transition rules (services/state/rules.py): for every (from, to) pair
of state types, whether the change is allowed and which effects it has; what
a cancel proposes; what a flow run's cascade does to a task run."""

from __future__ import annotations

import itertools

import pytest

from flowbus.schemas.common import Conflict
from flowbus.states import StateType
from flowbus_services.state.rules import (
    RESURRECTED_MESSAGE,
    Effect,
    RunKind,
    cancel_target,
    cascaded_state,
    decide,
    resurrection_effects,
)

S = StateType
# Spelled out rather than derived from flowbus.states, so that a change of the
# hierarchy shows up here as a change of the rules.
CLAIMABLE = {S.SCHEDULED, S.PAUSED, S.RESUME, S.RETRYING, S.QUEUED}
FAILED = {S.FAILED, S.TIMED_OUT, S.TRIGGER_FAILED, S.VALIDATION_FAILED}
FINISHED = {S.FINISHED, S.SUCCESS, S.CACHED, S.SKIPPED, S.MAPPED, S.CANCELLED, S.LOOPED, *FAILED}
RUNNING = {S.RUNNING, S.CANCELLING}
PAIRS = [pytest.param(a, b, id=f"{a.value}->{b.value}") for a, b in itertools.product(StateType, StateType)]


def refusal(current: StateType, target: StateType, task_run: bool = False) -> str | None:
    """The refusal the rules give first, as a fragment of its message."""
    retry = task_run and current in FAILED and target is S.RETRYING
    if current in FINISHED and target is not S.SCHEDULED and not retry:
        return f"is already finished \\({current.value}\\); it cannot enter {target.value}"
    if target is S.SUBMITTED and current not in CLAIMABLE:
        return f"was already claimed \\({current.value}\\)"
    return None


def flow_run_effects(target: StateType) -> tuple[Effect, ...]:
    if target is S.SUBMITTED:
        return (Effect.RECORD_AGENT,)
    if target is S.SCHEDULED:
        return (Effect.CLEAR_END_TIME, Effect.REQUEUE_IF_DUE)
    if target is S.RUNNING:
        return (Effect.SET_START_TIME,)
    if target is S.CANCELLED:
        return (Effect.SET_END_TIME, Effect.CANCEL_TASK_RUNS)
    if target in FAILED:
        return (Effect.SET_END_TIME, Effect.FAIL_TASK_RUNS)
    return (Effect.SET_END_TIME,) if target in FINISHED else ()


def task_run_effects(target: StateType, current: StateType | None = None) -> tuple[Effect, ...]:
    if target is S.RETRYING and current in FAILED:
        return (Effect.CLEAR_END_TIME,)
    if target is S.RUNNING:
        return (Effect.SET_START_TIME,)
    return (Effect.SET_END_TIME,) if target in FINISHED else ()


@pytest.mark.parametrize(("current", "target"), PAIRS)
def test_a_flow_run_change(current: StateType, target: StateType) -> None:
    refused = refusal(current, target)
    if refused is not None:
        with pytest.raises(Conflict, match=f"^Flow run r {refused}"):
            decide(RunKind.FLOW_RUN, "r", current, target)
    else:
        assert decide(RunKind.FLOW_RUN, "r", current, target) == flow_run_effects(target)


@pytest.mark.parametrize(("current", "target"), PAIRS)
def test_a_task_run_change_inside_a_running_flow_run(current: StateType, target: StateType) -> None:
    refused = refusal(current, target, task_run=True)
    if refused is not None:
        with pytest.raises(Conflict, match=f"^Task run t {refused}"):
            decide(RunKind.TASK_RUN, "t", current, target, S.RUNNING)
    else:
        assert decide(RunKind.TASK_RUN, "t", current, target, S.RUNNING) == task_run_effects(target, current)


@pytest.mark.parametrize("flow_run_state", [*StateType, None], ids=lambda s: s.value if s else "unknown")
def test_a_task_run_runs_only_while_its_flow_run_runs(flow_run_state: StateType | None) -> None:
    if flow_run_state in RUNNING:
        assert decide(RunKind.TASK_RUN, "t", S.PENDING, S.RUNNING, flow_run_state) == (Effect.SET_START_TIME,)
    else:
        shown = flow_run_state.value if flow_run_state else "unknown"
        with pytest.raises(Conflict, match=f"^Task run t cannot run while its flow run is {shown}.$"):
            decide(RunKind.TASK_RUN, "t", S.PENDING, S.RUNNING, flow_run_state)


@pytest.mark.parametrize("flow_run_state", [*StateType, None], ids=lambda s: s.value if s else "unknown")
def test_a_failed_task_run_retries_only_while_its_flow_run_runs(flow_run_state: StateType | None) -> None:
    if flow_run_state in RUNNING:
        assert decide(RunKind.TASK_RUN, "t", S.FAILED, S.RETRYING, flow_run_state) == (Effect.CLEAR_END_TIME,)
    else:
        shown = flow_run_state.value if flow_run_state else "unknown"
        with pytest.raises(Conflict, match=f"^Task run t cannot run while its flow run is {shown}.$"):
            decide(RunKind.TASK_RUN, "t", S.FAILED, S.RETRYING, flow_run_state)


def test_the_first_refusal_wins() -> None:
    # Finished and already claimed: the finished rule comes first.
    with pytest.raises(Conflict, match="already finished"):
        decide(RunKind.FLOW_RUN, "r", S.SUCCESS, S.SUBMITTED)
    with pytest.raises(Conflict, match="already finished"):
        decide(RunKind.TASK_RUN, "t", S.FAILED, S.RUNNING, S.SUBMITTED)


@pytest.mark.parametrize("current", list(StateType), ids=lambda s: s.value)
def test_what_a_cancel_proposes(current: StateType) -> None:
    proposed = cancel_target(current)
    if current in FINISHED or current is S.CANCELLING:
        assert proposed is None
    elif current is S.RUNNING:
        assert proposed == (S.CANCELLING, "Flow run is being cancelled.")
    else:
        assert proposed == (S.CANCELLED, "Flow run was cancelled.")


@pytest.mark.parametrize("current", list(StateType), ids=lambda s: s.value)
def test_cancelled_cancels_every_unfinished_task_run(current: StateType) -> None:
    spec = cascaded_state(Effect.CANCEL_TASK_RUNS, current, max_retries=3, run_count=1)
    if current in FINISHED:
        assert spec is None
    else:
        assert spec is not None
        assert (spec.type, spec.message) == (S.CANCELLED, "Flow run was cancelled.")


@pytest.mark.parametrize("current", list(StateType), ids=lambda s: s.value)
@pytest.mark.parametrize(
    ("max_retries", "run_count", "left"),
    [(0, 1, False), (1, 1, True), (1, 2, False), (2, 2, True), (2, 3, False)],
    ids=lambda v: str(v),
)
def test_failed_retries_or_fails_the_running_and_retrying_task_runs(
    current: StateType, max_retries: int, run_count: int, left: bool
) -> None:
    spec = cascaded_state(Effect.FAIL_TASK_RUNS, current, max_retries, run_count)
    if current not in (S.RUNNING, S.RETRYING) or (current is S.RETRYING and left):
        assert spec is None  # untouched; a Retrying task run keeps the retry it has
    elif left:
        assert spec is not None
        assert (spec.type, spec.message) == (S.RETRYING, "Flow run failed; the task run has retries left.")
    else:
        assert spec is not None
        assert (spec.type, spec.message) == (S.FAILED, "Flow run failed.")


@pytest.mark.parametrize("current", list(StateType), ids=lambda s: s.value)
def test_a_resurrection_takes_a_submitted_or_running_flow_run(current: StateType) -> None:
    if current in {S.SUBMITTED, S.RUNNING}:
        assert resurrection_effects("fr", current, [S.PENDING, S.SUCCESS, S.SCHEDULED, S.FAILED]) == (
            Effect.COUNT_RESURRECTION,
            Effect.RESTART_TASK_RUNS,
        )
    else:
        with pytest.raises(Conflict, match="only a Submitted or Running run"):
            resurrection_effects("fr", current, [])


@pytest.mark.parametrize("task_run_state", list(StateType), ids=lambda s: s.value)
def test_a_resurrection_is_refused_while_a_task_run_is_active(task_run_state: StateType) -> None:
    if task_run_state in {*RUNNING, S.RETRYING}:
        with pytest.raises(Conflict, match=f"active task run \\({task_run_state.value}\\)"):
            resurrection_effects("fr", S.RUNNING, [S.SUCCESS, task_run_state])
    else:
        assert resurrection_effects("fr", S.RUNNING, [task_run_state])


@pytest.mark.parametrize("current", list(StateType), ids=lambda s: s.value)
def test_a_resurrection_sends_the_finished_task_runs_back_to_scheduled(current: StateType) -> None:
    spec = cascaded_state(Effect.RESTART_TASK_RUNS, current, max_retries=0, run_count=1)
    if current in FINISHED:
        assert spec is not None
        assert (spec.type, spec.message) == (S.SCHEDULED, RESURRECTED_MESSAGE)
        assert decide(RunKind.TASK_RUN, "tr", current, spec.type, S.SCHEDULED) == ()
    else:
        assert spec is None
