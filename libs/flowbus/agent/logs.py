"""Shipping log records to the backend in batches.

A logging handler (safe to call from any thread) feeds a queue; a task on
the shipper's loop publishes ``LogBatch`` messages to JetStream on
``flowbus.logs.<flow_run_id>``. The state service persists them; watchers
read them straight from the stream.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

from nats.js import JetStreamContext

from flowbus import subjects
from flowbus.schemas.runs import LogBatch, LogRecord
from flowbus.sdk import context

BATCH = 100
FLUSH_INTERVAL = 0.2


class LogShipper(logging.Handler):
    def __init__(self, js: JetStreamContext, flow_run_id: str, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(level=logging.INFO)
        self.js = js
        self.flow_run_id = flow_run_id
        self.loop = loop
        self.queue: asyncio.Queue[LogRecord] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            item = LogRecord(
                flow_run_id=self.flow_run_id,
                task_run_id=context.get("task_run_id"),
                timestamp=datetime.fromtimestamp(record.created, UTC),
                name=record.name[:255],
                level=record.levelname if record.levelname in _LEVELS else "INFO",
                message=self.format(record)[:100_000],
            )
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except Exception:  # a log call must never break the flow
            self.handleError(record)

    def log(self, level: int, message: str, name: str = "flowbus.agent") -> None:
        """Ship a record written by flowbus itself (agent or runner)."""
        self.queue.put_nowait(
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
            # Shielded: cancelling the loop never drops records taken off the queue.
            await asyncio.shield(self.publish_pending())

    async def publish_pending(self) -> None:
        """Publish everything queued so far (call before the run's final state)."""
        async with self._lock:
            while not self.queue.empty():
                records = [self.queue.get_nowait() for _ in range(min(BATCH, self.queue.qsize()))]
                payload = LogBatch(records=records).model_dump_json().encode()
                await self.js.publish(subjects.logs(self.flow_run_id), payload)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self.publish_pending()


_LEVELS = {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}
