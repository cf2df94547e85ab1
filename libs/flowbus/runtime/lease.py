"""Leases: each time-driven loop runs in one service instance at a time.

A lease is one key of the KV bucket ``flowbus_leases``
(``subjects.LEASES_BUCKET``, created with the streams): its value names the
holder (``host:pid:token``). ``try_acquire`` creates the key, which succeeds
only while it is absent (never written, expired, or deleted); ``refresh``
rewrites it with a compare-and-set on the revision it last wrote, so a lease
that someone else took is noticed, never overwritten. The bucket's max_age
(``settings.lease.ttl_seconds``) removes a key its holder stopped
refreshing, by the server's clock: no instance trusts another's clock.
``release`` deletes the key, again only at the revision it wrote, so a
successor takes over at once after a clean shutdown instead of after the TTL.

``leased(name, loop)`` wraps a service loop: in standby it tries to take the
lease every ttl/3; while it holds the lease it runs the loop and refreshes
every ttl/3; when a refresh fails (someone else holds it, or NATS did not
confirm it for nearly a TTL) it cancels the loop and returns to standby.
Correctness never depends on the lease (docs/architecture.md, "Leases"):
it only keeps the work from being done twice.

Reads and writes: ``$KV.flowbus_leases.<lease name>`` only.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
import weakref
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import nats.errors
from nats.aio.client import Client as NatsClient
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from flowbus import subjects
from flowbus.runtime.service import Loop, ServiceContext, cancel_and_wait

log = logging.getLogger(__name__)
T = TypeVar("T")

# A holder gives its lease up this share of the TTL before the server could
# expire the key: time to cancel its loop, and slack for the two clocks' rates.
MARGIN_SHARE = 1 / 6
# A holder refreshes (and a standby instance retries) this many times per TTL.
REFRESHES_PER_TTL = 3
# What an unreachable or failing NATS raises: the lease is unconfirmed, not lost.
_UNREACHABLE = (nats.errors.Error, TimeoutError, OSError)

# Every Lease of this process, for held_leases() and the status commands.
_LEASES: weakref.WeakSet[Lease] = weakref.WeakSet()


def new_holder() -> str:
    """A holder name unique to one Lease object: the host and pid say who, the token which one."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Lease:
    """One named lease, held (or wanted) by this process in the leases bucket."""

    def __init__(self, kv: KeyValue, name: str, ttl: float, holder: str | None = None) -> None:
        self.name = name
        self.holder = holder or new_holder()
        # The bucket's max_age: how long the key outlives its last write.
        self.ttl = ttl
        self._kv = kv
        self._value = self.holder.encode()
        # The revision this holder last wrote; None while it holds nothing.
        self._revision: int | None = None
        # Monotonic time until which the lease is surely ours: the send time of
        # the last confirmed write plus the TTL minus the margin.
        self._valid_until = 0.0
        _LEASES.add(self)

    @property
    def held(self) -> bool:
        return self._revision is not None and time.monotonic() < self._valid_until

    @property
    def remaining(self) -> float:
        """Seconds the lease is surely still ours (0 when not held)."""
        return max(0.0, self._valid_until - time.monotonic()) if self._revision is not None else 0.0

    @property
    def refresh_interval(self) -> float:
        return self.ttl / REFRESHES_PER_TTL

    async def try_acquire(self) -> bool:
        """Take the lease if nobody holds it; True if this holder has it now."""
        if self._revision is not None:
            return await self.refresh()
        sent = time.monotonic()
        try:
            revision = await self._bounded(self._kv.create(self.name, self._value), self.refresh_interval)
        except KeyWrongLastSequenceError:
            return await self._reclaim()
        except _UNREACHABLE as exc:
            log.debug("lease %s: cannot reach NATS to acquire it: %r", self.name, exc)
            return False
        self._confirm(revision, sent)
        return True

    async def refresh(self) -> bool:
        """Rewrite the key at the revision this holder wrote; False once the lease is lost.

        A refresh NATS did not confirm keeps the lease while it is surely
        still ours (``remaining``) and loses it after.
        """
        if self._revision is None:
            return False
        if not self.held:
            return self._lose("not confirmed for nearly a TTL")
        sent = time.monotonic()
        try:
            revision = await self._bounded(self._kv.update(self.name, self._value, last=self._revision), self.remaining)
        except KeyWrongLastSequenceError:
            # Someone else's write, or our own whose acknowledgement was lost.
            self._revision = None
            return await self._reclaim() or self._lose("someone else holds it")
        except _UNREACHABLE as exc:
            if self.held:
                log.warning("lease %s: refresh not confirmed (%r); retrying", self.name, exc)
                return True
            return self._lose(f"not confirmed for nearly a TTL ({exc!r})")
        self._confirm(revision, sent)
        return True

    async def release(self) -> None:
        """Delete the key if this holder still wrote its last revision (clean shutdown)."""
        revision, self._revision = self._revision, None
        if revision is None:
            return
        try:
            await self._bounded(self._kv.delete(self.name, last=revision), self.refresh_interval)
        except _UNREACHABLE as exc:
            # Someone else's by now, or NATS is away: the TTL frees it either way.
            log.debug("lease %s: not released (%r)", self.name, exc)
        else:
            log.info("lease %s released by %s", self.name, self.holder)

    async def _reclaim(self) -> bool:
        """Adopt the key if it names this holder (a write whose reply was lost), by rewriting it."""
        sent = time.monotonic()
        try:
            entry = await self._bounded(self._kv.get(self.name), self.refresh_interval)
            if entry.value != self._value or entry.revision is None:
                return False
            revision = await self._bounded(
                self._kv.update(self.name, self._value, last=entry.revision), self.refresh_interval
            )
        except KeyNotFoundError:
            return False
        except _UNREACHABLE as exc:
            log.debug("lease %s: cannot reclaim it: %r", self.name, exc)
            return False
        self._confirm(revision, sent)
        return True

    def _confirm(self, revision: int, sent: float) -> None:
        self._revision = revision
        # Measured from before the write: the server stored it later, so its expiry is later still.
        self._valid_until = sent + self.ttl * (1 - MARGIN_SHARE)

    def _lose(self, why: str) -> bool:
        self._revision = None
        log.warning("lease %s lost by %s: %s", self.name, self.holder, why)
        return False

    @staticmethod
    async def _bounded(call: Coroutine[Any, Any, T], timeout: float) -> T:
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a
        # cancellation that arrives as the call completes, and a service
        # stopping would then wait for this loop forever.
        async with asyncio.timeout(max(timeout, 0.001)):
            return await call


