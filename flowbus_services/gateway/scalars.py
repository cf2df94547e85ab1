"""The custom scalars of the gateway's schema, after Prefect Server and Hasura.

``JSON``/``jsonb`` pass values through; a string *literal* in query text is
parsed as JSON (Prefect Server does, so ``parameters: "{\\"a\\": 2}"`` works).
``DateTime``/``timestamptz`` take ISO 8601, a naive time meaning UTC, and
give ISO 8601 with an offset. ``UUID``/``uuid`` must parse as a UUID.
Reads and writes nothing on NATS.
"""

from __future__ import annotations

import sys
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from ariadne import ScalarType
from graphql import GraphQLError, StringValueNode, ValueNode, value_from_ast_untyped

from flowbus.runtime.payload import PayloadLimits, PayloadRefused
from flowbus.settings import NatsTuning

json_scalar = ScalarType("JSON")
jsonb_scalar = ScalarType("jsonb")
datetime_scalar = ScalarType("DateTime")
timestamptz_scalar = ScalarType("timestamptz")
uuid_upper_scalar = ScalarType("UUID")
uuid_scalar = ScalarType("uuid")
interval_scalar = ScalarType("interval")


# A literal sits in a body already checked against the settings; a scalar's
# parser gets no settings, so it takes the default depth (json.loads must not recurse far).
_LITERAL_LIMITS = PayloadLimits(sys.maxsize, NatsTuning().max_json_depth)


def _json_literal(node: ValueNode, variables: dict[str, Any] | None = None) -> Any:
    if isinstance(node, StringValueNode):
        try:
            return _LITERAL_LIMITS.loads(node.value)
        except PayloadRefused as exc:
            raise GraphQLError(f"Not accepted JSON: {exc.message}") from None
        except ValueError as exc:
            raise GraphQLError(f"Not valid JSON: {exc}") from None
    return value_from_ast_untyped(node, variables)


for _scalar in (json_scalar, jsonb_scalar):
    _scalar.set_serializer(lambda value: value)
    _scalar.set_value_parser(lambda value: value)
    _scalar.set_literal_parser(_json_literal)


def parse_datetime(value: Any) -> datetime:
    """ISO 8601 text (or a datetime) as an aware UTC datetime; naive means UTC."""
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise GraphQLError(f"Could not parse datetime: {value!r} (give ISO 8601)") from None
    else:
        raise GraphQLError(f"Could not parse datetime: {value!r} (give ISO 8601)")
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def serialize_datetime(value: Any) -> str:
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()
    return str(value)


def parse_uuid(value: Any) -> str:
    if not isinstance(value, str):
        raise GraphQLError(f"Could not parse UUID: {value!r}")
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise GraphQLError(f"Could not parse UUID: {value!r}") from None


def serialize_interval(value: Any) -> str:
    """Seconds (or a timedelta) as Hasura's interval text, ``HH:MM:SS``."""
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    whole = int(seconds)
    return f"{whole // 3600:02d}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


for _scalar in (datetime_scalar, timestamptz_scalar):
    _scalar.set_serializer(serialize_datetime)
    _scalar.set_value_parser(parse_datetime)

for _scalar in (uuid_upper_scalar, uuid_scalar):
    _scalar.set_serializer(str)
    _scalar.set_value_parser(parse_uuid)

interval_scalar.set_serializer(serialize_interval)

SCALARS = [
    json_scalar,
    jsonb_scalar,
    datetime_scalar,
    timestamptz_scalar,
    uuid_upper_scalar,
    uuid_scalar,
    interval_scalar,
]
