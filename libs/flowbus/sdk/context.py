"""``flowbus.context``: values visible to flow code while it runs.

``flowbus.context.get("logger")`` gives the current task's logger (its
records reach the backend when the flow runs under an agent); other keys:
``flow_run_id``, ``flow_run_name``, ``task_run_id``, ``parameters``,
``loading_flow`` (true while an agent's runner imports the flow's script,
so that ``flow.register()`` and ``flow.run_agent()`` at the bottom of the
script do nothing then).
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
