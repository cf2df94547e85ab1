"""Commands from a caller's values: validation as a service would do it, and state coercion."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeAlias, TypeVar

from pydantic import BaseModel, ValidationError

from flowbus.schemas.common import validation_failed
from flowbus.schemas.runs import StateSpec
from flowbus.states import State, StateType

M = TypeVar("M", bound=BaseModel)
# A state to set: ``Success(message="It worked!")``, the JSON form
# ``{"type": "Success", "message": "It worked!"}``, or a StateType.
StateLike: TypeAlias = State | type[State] | StateType | Mapping[str, Any]


def build(model: type[M], **fields: Any) -> M:
    """A command from the caller's values, refused as a service would refuse it
    (ValidationFailed, code VALIDATION_ERROR) when they are invalid."""
    try:
        return model(**fields)
    except ValidationError as exc:
        raise validation_failed(exc) from None


def state_spec(state: StateLike, message: str | None = None) -> StateSpec:
    """The wire form of a state given as a State object (or class), its JSON dict
    or a StateType; ``message``, when given, replaces the state's own."""
    if isinstance(state, type):
        state = state()
    fields: dict[str, Any]
    if isinstance(state, State):
        fields = {"type": state.type, "message": state.message, "result": state.result}
    elif isinstance(state, str):
        fields = {"type": state}
    else:
        fields = dict(state)
    if message is not None:
        fields["message"] = message
    return build(StateSpec, **fields)
