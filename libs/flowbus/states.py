"""The state hierarchy of flow and task runs (SEMANTICS.md, "States").

Pure data: which state types exist, their parents, and the predicates the
state service's transition rules and the runner ask of them.
"""

from __future__ import annotations

from enum import StrEnum


class StateType(StrEnum):
    PENDING = "Pending"
    SCHEDULED = "Scheduled"
    PAUSED = "Paused"
    RESUME = "Resume"
    RETRYING = "Retrying"
    QUEUED = "Queued"
    SUBMITTED = "Submitted"
    RUNNING = "Running"
    CANCELLING = "Cancelling"
    FINISHED = "Finished"
    SUCCESS = "Success"
    CACHED = "Cached"
    SKIPPED = "Skipped"
    MAPPED = "Mapped"
    FAILED = "Failed"
    TIMED_OUT = "TimedOut"
    TRIGGER_FAILED = "TriggerFailed"
    VALIDATION_FAILED = "ValidationFailed"
    CANCELLED = "Cancelled"
    LOOPED = "Looped"


PARENT: dict[StateType, StateType | None] = {
    StateType.PENDING: None,
    StateType.SCHEDULED: StateType.PENDING,
    StateType.PAUSED: StateType.SCHEDULED,
    StateType.RESUME: StateType.SCHEDULED,
    StateType.RETRYING: StateType.SCHEDULED,
    StateType.QUEUED: StateType.PENDING,
    StateType.SUBMITTED: StateType.PENDING,
    StateType.RUNNING: None,
    StateType.CANCELLING: StateType.RUNNING,
    StateType.FINISHED: None,
    StateType.SUCCESS: StateType.FINISHED,
    StateType.CACHED: StateType.SUCCESS,
    StateType.SKIPPED: StateType.SUCCESS,
    StateType.MAPPED: StateType.SUCCESS,
    StateType.FAILED: StateType.FINISHED,
    StateType.TIMED_OUT: StateType.FAILED,
    StateType.TRIGGER_FAILED: StateType.FAILED,
    StateType.VALIDATION_FAILED: StateType.FAILED,
    StateType.CANCELLED: StateType.FINISHED,
    StateType.LOOPED: StateType.FINISHED,
}


def is_a(state: StateType, ancestor: StateType) -> bool:
    """True when ``state`` is ``ancestor`` or one of its subtypes."""
    current: StateType | None = state
    while current is not None:
        if current is ancestor:
            return True
        current = PARENT[current]
    return False


def is_finished(state: StateType) -> bool:
    return is_a(state, StateType.FINISHED)


def is_failed(state: StateType) -> bool:
    return is_a(state, StateType.FAILED)


def is_running(state: StateType) -> bool:
    return is_a(state, StateType.RUNNING)
