"""``flowbus.context``: values visible to flow code while it runs.

``flowbus.context.get(key)`` inside a task gives:

- ``logger``: the task's logger (``flowbus.task.<name>``); its records reach
  the backend when the flow runs under a runner (an agent's, or
  ``flowbus run --execute``);
- ``flow_run_id``, ``flow_run_name``, ``flow_id``, ``flow_name``,
  ``project_name``: the run and its flow;
- ``task_run_id``, ``task_name``, ``task_slug``, ``task_tags``,
  ``task_run_count`` (1 on the first attempt, 2 on the first retry, ...);
- ``parameters``: the run's parameters (a dict);
- ``scheduled_start_time``: when the run was due, a timezone-aware
  datetime (UTC); ``date`` is the same value (1.x's name) and ``today`` its
  date as ``YYYY-MM-DD``;
- ``running_with_backend``: true under a runner, absent for ``Flow.run()``;
- ``loading_flow``: true while a runner imports the flow's script, so that
  ``flow.register()`` and ``flow.run_agent()`` at the bottom of the script do
  nothing then.

``Flow.run()`` (no backend) has no run or task-run ids; its
``scheduled_start_time`` is the moment it started.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_values: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("flowbus_context", default={})  # noqa: B039


def get(key: str, default: Any = None) -> Any:
    values = _values.get()
    if key == "logger" and "logger" not in values:
        return logging.getLogger("flowbus")
    return values.get(key, default)


def to_dict() -> dict[str, Any]:
    return dict(_values.get())


@contextmanager
def scope(**values: Any) -> Iterator[None]:
    """Add ``values`` for the duration of the block (nested scopes stack)."""
    token = _values.set({**_values.get(), **values})
    try:
        yield
    finally:
        _values.reset(token)
