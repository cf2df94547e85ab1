"""The state hierarchy of flow and task runs (docs/semantics.md, "States").

Pure data: which state types exist, their parents, the predicates the
state service's transition rules and the runner ask of them, and one small
class per state type for users to pass to the client
(``client.set_flow_run_state(run_id, version, Success(message="It worked!"))``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar


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


def is_active_task_run(state: StateType) -> bool:
    """A task run a live runner may be working on: Running (or Cancelling), or
    Retrying (the runner waits out its retry delay). Lazarus leaves a flow run
    with one alone; the state service refuses to resurrect it."""
    return is_running(state) or state is StateType.RETRYING


ACTIVE_TASK_RUN_STATES: frozenset[StateType] = frozenset(t for t in StateType if is_active_task_run(t))


# The message of a cancelled run, written by the state service (a cancel, and
# the task runs it cancels) and by the agent and runner that end a Cancelling run.
CANCELLED_MESSAGE = "Flow run was cancelled."


# ---- state objects -------------------------------------------------------------
#
# What users hand to ``Client.set_flow_run_state``: ``Success(message="It worked!")``.
# The classes mirror the hierarchy, so ``isinstance(Cached(), Success)`` holds.


@dataclass(frozen=True)
class State:
    """A state to set: its type (fixed by the class), a message and a JSON result."""

    type: ClassVar[StateType]
    message: str | None = None
    result: Any = None

    @staticmethod
    def of(state_type: StateType | str, message: str | None = None, result: Any = None) -> State:
        """The state object of a type: ``State.of("Success", "done")`` is ``Success("done")``."""
        return STATE_CLASSES[StateType(state_type)](message=message, result=result)

    def is_finished(self) -> bool:
        return is_finished(self.type)

    def is_failed(self) -> bool:
        return is_failed(self.type)

    def is_running(self) -> bool:
        return is_running(self.type)

    def is_successful(self) -> bool:
        return is_a(self.type, StateType.SUCCESS)


class Pending(State):
    type = StateType.PENDING


class Scheduled(Pending):
    type = StateType.SCHEDULED


class Paused(Scheduled):
    type = StateType.PAUSED


class Resume(Scheduled):
    type = StateType.RESUME


class Retrying(Scheduled):
    type = StateType.RETRYING


class Queued(Pending):
    type = StateType.QUEUED


class Submitted(Pending):
    type = StateType.SUBMITTED


class Running(State):
    type = StateType.RUNNING


class Cancelling(Running):
    type = StateType.CANCELLING


class Finished(State):
    type = StateType.FINISHED


class Success(Finished):
    type = StateType.SUCCESS


class Cached(Success):
    type = StateType.CACHED


class Skipped(Success):
    type = StateType.SKIPPED


class Mapped(Success):
    type = StateType.MAPPED


class Failed(Finished):
    type = StateType.FAILED


class TimedOut(Failed):
    type = StateType.TIMED_OUT


class TriggerFailed(Failed):
    type = StateType.TRIGGER_FAILED


class ValidationFailed(Failed):
    type = StateType.VALIDATION_FAILED


class Cancelled(Finished):
    type = StateType.CANCELLED


class Looped(Finished):
    type = StateType.LOOPED


STATE_CLASSES: dict[StateType, type[State]] = {
    cls.type: cls
    for cls in (
        Pending,
        Scheduled,
        Paused,
        Resume,
        Retrying,
        Queued,
        Submitted,
        Running,
        Cancelling,
        Finished,
        Success,
        Cached,
        Skipped,
        Mapped,
        Failed,
        TimedOut,
        TriggerFailed,
        ValidationFailed,
        Cancelled,
        Looped,
    )
}
