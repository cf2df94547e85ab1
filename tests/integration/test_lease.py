"""Leases in the flowbus_leases KV bucket: one holder at a time, taken over
when the holder dies, handed over at once on release; ``leased`` runs a loop
only while its instance holds the lease."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import TypeVar, cast

import pytest
from nats.aio.client import Client
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from flowbus.runtime.lease import Lease, held_leases, lease_status, leased
from flowbus.runtime.nats import ensure_lease_bucket
from flowbus.runtime.service import Loop, ServiceContext
from flowbus.settings import LeaseSettings, Settings
from tests.helpers import unique
from tests.helpers.bus import raw_connect
from tests.helpers.waiting import eventually

TTL = 1.5
T = TypeVar("T")


@pytest.fixture
def lease_settings(nats_url: str) -> Settings:
    return Settings(nats_url=nats_url, lease=LeaseSettings(ttl_seconds=TTL))


@pytest.fixture
async def connections(nats_url: str, lease_settings: Settings) -> AsyncIterator[list[Client]]:
    """Two connections (two contenders) to the module's server, the bucket created."""
    conns = [await raw_connect(nats_url) for _ in range(2)]
    await ensure_lease_bucket(conns[0].jetstream(), lease_settings)
    try:
        yield conns
    finally:
        for conn in conns:
            if not conn.is_closed:
                await conn.close()


async def bucket(conn: Client, settings: Settings) -> KeyValue:
    return await ensure_lease_bucket(conn.jetstream(), settings)


async def contenders(conns: list[Client], settings: Settings, name: str) -> list[Lease]:
    return [Lease(await bucket(conn, settings), name, TTL) for conn in conns]


async def test_the_bucket_is_created_idempotently_and_adopts_a_changed_ttl(
    nc: Client, lease_settings: Settings
) -> None:
    kv = await ensure_lease_bucket(nc.jetstream(), lease_settings)
    again = await ensure_lease_bucket(nc.jetstream(), lease_settings)
    status = await again.status()
    assert (status.ttl, status.history) == (TTL, 1)
    longer = lease_settings.model_copy(update={"lease": LeaseSettings(ttl_seconds=TTL * 2)})
    assert (await (await ensure_lease_bucket(nc.jetstream(), longer)).status()).ttl == TTL * 2
    assert (await (await ensure_lease_bucket(nc.jetstream(), lease_settings)).status()).ttl == TTL
    assert (await kv.status()).ttl == TTL


async def test_of_two_contenders_exactly_one_holds(connections: list[Client], lease_settings: Settings) -> None:
    name = unique("lease")
    first, second = await contenders(connections, lease_settings, name)
    won = await asyncio.gather(first.try_acquire(), second.try_acquire())
    assert sorted(won) == [False, True]
    holder, standby = (first, second) if won[0] else (second, first)
    assert holder.held
    assert not standby.held
    assert not await standby.try_acquire()
    status = await lease_status(connections[0], name)
    assert status.holder == holder.holder
    assert status.held_here  # both contenders live in this process
    assert held_leases()[name] is True


async def test_a_refresh_fails_once_someone_else_took_the_lease(
    connections: list[Client], lease_settings: Settings
) -> None:
    name = unique("lease")
    first, second = await contenders(connections, lease_settings, name)
    assert await first.try_acquire()
    assert await first.refresh()
    # The key goes (as when it expires) and the other contender takes it.
    await (await bucket(connections[1], lease_settings)).delete(name)
    assert await second.try_acquire()
    assert not await first.refresh()
    assert not first.held
    assert second.held
    assert (await lease_status(connections[0], name)).holder == second.holder


async def test_a_refreshed_lease_outlives_its_ttl(connections: list[Client], lease_settings: Settings) -> None:
    name = unique("lease")
    first, second = await contenders(connections, lease_settings, name)
    assert await first.try_acquire()
    for _ in range(6):  # two TTLs of the holder's own refresh cadence
        await asyncio.sleep(first.refresh_interval)
        assert await first.refresh()
        assert not await second.try_acquire()


async def test_a_dead_holders_lease_expires_and_the_other_takes_it(
    connections: list[Client], lease_settings: Settings
) -> None:
    name = unique("lease")
    first, second = await contenders(connections, lease_settings, name)
    assert await first.try_acquire()
    # The holder dies: its connection goes, it never refreshes or releases.
    await connections[0].close()
    assert not await second.try_acquire()
    await eventually(second.try_acquire, "the other contender takes the expired lease", timeout=10 * TTL)
    assert (await lease_status(connections[1], name)).holder == second.holder
    assert not await first.refresh()


