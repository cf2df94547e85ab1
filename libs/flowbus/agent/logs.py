"""Shipping log records to the backend in batches.

A logging handler (safe to call from any thread) feeds a queue; a task on
the shipper's loop publishes ``LogBatch`` messages to JetStream on
``flowbus.logs.<flow_run_id>``, with the W3C context of the span that
started the shipper (the run's, in the agent and the runner) in their
headers. The state service persists them; watchers read them straight from the stream.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from datetime import UTC, datetime

from nats.errors import Error as NatsError
from nats.js import JetStreamContext

from flowbus import subjects
from flowbus.runtime import telemetry
from flowbus.schemas.runs import LOG_MESSAGE_MAX_CHARS, LogRecord, pack_log_batch
from flowbus.sdk import context

BATCH = 100
FLUSH_INTERVAL = 0.2
# A NATS fail-over (stream leader election) takes seconds: wait that long at the end.
STOP_PATIENCE = 30.0
log = logging.getLogger(__name__)


class LogShipper(logging.Handler):
    def __init__(self, js: JetStreamContext, flow_run_id: str, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(level=logging.INFO)
        self.js = js
        self.flow_run_id = flow_run_id
        self.loop = loop
        # Touched only on the loop's thread (emit hops there with call_soon_threadsafe).
        self.pending: deque[LogRecord] = deque()
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        # Batches JetStream did not take (each is tried again), for the agent's /metrics.
        self.publish_failures = 0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            item = LogRecord(
                flow_run_id=self.flow_run_id,
                task_run_id=context.get("task_run_id"),
                timestamp=datetime.fromtimestamp(record.created, UTC),
                name=record.name[:255],
                level=record.levelname if record.levelname in _LEVELS else "INFO",
                message=self.format(record)[:LOG_MESSAGE_MAX_CHARS],
            )
            self.loop.call_soon_threadsafe(self.pending.append, item)
        except Exception:  # a log call must never break the flow
            self.handleError(record)

    def log(self, level: int, message: str, name: str = "flowbus.agent") -> None:
        """Ship a record written by flowbus itself (agent or runner)."""
        self.pending.append(
            LogRecord(
                flow_run_id=self.flow_run_id,
                timestamp=datetime.now(UTC),
                name=name,
                level=logging.getLevelName(level),
                message=message,
            )
        )

    def start(self) -> None:
        self._task = self.loop.create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL)
            try:
                # Shielded: cancelling the loop never interrupts a batch in flight.
                await asyncio.shield(self.publish_pending())
            except NatsError as exc:
                log.warning("log shipping paused (%s); records kept for the next try", type(exc).__name__)

    async def publish_pending(self) -> None:
        """Publish everything queued so far. A batch leaves the queue once
        JetStream stored it, so a NATS fail-over delays logs but loses none."""
        async with self._lock:
            while self.pending:
                payload, count = pack_log_batch(list(itertools.islice(self.pending, BATCH)))
                try:
                    await self.js.publish(subjects.logs(self.flow_run_id), payload, headers=telemetry.headers())
                except NatsError:
                    self.publish_failures += 1
                    raise
                for _ in range(count):
                    self.pending.popleft()

    async def stop(self, patience: float = STOP_PATIENCE) -> None:
        """Stop the background shipping and publish what is left."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self.drain(patience)

    async def drain(self, patience: float = STOP_PATIENCE) -> None:
        """Publish everything queued, retrying through a fail-over for up to ``patience`` seconds."""
        deadline = self.loop.time() + patience
        while True:
            try:
                await self.publish_pending()
                return
            except NatsError:
                if self.loop.time() > deadline:
                    log.error("dropping %d log records of flow run %s", len(self.pending), self.flow_run_id)
                    return
                await asyncio.sleep(0.5)


_LEVELS = {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}
