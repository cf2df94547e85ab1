"""Prefect 1.x's serialized flows and states, to flowbus's messages and back.

A Prefect 1.x client (``prefect==1.4.1``) registers a flow as
``Flow.serialize()`` gives it and sets states as ``State.serialize()`` gives
them. This module reads both into flowbus's ``SerializedFlow`` and
``StateSpec``, keeping what Prefect sent (``SerializedFlow.prefect``,
``StorageSpec.prefect``, ``RunConfigSpec.prefect``, ``StateSpec.serialized``)
so that Prefect clients read back exactly what they wrote; and it builds a
Prefect serialized state for a state flowbus's own clients set. What is
refused, and why: docs/prefect1.md. Reads and writes nothing on NATS.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from flowbus import clocks
from flowbus.schemas.common import ValidationFailed
from flowbus.states import StateType

# Prefect's clock types and the flowbus clock type each becomes.
_CLOCKS = {"CronClock": "cron", "IntervalClock": "interval", "DatesClock": "dates"}
# Schedule parts that change which times a clock gives: flowbus has no such thing.
_SCHEDULE_MODIFIERS = ("filters", "or_filters", "not_filters", "adjustments")
# The Prefect version a state built here claims to come from (any 1.x reads it).
PREFECT_VERSION = "1.4.1"


def is_prefect_flow(value: Any) -> bool:
    """True for a flow as Prefect 1.x serialized it: it names its own type and version."""
    return isinstance(value, Mapping) and "__version__" in value and value.get("type") == "prefect.core.flow.Flow"


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ValidationFailed(f"{what} must be a JSON object, not {type(value).__name__}.")
    return dict(value)


def _list(value: Any, what: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValidationFailed(f"{what} must be a JSON list, not {type(value).__name__}.")
    return value


def task_fields(task: Any) -> dict[str, Any]:
    """A task of a Prefect flow (``register_tasks`` or ``serialized_flow.tasks``) as TaskSpec's fields."""
    task = _object(task, "a task")
    tags = _list(task.get("tags"), "a task's tags")
    if not all(isinstance(t, str) for t in tags):
        # Checked before they are sorted: a list or a number among them would not sort.
        raise ValidationFailed("a task's tags must be strings.")
    return {
        "slug": task.get("slug"),
        "name": task.get("name") or task.get("slug"),
        "type": task.get("type") or "",
        "max_retries": task.get("max_retries") or 0,
        "retry_delay_seconds": task.get("retry_delay"),
        "tags": sorted(set(tags)),
    }


def edge_fields(edge: Any) -> dict[str, Any]:
    """An edge of a Prefect flow (tasks named by slug) as EdgeSpec's fields."""
    edge = _object(edge, "an edge")
    upstream = _object(edge.get("upstream_task"), "an edge's upstream_task")
    downstream = _object(edge.get("downstream_task"), "an edge's downstream_task")
    return {"upstream": upstream.get("slug"), "downstream": downstream.get("slug"), "key": edge.get("key")}


def _clock(clock: Any) -> dict[str, Any]:
    clock = _object(clock, "a clock")
    kind = _CLOCKS.get(str(clock.get("type")))
    if kind is None:
        raise ValidationFailed(
            f"flowbus runs CronClock, IntervalClock and DatesClock schedules, not {clock.get('type')!r}."
        )
    out: dict[str, Any] = {
        "type": kind,
        "parameter_defaults": clock.get("parameter_defaults") or {},
        "labels": clock.get("labels"),
    }
    start = clock.get("start_date")
    if kind == "cron":
        out["cron"] = clock.get("cron")
        out["timezone"] = start.get("tz") if isinstance(start, Mapping) else None
    elif kind == "interval":
        interval = clock.get("interval")
        if isinstance(interval, bool) or not isinstance(interval, int | float):
            raise ValidationFailed("An IntervalClock needs its interval (in microseconds).")
        try:
            out["interval_seconds"] = interval / 1e6
        except OverflowError:  # an integer past any float (JSON has no bound)
            raise ValidationFailed("An IntervalClock's interval is out of range.") from None
        if isinstance(start, Mapping):
            out["start_date"] = _zoned(start)
            out["timezone"] = start.get("tz")
    else:
        out["dates"] = [_zoned(d) for d in _list(clock.get("dates"), "a DatesClock's dates")]
    return out