def leased(name: str, loop: Loop) -> Loop:
    """``loop``, run only while this instance holds the lease ``name``.

    In standby, tries to take the lease every ttl/3. While holding it, runs
    ``loop(ctx)`` as a task and refreshes every ttl/3; a lost lease cancels
    the task and goes back to standby. Cancelling the wrapper (shutdown)
    cancels the loop and releases the lease. An error of the loop releases
    the lease and propagates (the service restarts the wrapper).
    """

    async def hold_lease(ctx: ServiceContext) -> None:
        assert ctx.nc is not None, "the NATS connection is up before the loops start"
        kv = await ctx.nc.jetstream().key_value(subjects.LEASES_BUCKET)
        lease = Lease(kv, name, ctx.settings.lease.ttl_seconds)
        try:
            while True:
                if not await lease.try_acquire():
                    await asyncio.sleep(lease.refresh_interval)
                    continue
                log.info("%s: lease %s taken by %s", ctx.name, name, lease.holder)
                if await _run_while_held(lease, loop, ctx):
                    return
        finally:
            await lease.release()

    # The service names the loop's task after it.
    hold_lease.__name__ = getattr(loop, "__name__", name)
    return hold_lease


async def _run_while_held(lease: Lease, loop: Loop, ctx: ServiceContext) -> bool:
    """Run ``loop(ctx)`` while the lease holds; True if the loop ended on its own."""
    task = asyncio.create_task(_call(loop, ctx), name=f"{ctx.name}-{lease.name}")
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=min(lease.refresh_interval, lease.remaining))
            if done:
                task.result()  # the loop's error, if any, propagates
                return True
            if not await lease.refresh():
                return False
    finally:
        if not task.done():
            await cancel_and_wait(task)
            if not task.cancelled() and task.exception() is not None:
                log.warning(
                    "%s: loop of lease %s failed while stopping", ctx.name, lease.name, exc_info=task.exception()
                )


async def _call(loop: Callable[[ServiceContext], Awaitable[None]], ctx: ServiceContext) -> None:
    await loop(ctx)


@dataclass(frozen=True)
class LeaseStatus:
    """Who holds a lease, as the bucket says, and whether this process does."""

    name: str
    # The holder's name in the bucket (``host:pid:token``); None when nobody holds it.
    holder: str | None
    held_here: bool


def held_leases() -> dict[str, bool]:
    """This process's leases by name, and whether it holds each."""
    status: dict[str, bool] = {}
    for lease in list(_LEASES):
        status[lease.name] = status.get(lease.name, False) or lease.held
    return status


async def lease_status(source: ServiceContext | NatsClient, name: str) -> LeaseStatus:
    """The lease ``name``: its holder in the bucket, and whether this process holds it.
    ``source``: a started service's context (its NATS connection) or a connection."""
    nc = source.nc if isinstance(source, ServiceContext) else source
    assert nc is not None, "the service has started"
    kv = await nc.jetstream().key_value(subjects.LEASES_BUCKET)
    try:
        entry = await kv.get(name)
    except KeyNotFoundError:
        holder = None
    else:
        holder = entry.value.decode() if entry.value else None
    return LeaseStatus(name=name, holder=holder, held_here=held_leases().get(name, False))
