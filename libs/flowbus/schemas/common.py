"""Base message class, the reply envelope and the stable error codes."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

NAME_MAX = 255
LABEL_MAX = 255
MAX_LABELS = 64


def utcnow() -> datetime:
    return datetime.now(UTC)


class Message(BaseModel):
    """Base of every NATS message: immutable, and unknown fields are an error."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class ErrorCode(StrEnum):
    NOT_FOUND = "NOT_FOUND"
    VALIDATION_ERROR = "VALIDATION_ERROR"
    VERSION_LOCKING_ERROR = "VERSION_LOCKING_ERROR"
    ARCHIVED = "ARCHIVED"
    CONFLICT = "CONFLICT"
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


class InternalError(FlowbusError):
    code = ErrorCode.INTERNAL


class Unavailable(FlowbusError):
    code = ErrorCode.UNAVAILABLE


ERRORS_BY_CODE: dict[ErrorCode, type[FlowbusError]] = {
    cls.code: cls
    for cls in (NotFound, ValidationFailed, VersionLockingError, Archived, Conflict, InternalError, Unavailable)
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
