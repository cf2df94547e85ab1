"""flowbus: a workflow-orchestration backend over NATS.

The SDK surface that flow scripts use: ``task``, ``Flow``, ``Parameter``,
``Client``, ``context`` and the schedule clocks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flowbus.sdk import context
from flowbus.sdk.flow import Flow
from flowbus.sdk.schedules import CronClock, DatesClock, IntervalClock, Schedule
from flowbus.sdk.tasks import Parameter, Task, task
from flowbus.version import __version__

if TYPE_CHECKING:
    from flowbus.client import Client


def __getattr__(name: str) -> Any:
    # The client pulls in NATS; import it only when a script asks for it.
    if name == "Client":
        from flowbus.client import Client

        return Client
    raise AttributeError(name)


__all__ = [
    "Client",
    "CronClock",
    "DatesClock",
    "Flow",
    "IntervalClock",
    "Parameter",
    "Schedule",
    "Task",
    "__version__",
    "context",
    "task",
]
