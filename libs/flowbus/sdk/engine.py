"""Executing a flow's tasks in dependency order, in this process.

Used by ``Flow.run()`` (no backend) and by the runner (an agent's, or
``flowbus run --execute``), which passes hooks that report each task-run
state to the state service. A hook may answer False to stop the run
(version locking: another runner owns it).

Context: the caller's scope (the runner adds the run's ids, name and
``scheduled_start_time``) plus, here, ``parameters``, ``flow_name``,
``scheduled_start_time`` (now when the caller gave none), ``date``, ``today``
and, per task, ``logger``, ``task_name``, ``task_slug``, ``task_tags``,
``task_run_count`` and whatever ``hooks.task_scope`` adds (``task_run_id``).

A task that raises an ``Exception`` fails (or is retried); anything else
(``KeyboardInterrupt``, ``SystemExit``) is a crash of the flow's process and
propagates: the runner ends the run Failed.
"""

from __future__ import annotations

import logging
import time
import traceback
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from flowbus.sdk import context
from flowbus.sdk.flow import TaskRef
from flowbus.states import StateType

if TYPE_CHECKING:
    from flowbus.sdk.flow import Flow


class Hooks(Protocol):
    def task_state(self, slug: str, state: StateType, message: str | None) -> bool: ...

    def task_scope(self, slug: str) -> dict[str, Any]: ...


class LocalHooks:
    def task_state(self, slug: str, state: StateType, message: str | None) -> bool:
        return True

    def task_scope(self, slug: str) -> dict[str, Any]:
        return {}


@dataclass
class FlowResult:
    state: StateType
    message: str
    results: dict[str, Any]
    states: dict[str, StateType]

    @property
    def is_successful(self) -> bool:
        return self.state is StateType.SUCCESS


class RunAbandoned(Exception):
    """A hook refused a state: another writer owns this run."""


def run_flow(flow: Flow, parameters: dict[str, Any], hooks: Hooks) -> FlowResult:
    results: dict[str, Any] = {}
    states: dict[str, StateType] = {}
    downstream_of: set[str] = set()
    # 1.x's keys: the scheduled start (a run without the backend starts now) and its UTC date.
    scheduled = context.get("scheduled_start_time") or datetime.now(UTC)
    with context.scope(
        parameters=parameters,
        flow_name=flow.name,
        scheduled_start_time=scheduled,
        date=scheduled,
        today=scheduled.astimezone(UTC).strftime("%Y-%m-%d"),
    ):
        for node in flow.sorted_nodes():
            upstream = node.upstreams()
            downstream_of.update(u for u, _ in upstream)
            failed_up = [u for u, _ in upstream if states.get(u) is not StateType.SUCCESS]
            if failed_up:
                states[node.slug] = StateType.TRIGGER_FAILED
                _report(hooks, node.slug, StateType.TRIGGER_FAILED, f"Upstream tasks did not succeed: {failed_up}")
                continue
            args = [results[a.slug] if isinstance(a, TaskRef) else a for a in node.args]
            kwargs = {k: results[v.slug] if isinstance(v, TaskRef) else v for k, v in node.kwargs.items()}
            logger = logging.getLogger(f"flowbus.task.{node.task.name}")
            with context.scope(
                logger=logger,
                task_name=node.task.name,
                task_slug=node.slug,
                task_tags=node.task.tags,
                **hooks.task_scope(node.slug),
            ):
                states[node.slug], results[node.slug] = _run_task(node.slug, node.task, args, kwargs, hooks, logger)
    terminal = [slug for slug in flow.nodes if slug not in downstream_of]
    if all(states.get(slug) is StateType.SUCCESS for slug in terminal):
        return FlowResult(StateType.SUCCESS, "All reference tasks succeeded.", results, states)
    return FlowResult(StateType.FAILED, "Some reference tasks failed.", results, states)


def _report(hooks: Hooks, slug: str, state: StateType, message: str | None) -> None:
    if not hooks.task_state(slug, state, message):
        raise RunAbandoned(f"task {slug}: state {state.value} refused")


def _run_task(
    slug: str, task: Any, args: list[Any], kwargs: dict[str, Any], hooks: Hooks, logger: logging.Logger
) -> tuple[StateType, Any]:
    attempt = 0
    while True:
        _report(hooks, slug, StateType.RUNNING, "Starting task run.")
        try:
            with context.scope(task_run_count=attempt + 1):
                value = task.run(*args, **kwargs)
        except RunAbandoned:
            raise
        except Exception as exc:
            logger.error("Task %r failed: %s\n%s", slug, exc, traceback.format_exc())
            if attempt < task.max_retries:
                attempt += 1
                delay = task.retry_delay.total_seconds() if task.retry_delay else 0.0
                _report(hooks, slug, StateType.RETRYING, f"Retry {attempt} of {task.max_retries} in {delay:g}s.")
                time.sleep(delay)
                continue
            _report(hooks, slug, StateType.FAILED, f"Error during execution of task: {exc!r}")
            return StateType.FAILED, None
        _report(hooks, slug, StateType.SUCCESS, "Task run succeeded.")
        return StateType.SUCCESS, value
