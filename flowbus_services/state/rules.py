"""The ordered transition rules: the one place that decides whether a state
change is allowed (SEMANTICS.md, "Setting states").

Each rule is a small named function that raises ``Conflict`` to refuse.
The version check (optimistic locking) happens before the rules, in the
use case, because it needs the stored row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from flowbus.schemas.common import Conflict
from flowbus.states import StateType, is_a, is_finished


@dataclass(frozen=True)
class Proposal:
    kind: str  # "flow run" or "task run"
    run_id: str
    current: StateType
    target: StateType
    # For a task run: the state of its flow run.
    flow_run_state: StateType | None = None


def leave_finished_only_to_rerun(p: Proposal) -> None:
    """A finished run stays finished, except an explicit re-run to Scheduled."""
    if is_finished(p.current) and p.target is not StateType.SCHEDULED:
        raise Conflict(
            f"{p.kind.capitalize()} {p.run_id} is already finished ({p.current.value}); "
            f"it cannot enter {p.target.value}."
        )


def claim_once(p: Proposal) -> None:
    """One agent claims a run: Submitted only from a Scheduled (or Queued) state."""
    if p.target is StateType.SUBMITTED and not (is_a(p.current, StateType.SCHEDULED) or p.current is StateType.QUEUED):
        raise Conflict(f"{p.kind.capitalize()} {p.run_id} was already claimed ({p.current.value}).")


def task_runs_inside_running_flow_run(p: Proposal) -> None:
    if (
        p.kind == "task run"
        and p.target is StateType.RUNNING
        and (p.flow_run_state is None or not is_a(p.flow_run_state, StateType.RUNNING))
    ):
        state = p.flow_run_state.value if p.flow_run_state else "unknown"
        raise Conflict(f"Task run {p.run_id} cannot run while its flow run is {state}.")


RULES: tuple[Callable[[Proposal], None], ...] = (
    leave_finished_only_to_rerun,
    claim_once,
    task_runs_inside_running_flow_run,
)


def check(proposal: Proposal) -> None:
    for rule in RULES:
        rule(proposal)
