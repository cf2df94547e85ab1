"""Which ``Flow`` is being built by a ``with Flow(...)`` block in this thread."""

from __future__ import annotations

import contextvars
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flowbus.sdk.flow import Flow

_current: contextvars.ContextVar[Flow | None] = contextvars.ContextVar("flowbus_flow", default=None)


def current() -> Flow | None:
    return _current.get()


def enter(flow: Flow) -> contextvars.Token[Flow | None]:
    return _current.set(flow)


def leave(token: contextvars.Token[Flow | None]) -> None:
    _current.reset(token)
