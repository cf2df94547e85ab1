"""The one-line message of an error the client raises, for command lines and scripts.

``NatsUnavailable`` (no NATS server answered, or ``NoServerRunning``: none is
known to connect to), ``ServiceUnavailable`` (no service answered) and
``FlowbusError`` (a service's error reply) are the failures a user can act
on; each prints as one line rather than a traceback.
"""

from __future__ import annotations

from flowbus.client._transport import ServiceUnavailable
from flowbus.runtime.nats import NatsUnavailable, NoServerRunning
from flowbus.schemas.common import FlowbusError

CLIENT_ERRORS = (NatsUnavailable, ServiceUnavailable, FlowbusError)
# Where a command line points a user who has no server running.
NATS_HINT = "is `flowbus up` running? FLOWBUS_NATS_URL overrides"


def describe_error(exc: NatsUnavailable | ServiceUnavailable | FlowbusError, *, nats_hint: str | None = None) -> str:
    """``CODE: message`` for a service's error, the exception's text otherwise;
    ``nats_hint`` is appended in parentheses when NATS itself is unreachable."""
    if isinstance(exc, FlowbusError):
        return f"{exc.code.value}: {exc.message}"
    if isinstance(exc, NatsUnavailable) and not isinstance(exc, NoServerRunning) and nats_hint:
        return f"{exc} ({nats_hint})"
    return str(exc)
