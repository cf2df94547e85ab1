"""Waiting for what the system does on its own, where no event can be awaited.

``eventually()`` polls a probe at a short interval until its value passes a
check, within a time limit, and fails naming what it waited for and the last
value it saw. ``wait_until()`` is its blocking form, for synchronous tests.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")

INTERVAL = 0.05


async def eventually(
    probe: Callable[[], Awaitable[T]],
    what: str,
    *,
    until: Callable[[T], object] = bool,
    timeout: float = 30,
    interval: float = INTERVAL,
    ignoring: tuple[type[Exception], ...] = (),
) -> T:
    """Await ``probe()`` every ``interval`` seconds until ``until(value)`` is true; return that value.

    An exception of a type in ``ignoring`` counts as "not yet" (e.g. a message
    not stored yet); any other propagates at once.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: object = None
    while True:
        try:
            value = await probe()
        except ignoring as exc:
            last = exc
        else:
            if until(value):
                return value
            last = value
        if loop.time() >= deadline:
            raise AssertionError(f"{what}: still not so after {timeout:g} s; last seen: {_short(last)}")
        await asyncio.sleep(interval)


def wait_until(probe: Callable[[], T], what: str, **options: Any) -> T:
    """``eventually()`` for synchronous code (no event loop running): ``probe`` is a plain call;
    ``options`` are eventually()'s (``until``, ``timeout``, ``interval``, ``ignoring``)."""

    async def probe_async() -> T:
        return probe()

    value: T = asyncio.run(eventually(probe_async, what, **options))
    return value


def _short(value: object, limit: int = 500) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
