"""GraphQL errors with flowbus's stable codes in ``extensions.code``.

A refusal from a service (a ``FlowbusError`` reply) keeps its code and
message; an error of GraphQL itself (syntax, validation, coercion) is
``VALIDATION_ERROR``; anything else is ``INTERNAL``, logged here with its
traceback and answered without it. Reads and writes nothing on NATS.
"""

from __future__ import annotations

import logging
from enum import StrEnum
from typing import Any

from graphql import GraphQLError

from flowbus.client import ServiceUnavailable
from flowbus.schemas.common import FlowbusError

log = logging.getLogger(__name__)


class Code(StrEnum):
    """Every code the gateway answers with: the services' own, and the two of the gateway."""

    NOT_FOUND = "NOT_FOUND"
    VALIDATION_ERROR = "VALIDATION_ERROR"
    VERSION_LOCKING_ERROR = "VERSION_LOCKING_ERROR"
    ARCHIVED = "ARCHIVED"
    CONFLICT = "CONFLICT"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    FORBIDDEN = "FORBIDDEN"
    INTERNAL = "INTERNAL"


def error(message: str, code: Code) -> dict[str, Any]:
    """One entry of a response's ``errors``."""
    return {"message": message, "extensions": {"code": code.value}}


def refusal(message: str, code: Code) -> GraphQLError:
    """A GraphQLError to raise from a resolver."""
    return GraphQLError(message, extensions={"code": code.value})


def format_error(err: GraphQLError, debug: bool = False) -> dict[str, Any]:
    """ariadne's error formatter: every error leaves with a stable code."""
    formatted: dict[str, Any] = dict(err.formatted)
    extensions = dict(formatted.get("extensions") or {})
    original = err.original_error
    if isinstance(original, FlowbusError):
        formatted["message"] = original.message
        extensions["code"] = original.code.value
        if original.details:
            extensions["details"] = original.details
    elif isinstance(original, ServiceUnavailable):
        formatted["message"] = f"A service did not answer: {original}"
        extensions["code"] = Code.INTERNAL.value
    elif original is not None and not isinstance(original, GraphQLError):
        log.error("resolver failed at %s", err.path, exc_info=original)
        formatted["message"] = "Internal error: the gateway's log has the details."
        extensions = {"code": Code.INTERNAL.value}
    elif "code" not in extensions:
        extensions["code"] = Code.VALIDATION_ERROR.value
    formatted["extensions"] = extensions
    return formatted
