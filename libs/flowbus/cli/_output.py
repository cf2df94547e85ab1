"""How the ``flowbus`` command prints: times, states, log lines and padded tables."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import typer

from flowbus.schemas.runs import LogRecord
from flowbus.states import StateType


def clock(ts: datetime) -> str:
    return f"{ts.astimezone():%H:%M:%S}"


def when(ts: datetime | None) -> str:
    return f"{ts.astimezone():%Y-%m-%d %H:%M:%S %Z}" if ts else "-"


def state_line(state_type: StateType, message: str | None) -> str:
    return f"{state_type.value}: {message}" if message else state_type.value


def log_line(record: LogRecord) -> str:
    return f"{clock(record.timestamp)} | {record.level:<7} | {record.name} | {record.message}"


def table(rows: Sequence[Sequence[str]], indent: str = "") -> None:
    """Columns padded to their widest cell."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        typer.echo(indent + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
