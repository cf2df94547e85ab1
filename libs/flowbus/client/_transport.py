"""The client's transport: one NATS connection, and ``request`` with retry and fail-over.

Every command goes through ``Transport.request``, which unwraps the reply
envelope: data is returned, an error is raised as the matching
``FlowbusError`` subclass (NotFound, Archived, ...). An unavailable service
is waited out with ``Backoff`` for the transport's ``outage_seconds``
(docs/architecture.md, "Fail-over").

Writes: ``flowbus.cmd.*`` requests, with the current span's W3C context in their headers.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from typing import TypeVar

from nats.aio.client import Client as NatsClient
from nats.errors import ConnectionReconnectingError, NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from pydantic import BaseModel

from flowbus import subjects
from flowbus.bus_auth import BusRole, PermissionDenied, permissions
from flowbus.runtime import telemetry
from flowbus.runtime.nats import connect
from flowbus.schemas.common import ErrorCode, Forbidden, Message, Reply, error_from_info
from flowbus.settings import Settings

M = TypeVar("M", bound=BaseModel)

# An idempotent command's first try: long enough for any healthy service.
FIRST_ATTEMPT_TIMEOUT = 2.0
# Resends back off from the first pause to the longest: quick through a
# fail-over, and at most a couple of seconds late after a restart.
FIRST_PAUSE = 0.05
LONGEST_PAUSE = 2.0
log = logging.getLogger("flowbus.client")


class ServiceUnavailable(ConnectionError):
    """The server is reachable but no instance of a service answered, or each that
    answered was full (UNAVAILABLE), until the client's ``outage_seconds`` ran out."""


class Backoff:
    """The pauses between resends until a deadline: doubling from FIRST_PAUSE
    up to LONGEST_PAUSE, each shortened by up to half at random, so that the
    clients of a restarted service do not all come back in step."""

    def __init__(self, seconds: float) -> None:
        self._loop = asyncio.get_running_loop()
        self.deadline = self._loop.time() + seconds
        self._pause = FIRST_PAUSE

    @property
    def expired(self) -> bool:
        return self._loop.time() >= self.deadline

    async def pause(self) -> bool:
        """Wait before the next try (never past the deadline); False, at once, once the deadline has passed."""
        left = self.deadline - self._loop.time()
        if left <= 0:
            return False
        await asyncio.sleep(min(left, self._pause * random.uniform(0.5, 1.0)))
        self._pause = min(self._pause * 2, LONGEST_PAUSE)
        return True


class Transport:
    """The connection and the request loop that every resource of the client shares."""

    def __init__(
        self,
        settings: Settings | None = None,
        nc: NatsClient | None = None,
        role: BusRole | None = None,
        *,
        outage_seconds: float | None = None,
    ) -> None:
        self.settings = settings or Settings()
        # How long a command is resent while its service does not take it:
        # briefly for a person at a prompt (nats.unavailable_retry_seconds);
        # agents and runners pass nats.outage_retry_seconds, to outlive a restart.
        self.outage_seconds = (
            outage_seconds if outage_seconds is not None else self.settings.nats.unavailable_retry_seconds
        )
        self._nc = nc
        self._owns_connection = nc is None
        # The CLI's and the SDK's credential: FLOWBUS_ROLE, else the local owner's (admin).
        self.role = role or self.settings.role or BusRole.ADMIN
        # What the bus lets our own connection publish: a refused command fails
        # here with FORBIDDEN rather than waiting for a reply that cannot come.
        self._may_publish: Callable[[str], bool] | None = None

    async def connect(self) -> NatsClient:
        if self._nc is None:
            credential = self.settings.nats_credential(self.role)
            self._nc = await connect(self.settings, "flowbus-client", self.role, credential)
            if credential is not None:
                self._may_publish = permissions(credential.role, credential.name).may_publish
                self.role = credential.role
        return self._nc

    def _check_publish(self, subject: str) -> None:
        """Raise ``Forbidden`` when this client's credential may not publish to ``subject``."""
        if self._may_publish is not None and not self._may_publish(subject):
            raise Forbidden(str(PermissionDenied(subject, self.role.value)))

    async def close(self) -> None:
        if self._nc is not None and self._owns_connection and not self._nc.is_closed:
            # flush, not drain: drain waits up to 30 s on idle JetStream subscriptions.
            await self._nc.flush()
            await self._nc.close()
        self._nc = None if self._owns_connection else self._nc

    @property
    def nc(self) -> NatsClient:
        assert self._nc is not None, "call connect() first"
        return self._nc

    def backoff(self) -> Backoff:
        """Pauses for resending a command of one's own, within this client's ``outage_seconds``."""
        return Backoff(self.outage_seconds)

    async def request(self, subject: str, message: Message, reply: type[M], *, idempotent: bool = False) -> M:
        """Send a command and unwrap its reply envelope.

        A command that no service received (none running yet, or this
        connection failing over to another NATS node) or that one answered
        UNAVAILABLE (full, it did not take it) is resent with back-off for up
        to ``outage_seconds``. A command that may have been received but got
        no answer is resent only when ``idempotent`` (a query, or a command
        carrying an idempotency key): once, its first attempt waiting only
        briefly, since during a fail-over a request can vanish with a node;
        then again while ``outage_seconds`` lasts.
        """
        nc = await self.connect()
        self._check_publish(subject)
        payload = message.model_dump_json().encode()
        # The caller's span, if any, continues in the service that takes the command.
        headers = telemetry.headers()
        service = subjects.service_of(subject)
        backoff = self.backoff()
        full = self.settings.nats.request_timeout
        timeouts = [min(FIRST_ATTEMPT_TIMEOUT, full), full] if idempotent else [full]
        waiting = False
        while True:
            try:
                msg = await nc.request(subject, payload, timeout=timeouts[0], headers=headers)
            except (NoRespondersError, ConnectionReconnectingError) as exc:
                # Nothing received the command (a service restarting, or this
                # connection failing over to another NATS node): safe to resend.
                waiting = waiting or _waiting_out(service, subject, self.outage_seconds)
                if not await backoff.pause():
                    raise ServiceUnavailable(
                        f"no {service} service is running (nothing answered on {subject})"
                    ) from exc
                continue
            except NatsTimeout as exc:
                if len(timeouts) > 1:
                    timeouts.pop(0)
                    continue
                if idempotent and not backoff.expired:
                    continue
                # It may have been applied: not resent; the caller decides.
                raise ServiceUnavailable(f"the {service} service did not answer in time") from exc
            envelope = Reply[reply].model_validate_json(msg.data)  # type: ignore[valid-type]
            if envelope.error is None or envelope.error.code is not ErrorCode.UNAVAILABLE:
                break
            # The instance was full and did not take the command: safe to resend.
            if not await backoff.pause():
                raise ServiceUnavailable(f"the {service} service is overloaded: {envelope.error.message}")
        if not envelope.ok:
            assert envelope.error is not None
            raise error_from_info(envelope.error)
        assert envelope.data is not None
        return envelope.data


def _waiting_out(service: str, subject: str, seconds: float) -> bool:
    # INFO: an agent's or runner's log says why it seems stuck; a prompt stays quiet.
    log.info("No %s service answered %s: resending for up to %g s.", service, subject, seconds)
    return True
