"""Printing a run as ``flowbus run --watch``, ``--execute`` and ``flowbus watch`` show it.

What to print comes from ``AsyncClient.follow_flow_run`` (stored, then live);
this module turns it into lines, says why a due run still waits, and gives
the exit code: 1 when the run failed, was cancelled or was deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import UTC, datetime

from flowbus.cli._output import clock, log_line, state_line
from flowbus.client import AsyncClient, ServiceUnavailable
from flowbus.schemas.common import FlowbusError
from flowbus.schemas.runs import HistoryEntry, LogRecord, StateChanged
from flowbus.states import StateType, is_failed


async def show_run(
    client: AsyncClient, flow_run_id: str, state: StateType, due: datetime, echo: Callable[[str], None]
) -> int:
    """The live view of `run --watch` and `watch`: the exit code (1 failed, cancelled or deleted)."""
    explainer = None
    if state is StateType.SCHEDULED:
        delay = max(0.0, (due - datetime.now(UTC)).total_seconds()) + client.settings.watch_explain_after
        explainer = asyncio.create_task(_explain_if_stuck(client, flow_run_id, delay, echo))
    code = 0
    try:
        async for item in client.follow_flow_run(flow_run_id):
            if isinstance(item, HistoryEntry | StateChanged):
                state_type, message, timestamp = _entered(item)
                if explainer is not None and state_type is not StateType.SCHEDULED:
                    explainer.cancel()
                echo(f"{clock(timestamp)} | Entered state {state_line(state_type, message)}")
                code = 1 if is_failed(state_type) or state_type is StateType.CANCELLED else 0
            elif isinstance(item, LogRecord):
                echo(log_line(item))
            else:
                echo(f"Flow run deleted: {item.reason}")
                code = 1
    finally:
        if explainer is not None:
            explainer.cancel()
    return code


def _entered(item: HistoryEntry | StateChanged) -> tuple[StateType, str | None, datetime]:
    if isinstance(item, HistoryEntry):
        return item.type, item.message, item.timestamp
    return item.state.type, item.state.message, item.state.timestamp


async def _explain_if_stuck(client: AsyncClient, flow_run_id: str, after: float, echo: Callable[[str], None]) -> None:
    """If the run is still waiting a while after it is due, say why (once)."""
    await asyncio.sleep(after)
    with contextlib.suppress(FlowbusError, ServiceUnavailable):
        reason = await client.explain_waiting_run(flow_run_id)
        if reason:
            echo(f"Waiting: {reason}")


def quiet_echo(_line: str) -> None:
    pass