def _zoned(value: Any) -> str:
    """Prefect's ``{"dt": naive ISO time, "tz": zone name}`` as an aware ISO time."""
    value = _object(value, "a date")
    try:
        naive = datetime.fromisoformat(str(value["dt"]))
        return naive.replace(tzinfo=clocks.zone(str(value.get("tz") or "UTC"))).isoformat()
    except (KeyError, ValueError) as exc:
        raise ValidationFailed(f"Not a Prefect date: {value!r} ({exc})") from None


def _schedule(schedule: Any) -> dict[str, Any] | None:
    if schedule is None:
        return None
    schedule = _object(schedule, "schedule")
    modifiers = [m for m in _SCHEDULE_MODIFIERS if schedule.get(m)]
    if modifiers:
        raise ValidationFailed(f"flowbus schedules have no {', '.join(modifiers)}: register the flow without them.")
    return {"clocks": [_clock(c) for c in _list(schedule.get("clocks"), "schedule.clocks")]}


def _run_config(run_config: Any) -> dict[str, Any]:
    if run_config is None:
        return {}
    run_config = _object(run_config, "run_config")
    return {"labels": run_config.get("labels"), "env": run_config.get("env"), "prefect": run_config}


def flow_fields(flow: Mapping[str, Any]) -> dict[str, Any]:
    """A flow as Prefect 1.x serialized it, as SerializedFlow's fields (validated by the caller).

    Prefect's parameters are tasks too, and stay in the task list; a flow
    registered by ``flow.register()`` has no tasks or edges here (they follow
    in ``register_tasks`` and ``register_edges``).
    """
    storage = flow.get("storage")
    if storage is None:
        raise ValidationFailed("A Prefect flow needs storage: flowbus keeps no flow code itself.")
    parameters = [
        {"name": p.get("name") or p.get("slug"), "required": bool(p.get("required")), "default": p.get("default")}
        for p in (_object(p, "a parameter") for p in _list(flow.get("parameters"), "parameters"))
    ]
    return {
        "name": flow.get("name"),
        "parameters": parameters,
        "tasks": [task_fields(t) for t in _list(flow.get("tasks"), "tasks")],
        "edges": [edge_fields(e) for e in _list(flow.get("edges"), "edges")],
        "storage": {"type": "prefect", "prefect": _object(storage, "storage")},
        "run_config": _run_config(flow.get("run_config")),
        "schedule": _schedule(flow.get("schedule")),
        "core_version": str(flow.get("__version__") or ""),
        "prefect": dict(flow),
    }


def state_fields(state: Mapping[str, Any]) -> dict[str, Any]:
    """A state as Prefect serialized it (``{"type": "Running", "message": ..., "_result": ...}``)
    as StateSpec's fields, the whole of it kept as ``serialized``."""
    return {"type": state.get("type"), "message": state.get("message"), "serialized": dict(state)}


def is_prefect_state(state: Mapping[str, Any]) -> bool:
    return "__version__" in state


def _iso(value: Any) -> str | None:
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()
    return None


def serialized_state(
    state: str | None, message: str | None, start_time: Any = None, stored: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """A state as Prefect serializes it: the one a Prefect client set (``stored``,
    when it is of this state's type), else one built from the type and
    message, with the start time of a Scheduled state."""
    if stored is not None and stored.get("type") == state:
        return dict(stored)
    out: dict[str, Any] = {"type": state, "message": message}
    if start_time is not None:
        out["start_time"] = _iso(start_time)
    if state is not None and state in StateType.__members__.values():
        out.update({"_result": {"type": "NoResultType", "__version__": PREFECT_VERSION}, "context": {}})
        out.update({"cached_inputs": {}, "__version__": PREFECT_VERSION})
    return out
