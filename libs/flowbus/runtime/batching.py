"""Group commit: many concurrent commands, one transaction, one publish.

A hot-path handler submits its command to a :class:`GroupCommitter`; one
worker processes every waiting command in one transaction, has the outbox
relay publish their events, then answers each. A refusal is one command's
outcome; a failed batch is retried command by command
(docs/architecture.md, "The hot path: fast lane and group commit").
Where the database takes concurrent writers (PostgreSQL), up to
``writers`` batches are written at once; two that touch the same run are
ordered by the database (the later one loses its version race and is
retried command by command).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, Generic, Protocol, TypeVar

from flowbus.db.connection import WriteConnection
from flowbus.db.engine import Database
from flowbus.db.outbox import OutboxBatch
from flowbus.db.tables import utcnow
from flowbus.runtime.metrics import BATCH_BUCKETS, Histogram
from flowbus.runtime.outbox import committer_publishes
from flowbus.schemas.common import FlowbusError

log = logging.getLogger(__name__)

C = TypeVar("C")
R = TypeVar("R")


Respond = Callable[[Any], Awaitable[None]]
C_contra = TypeVar("C_contra", contravariant=True)
R_co = TypeVar("R_co", covariant=True)


class WriteBatch(Protocol[C_contra, R_co]):
    """A use case's view of one batch: read what the commands need, decide each, write.

    A unit of work: the events it emits (``events``) are written with its
    rows and published once it has committed.
    """

    events: OutboxBatch

    async def load(self, commands: Sequence[C_contra]) -> None: ...

    async def apply(self, command: C_contra) -> R_co | FlowbusError: ...

    async def flush(self) -> None: ...


async def write_batch(
    db: Database,
    start: Callable[[WriteConnection, datetime], WriteBatch[C, R]],
    commands: Sequence[C],
) -> list[R | FlowbusError]:
    """Apply ``commands`` in one write transaction with their outbox row
    (and the deletion of the rows the relay has published since the last batch).

    Once committed, the batch's events go to the database's outbox relay, to
    be published from memory: by the group committer before its replies, or,
    outside one, before this returns. Errors propagate, the transaction
    rolled back: retrying is the caller's call.
    """
    outbox = db.require_outbox()
    now = utcnow()
    async with db.write_connection() as conn:
        batch = start(conn, now)
        await batch.load(commands)
        outcomes = [await batch.apply(cmd) for cmd in commands]
        await batch.flush()
        await outbox.stage(conn, batch.events, now)
    outbox.committed(batch.events)
    await outbox.after_commit()
    return outcomes


class GroupCommitter(Generic[C, R]):
    def __init__(
        self,
        name: str,
        process: Callable[[Sequence[C]], Awaitable[list[R | FlowbusError]]],
        after_commit: Callable[[], Awaitable[None]] | None = None,
        max_batch: int = 256,
        pipeline: int = 4,
        writers: int = 1,
    ) -> None:
        self.name = name
        self._in_flight = asyncio.Semaphore(max(pipeline, writers))
        self._writers = asyncio.Semaphore(writers)
        self._writer_count = writers
        self._finishers: set[asyncio.Task[None]] = set()
        self._writing: set[asyncio.Task[None]] = set()
        self._process = process
        self._after_commit = after_commit
        self._max_batch = max_batch
        # Each entry: the command and where its outcome goes (a future, or a
        # coroutine function that replies, so a caller need not wait for it).
        self._queue: asyncio.Queue[tuple[C, asyncio.Future[R] | Respond]] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        # Commands per batch, for /metrics.
        self.batch_sizes = Histogram(BATCH_BUCKETS)

    def _ensure_worker(self) -> None:
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._run(), name=f"group-commit-{self.name}")

    async def submit(self, command: C) -> R:
        """Queue a command; return its result or raise its refusal."""
        self._ensure_worker()
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((command, future))
        return await future

    def submit_nowait(self, command: C, respond: Respond) -> None:
        """Queue a command; ``respond`` gets its result or refusal (an exception) later."""
        self._ensure_worker()
        self._queue.put_nowait((command, respond))

    async def close(self) -> None:
        """Finish what is queued, then stop."""
        if self._worker is not None and not self._worker.done():
            await self._queue.join()
        await asyncio.gather(*self._writing, return_exceptions=True)
        await asyncio.gather(*self._finishers, return_exceptions=True)
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
            self._worker = None

    async def _run(self) -> None:
        committer_publishes()  # _finish publishes each batch's events, before its replies
        while True:
            batch = [await self._queue.get()]
            # A slot first (the finisher frees it): with a pipeline of one, the
            # previous batch's events and replies leave before this batch is
            # written, and what arrives meanwhile joins this batch.
            await self._in_flight.acquire()
            await self._writers.acquire()
            while len(batch) < self._max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            self.batch_sizes.observe(len(batch))
            # With one writer, written here and now (what arrives meanwhile
            # waits for the next batch); with more, beside the batches under way.
            writing = asyncio.create_task(self._write(batch))
            self._writing.add(writing)
            writing.add_done_callback(self._writing.discard)
            if self._writer_count == 1:
                await asyncio.gather(writing, return_exceptions=True)

    async def _write(self, batch: list[tuple[C, asyncio.Future[R] | Respond]]) -> None:
        try:
            await self._handle(batch)
        except BaseException:
            self._in_flight.release()
            raise
        finally:
            for _ in batch:
                self._queue.task_done()

    async def _handle(self, batch: list[tuple[C, asyncio.Future[R] | Respond]]) -> None:
        commands = [cmd for cmd, _to in batch]
        outcomes: list[Any]
        try:
            outcomes = list(await self._process(commands))
        except Exception as exc:
            if len(batch) == 1:
                outcomes = [exc]
            else:
                log.info("%s: batch of %d failed (%s); retrying one by one", self.name, len(batch), exc)
                outcomes = []
                for cmd in commands:
                    try:
                        outcomes.extend(await self._process([cmd]))
                    except Exception as single:
                        outcomes.append(single)
        finally:
            self._writers.release()
        # Publishing and replying overlap the next batch's writes (up to
        # ``pipeline`` batches). Finishers run in batch order: the relay's
        # lock is first come, first served.
        finisher = asyncio.create_task(self._finish(batch, outcomes))
        self._finishers.add(finisher)
        finisher.add_done_callback(self._finishers.discard)

    async def _finish(self, batch: list[tuple[C, asyncio.Future[R] | Respond]], outcomes: list[Any]) -> None:
        try:
            if self._after_commit is not None:
                # Events are in the stream before anyone hears of the change.
                await self._after_commit()
            await self._deliver(batch, outcomes)
        finally:
            self._in_flight.release()

    async def _deliver(self, batch: list[tuple[C, asyncio.Future[R] | Respond]], outcomes: list[Any]) -> None:
        for (_cmd, to), outcome in zip(batch, outcomes, strict=True):
            if not isinstance(to, asyncio.Future):
                try:
                    await to(outcome)
                except Exception:
                    log.exception("%s: could not deliver an outcome", self.name)
            elif to.done():  # the requester went away
                continue
            elif isinstance(outcome, BaseException):
                to.set_exception(outcome)
            else:
                to.set_result(outcome)