async def test_a_released_lease_is_taken_at_once(connections: list[Client], lease_settings: Settings) -> None:
    name = unique("lease")
    first, second = await contenders(connections, lease_settings, name)
    assert await first.try_acquire()
    await first.release()
    assert not first.held
    assert await second.try_acquire()
    # A stale release (the lease is someone else's now) leaves it alone.
    await first.release()
    assert await second.refresh()
    # After a release and re-creation the first can take it again once it is free.
    await second.release()
    assert await first.try_acquire()


def loop_context(conn: Client, settings: Settings, name: str) -> ServiceContext:
    """What ``leased`` reads of a service context: its name, settings and NATS connection."""
    return cast(ServiceContext, SimpleNamespace(name=name, nc=conn, settings=settings))


async def serve(loop: Loop, ctx: ServiceContext) -> None:
    """Run a service loop as the service would, as a task of its own."""
    await loop(ctx)


class Recorder:
    """A service loop that records who runs it and when it is cancelled."""

    def __init__(self) -> None:
        self.running: set[str] = set()
        self.cancelled: set[str] = set()

    async def __call__(self, ctx: ServiceContext) -> None:
        self.running.add(ctx.name)
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.running.discard(ctx.name)
            self.cancelled.add(ctx.name)
            raise


async def test_only_one_wrapped_loop_runs_and_the_other_takes_over_when_its_holder_dies(
    connections: list[Client], lease_settings: Settings
) -> None:
    name, recorder = unique("lease"), Recorder()
    wrapped = leased(name, recorder)
    tasks = {
        who: asyncio.create_task(serve(wrapped, loop_context(conn, lease_settings, who)))
        for who, conn in zip(("a", "b"), connections, strict=True)
    }
    try:
        running = await eventually(lambda: _now(set(recorder.running)), "one wrapped loop runs")
        assert len(running) == 1
        (first,) = running
        status = await lease_status(connections[1], name)
        assert status.holder is not None
        # Two lease periods later the other still waits.
        for _ in range(2 * 3):
            await asyncio.sleep(TTL / 3)
            assert recorder.running == {first}
        # The holder's connection dies: its loop stops before the lease can
        # expire, and the other instance's loop starts.
        await connections[0 if first == "a" else 1].close()
        second = "b" if first == "a" else "a"
        await eventually(lambda: _now(recorder.running), "the other loop runs", until=lambda r: r == {second})
        assert first in recorder.cancelled
    finally:
        for task in tasks.values():
            task.cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)


async def test_a_lost_lease_cancels_the_loop_and_cancelling_the_wrapper_releases_it(
    connections: list[Client], lease_settings: Settings
) -> None:
    name, recorder = unique("lease"), Recorder()
    task = asyncio.create_task(serve(leased(name, recorder), loop_context(connections[0], lease_settings, "a")))
    try:
        await eventually(lambda: _now(recorder.running), "the wrapped loop runs")
        # Someone else takes the key: the holder's next refresh fails.
        kv = await bucket(connections[1], lease_settings)
        await kv.delete(name)
        await kv.create(name, b"thief")
        await eventually(lambda: _now(recorder.cancelled), "the loop is cancelled", until=lambda c: c == {"a"})
        assert not held_leases()[name]
        # The thief never refreshes: once its key expires the wrapper takes the lease back.
        await eventually(lambda: _now(recorder.running), "the loop runs again", timeout=10 * TTL)
        assert held_leases()[name]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    # Shutdown released the lease: the key is gone at once.
    with pytest.raises(KeyNotFoundError):
        await (await bucket(connections[1], lease_settings)).get(name)


async def test_a_wrapped_loop_that_ends_releases_its_lease(connections: list[Client], lease_settings: Settings) -> None:
    name, ran = unique("lease"), asyncio.Event()

    async def once(ctx: ServiceContext) -> None:
        ran.set()

    await leased(name, once)(loop_context(connections[0], lease_settings, "a"))
    assert ran.is_set()
    assert (await lease_status(connections[0], name)).holder is None


async def _now(value: T) -> T:
    return value
