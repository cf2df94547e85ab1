"""Base message class, the reply envelope, the stable error codes and the input limits."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Generic, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    JsonValue,
    ValidationError,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, PydanticCustomError, core_schema

# ---- input limits (docs/semantics.md, "Limits") -----------------------------
# Every command is also bounded as a whole by the setting nats.max_command_bytes;
# these caps bound the work one command can ask for within it (validation,
# rows written, replies built), each checked before its items are validated.
NAME_MAX = 255
LABEL_MAX = 255
TEXT_MAX = 10_000
MAX_LABELS = 64
MAX_TASKS = 5_000
MAX_EDGES = 20_000
MAX_PARAMETERS = 500
MAX_TASK_TAGS = 64
MAX_CLOCKS = 100
MAX_CLOCK_DATES = 1_000
MAX_ENV_VARS = 100
ENV_VALUE_MAX = 16 * 1024
# Levels of nesting of an arbitrary JSON field (parameters, context, a state's
# result, a log's info), the field's own object or array counting as one.
MAX_JSON_DEPTH = 32
# The page of the list commands (list_projects, list_flows, list_agents).
LIST_LIMIT_DEFAULT = 1_000
LIST_LIMIT_MAX = 10_000
# The largest integer a command may carry into an integer column or a query:
# what PostgreSQL's INTEGER holds (a larger one reached the database as an
# overflow, answered INTERNAL): a task's max_retries, a map index, the
# ``offset`` of a list command.
INT_COLUMN_MAX = 2**31 - 1
MAX_OFFSET = INT_COLUMN_MAX


@dataclass(frozen=True)
class at_most:  # lower case: used like a function, ``Annotated[list[X], at_most(MAX_X, "xs")]``
    """Refuse a list or dict longer than ``limit`` before any of its items is
    validated (``Field(max_length=...)`` counts only after validating them
    all); the JSON Schema shows the cap as maxItems or maxProperties."""

    limit: int
    what: str

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.no_info_before_validator_function(self._check, handler(source))

    def __get_pydantic_json_schema__(self, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        json_schema = handler(schema)
        json_schema["maxProperties" if json_schema.get("type") == "object" else "maxItems"] = self.limit
        return json_schema

    def _check(self, value: Any) -> Any:
        if isinstance(value, list | dict) and len(value) > self.limit:
            raise PydanticCustomError(
                "too_long",
                "{count} {what} exceed the limit of {limit}",
                {"count": len(value), "what": self.what, "limit": self.limit},
            )
        return value


def duplicates(values: Iterable[str]) -> list[str]:
    """The values that occur more than once, sorted; one pass (a flow's
    thousands of task slugs made a count per slug quadratic)."""
    return sorted(v for v, n in Counter(values).items() if n > 1)


def json_depth(value: Any, limit: int) -> int:
    """The nesting depth of ``value`` (a scalar: 0), counted without recursion
    and only up to ``limit + 1``: past that it stops looking."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list | tuple):
            children = node
        else:
            continue
        depth += 1
        if depth > deepest:
            deepest = depth
            if deepest > limit:
                return deepest
        stack.extend((child, depth) for child in children if isinstance(child, dict | list | tuple))
    return deepest


def _shallow(value: Any) -> Any:
    if json_depth(value, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        raise PydanticCustomError("json_too_deep", "JSON nested deeper than {limit} levels", {"limit": MAX_JSON_DEPTH})
    return value


# Nesting of at most MAX_JSON_DEPTH levels, checked before pydantic walks the
# value (its own walk recurses): ``Json`` for a value, ``shallow`` for a dict field.
shallow = BeforeValidator(_shallow)


def is_none(value: object) -> bool:
    """For ``Field(exclude_if=is_none)``: a field only some senders fill (Prefect
    1.x's copies) is left out of the others' JSON, which stays as it was."""
    return value is None


Json = Annotated[JsonValue, shallow]


def utcnow() -> datetime:
    return datetime.now(UTC)


class Message(BaseModel):
    """Base of every NATS message: immutable, and unknown fields are an error."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    def tally_key(self) -> tuple[str, str] | None:
        """What /metrics counts this message as when a service commits it as an event
        (flowbus.db.outbox); most are not counted."""
        return None


class ErrorCode(StrEnum):
    NOT_FOUND = "NOT_FOUND"
    VALIDATION_ERROR = "VALIDATION_ERROR"
    VERSION_LOCKING_ERROR = "VERSION_LOCKING_ERROR"
    ARCHIVED = "ARCHIVED"
    CONFLICT = "CONFLICT"
    FORBIDDEN = "FORBIDDEN"
    INTERNAL = "INTERNAL"
    # The service instance is at a limit (its queue of commands is full) and
    # did not take the command: resending it later is safe.
    UNAVAILABLE = "UNAVAILABLE"


class ErrorInfo(Message):
    code: ErrorCode
    message: str
    details: list[dict[str, Any]] | None = None


T = TypeVar("T")


class Reply(Message, Generic[T]):
    """The envelope of every reply: ``data`` on success, ``error`` otherwise."""

    ok: bool
    data: T | None = None
    error: ErrorInfo | None = None

    @classmethod
    def success(cls, data: T) -> Reply[T]:
        return cls(ok=True, data=data)


class FlowbusError(Exception):
    """A refusal with a stable code; services turn it into an error reply."""

    code: ErrorCode = ErrorCode.INTERNAL

    def __init__(self, message: str, *, details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def info(self) -> ErrorInfo:
        return ErrorInfo(code=self.code, message=self.message, details=self.details)


class NotFound(FlowbusError):
    code = ErrorCode.NOT_FOUND


class ValidationFailed(FlowbusError):
    code = ErrorCode.VALIDATION_ERROR


class VersionLockingError(FlowbusError):
    code = ErrorCode.VERSION_LOCKING_ERROR


class Archived(FlowbusError):
    code = ErrorCode.ARCHIVED


class Conflict(FlowbusError):
    code = ErrorCode.CONFLICT


class Forbidden(FlowbusError):
    """The caller's credential may not do this (the bus refuses it)."""

    code = ErrorCode.FORBIDDEN


class InternalError(FlowbusError):
    code = ErrorCode.INTERNAL


class Unavailable(FlowbusError):
    code = ErrorCode.UNAVAILABLE


ERRORS_BY_CODE: dict[ErrorCode, type[FlowbusError]] = {
    cls.code: cls
    for cls in (
        NotFound,
        ValidationFailed,
        VersionLockingError,
        Archived,
        Conflict,
        Forbidden,
        InternalError,
        Unavailable,
    )
}


def validation_failed(exc: ValidationError) -> ValidationFailed:
    """A pydantic refusal as VALIDATION_ERROR, naming the first field at fault."""
    details = [
        {"loc": [str(p) for p in e["loc"]], "msg": e["msg"], "type": e["type"]}
        for e in exc.errors(include_url=False, include_input=False)
    ]
    first = details[0] if details else {"loc": [], "msg": "invalid"}
    where = ".".join(first["loc"]) or "message"
    return ValidationFailed(f"invalid message: {where}: {first['msg']}", details=details)


def error_from_info(info: ErrorInfo) -> FlowbusError:
    return ERRORS_BY_CODE[info.code](info.message, details=info.details)


class Empty(Message):
    """A command or reply with no fields."""
