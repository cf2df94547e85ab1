"""``flowbus.context``: values visible to flow code while it runs.

``flowbus.context.get(key)`` inside a task gives the task's ``logger``, the
run's and task run's ids and names, ``parameters``, ``scheduled_start_time``
(``date``, ``today``), ``running_with_backend`` and ``loading_flow``; under
``Flow.run()`` there are no ids and the start time is the moment it started
(docs/architecture.md, "Agent and runner").
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
