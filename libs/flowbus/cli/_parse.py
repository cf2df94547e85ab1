"""Parsing the ``flowbus`` command's option values; a bad value fails with exit code 2."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flowbus.cli.app import fail
from flowbus.schemas.runs import LOG_LEVELS
from flowbus.settings import parse_duration
from flowbus.states import StateType


def parse_params(values: list[str] | None, option: str = "--param") -> dict[str, Any]:
    """KEY=VALUE pairs; VALUE is JSON when it parses, else the string itself."""
    params: dict[str, Any] = {}
    for item in values or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise fail(f"{option} takes KEY=VALUE, got {item!r}", 2)
        try:
            params[key] = json.loads(raw)
        except ValueError:
            params[key] = raw
    return params


def read_param_file(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise fail(f"--param-file {path}: {exc}", 2) from None
    if not isinstance(data, dict):
        raise fail(f"--param-file {path}: the file must hold a JSON object", 2)
    return data


def aware_time(value: str | None, option: str) -> datetime | None:
    """An ISO 8601 time with its zone; a naive one is refused rather than guessed."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise fail(f"{option} takes an ISO 8601 time, e.g. 2030-01-31T09:00:00+01:00, got {value!r}", 2) from None
    if parsed.tzinfo is None:
        raise fail(f"{option} {value!r} has no timezone; add one, e.g. {value}Z (UTC) or {value}+01:00", 2)
    return parsed


def start_time(start_at: str | None, start_in: str | None) -> datetime | None:
    if start_at is not None and start_in is not None:
        raise fail("give at most one of --start-at and --start-in", 2)
    if start_in is not None:
        try:
            return datetime.now(UTC) + parse_duration(start_in)
        except ValueError as exc:
            raise fail(f"--start-in: {exc}", 2) from None
    return aware_time(start_at, "--start-at")


def log_level(value: str | None) -> str | None:
    if value is None:
        return None
    if value.upper() not in LOG_LEVELS:
        raise fail(f"--level takes one of {', '.join(LOG_LEVELS)}, got {value!r}", 2)
    return value.upper()


def state_type(value: str) -> StateType:
    by_name = {t.value.lower(): t for t in StateType}
    if value.lower() not in by_name:
        raise fail(f"--state takes one of {', '.join(t.value for t in StateType)}, got {value!r}", 2)
    return by_name[value.lower()]
