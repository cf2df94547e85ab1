"""From GraphQL mutation inputs to flowbus command fields: flows, states, run configs, schedules.

The mutations take Prefect Server 1.x's inputs; this module turns each loose
JSON value into the flowbus message it stands for, or refuses it with
VALIDATION_ERROR (``ValidationFailed``) before any command is sent. A
serialized flow is read by ``serialized_flow_from_input`` alone, so that
another format (Prefect 1.x's ``Flow.serialize()``) is one more branch
there. Reads and writes nothing on NATS.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import zlib
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from flowbus.client import state_spec
from flowbus.runtime.payload import PayloadLimits, PayloadRefused
from flowbus.schemas.common import ValidationFailed, validation_failed
from flowbus.schemas.flows import ClockSpec, EdgeSpec, RunConfigSpec, ScheduleSpec, SerializedFlow, TaskSpec
from flowbus.schemas.runs import StateSpec
from flowbus_services.gateway import prefect1

# Most bytes a compressed serialized flow may inflate to: the request body is
# capped, but gzip can multiply it a thousandfold.
MAX_INFLATED_BYTES = 16 * 1024 * 1024
# Keys of a Prefect run config that say what it is, not what it sets: flowbus
# has one kind of run config, so they carry nothing.
_RUN_CONFIG_META = frozenset({"type", "__version__"})


def _validate(model: type[BaseModel], value: Any, what: str) -> Any:
    if not isinstance(value, Mapping):
        raise ValidationFailed(f"{what} must be a JSON object, not {type(value).__name__}.")
    try:
        return model.model_validate(dict(value))
    except ValidationError as exc:
        raise validation_failed(exc) from None


def serialized_flow_from_input(value: Any) -> SerializedFlow:
    """The flow a ``create_flow`` input describes: flowbus's serialized form
    (what its ``Flow.serialize()`` gives, as JSON), or Prefect 1.x's."""
    if prefect1.is_prefect_flow(value):
        value = prefect1.flow_fields(value)
    flow: SerializedFlow = _validate(SerializedFlow, value, "serialized_flow")
    return flow


def tasks_from_input(values: Any) -> list[TaskSpec]:
    """``register_tasks``'s tasks (Prefect 1.x's serialized tasks)."""
    return [_validate(TaskSpec, prefect1.task_fields(t), "a task") for t in _items(values, "serialized_tasks")]


def edges_from_input(values: Any) -> list[EdgeSpec]:
    """``register_edges``'s edges (Prefect 1.x's, tasks named by slug)."""
    return [_validate(EdgeSpec, prefect1.edge_fields(e), "an edge") for e in _items(values, "serialized_edges")]


def _items(values: Any, what: str) -> list[Any]:
    if not isinstance(values, list):
        raise ValidationFailed(f"{what} must be a JSON list, not {type(values).__name__}.")
    return values


def decompress_flow(text: str, max_depth: int) -> Any:
    """The JSON of ``create_flow_from_compressed_string``: ``base64(gzip(json))``,
    nested at most ``max_depth`` levels (the setting ``nats.max_json_depth``)."""
    try:
        compressed = base64.b64decode(text, validate=True)
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        raw = inflater.decompress(compressed, MAX_INFLATED_BYTES)
        if inflater.unconsumed_tail:
            raise ValidationFailed(f"serialized_flow inflates to more than {MAX_INFLATED_BYTES} bytes.")
        if not inflater.eof:
            raise ValueError("truncated gzip data")
        return PayloadLimits(MAX_INFLATED_BYTES, max_depth).loads(raw)
    except PayloadRefused as exc:
        raise ValidationFailed(f"serialized_flow is refused: {exc.message}") from None
    except (binascii.Error, zlib.error, gzip.BadGzipFile, ValueError) as exc:
        if isinstance(exc, ValidationFailed):
            raise
        raise ValidationFailed(f"serialized_flow is not base64-encoded gzipped JSON: {exc}") from None


def state_from_input(value: Any) -> StateSpec:
    """A state to set: ``{"type": "Success", "message": "It worked!"}`` (flowbus's
    state and the shape Prefect's docs show), with an optional ``result``; or
    a state as a Prefect 1.x client serialized it, kept whole."""
    if not isinstance(value, Mapping):
        raise ValidationFailed(f'state must be a JSON object such as {{"type": "Success"}}, not {value!r}.')
    if prefect1.is_prefect_state(value):
        return state_spec(prefect1.state_fields(value))
    return state_spec(value)


def json_object(value: Any, what: str) -> dict[str, Any]:
    """A JSON object input (parameters, context, info); None is an empty object."""
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise ValidationFailed(f"{what} must be a JSON object, not {type(value).__name__}.")
    return dict(value)


def run_config_from_input(value: Any) -> RunConfigSpec | None:
    """A run's run config: its ``labels`` and ``env``; a Prefect 1.x run config
    (it names its ``type``) is kept whole besides, for Prefect agents."""
    if value is None:
        return None
    given = json_object(value, "run_config")
    if "type" in given:
        # Prefect's other fields (working_dir, image, ...) are its agents' business.
        fields = {k: v for k, v in given.items() if k in ("labels", "env") and v is not None}
        fields["prefect"] = given
    else:
        if "prefect" in given:
            # flowbus's own field for what a Prefect client sent: not one to give.
            raise ValidationFailed("run_config: a run config has no field prefect.")
        fields = {k: v for k, v in given.items() if k not in _RUN_CONFIG_META and v is not None}
    config: RunConfigSpec = _validate(RunConfigSpec, fields, "run_config")
    return config


def schedule_from_clocks(
    cron_clocks: list[Mapping[str, Any]] | None,
    interval_clocks: list[Mapping[str, Any]] | None,
    timezone: str | None,
) -> ScheduleSpec:
    """``set_flow_group_schedule``'s clocks as a schedule: cron expressions and
    intervals in seconds, each with its parameter defaults, all in ``timezone``."""
    clocks: list[dict[str, Any]] = []
    for clock in cron_clocks or []:
        clocks.append(
            {
                "type": "cron",
                "cron": clock.get("cron"),
                "timezone": timezone,
                "parameter_defaults": json_object(clock.get("parameter_defaults"), "parameter_defaults"),
            }
        )
    for clock in interval_clocks or []:
        clocks.append(
            {
                "type": "interval",
                "interval_seconds": clock.get("interval"),
                "timezone": timezone,
                "parameter_defaults": json_object(clock.get("parameter_defaults"), "parameter_defaults"),
            }
        )
    if not clocks:
        raise ValidationFailed("Give at least one clock: cron_clocks or interval_clocks.")
    try:
        return ScheduleSpec(clocks=[ClockSpec(**c) for c in clocks])
    except ValidationError as exc:
        raise validation_failed(exc) from None


def with_description(flow: SerializedFlow, description: str) -> SerializedFlow:
    """``flow`` with the description a ``create_flow`` input gives beside it."""
    described: SerializedFlow = _validate(
        SerializedFlow, {**flow.model_dump(), "description": description}, "serialized_flow"
    )
    return described
