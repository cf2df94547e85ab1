"""The fast lane: hot-path commands straight from nats-py to a group committer.

faststream handles a subscription's messages one at a time, or, with
``max_workers``, through a task group per message; either way its per-message
work costs more than a batched write. The commands that carry the load
(create a run, set a state) therefore skip it: a plain nats-py queue
subscription validates the bytes with the command's pydantic model, hands
the command to the service's group committer without waiting, and the
committer replies when the batch is committed and its events published.
Replies are the same ``Reply`` envelopes as faststream handlers send, with
the same codes: malformed, wrong-typed, oversize or too deeply nested input
(checked before parsing, flowbus.runtime.payload) gets VALIDATION_ERROR, a
refusal its code, a bug INTERNAL.

The commands an instance holds (taken, not yet answered) are bounded by
count and bytes (``nats.fast_lane_max_pending``, ``..._max_pending_bytes``):
past either, a command is answered UNAVAILABLE at once, before it is even
parsed, rather than queued without end; it was not taken, so the client
resends it. nats-py's own queue in front of the callback holds what its
reader parsed before the callback ran (the callback never waits, so only a
burst read at once): it is bounded too, by the same settings but never
below ``BURST_MSGS`` and ``BURST_BYTES``, and what overflows it nats-py
drops (the requester's timeout answers those).

The subjects are also declared on the service's documentation broker, so
they appear in the AsyncAPI document like any other command. A message with
a W3C ``traceparent`` header gets a span that continues the caller's trace,
named by its lane for what it does (``create_flow_run``, ``set_flow_run_state
Running``) and carrying the run's ids; a lane that ``starts_traces`` (run
creation) gives a command without one a span of its own, a new trace, and
hands the span's ``traceparent`` to its committer on the command
(``TracedCommand``), which stores it with the run.

Per command it only adds to the service's ``CommandStats`` (flowbus.runtime.metrics):
its time from arrival to reply and, when refused, its code. No log line at
INFO; at DEBUG, one per command, with its run and under its span.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from opentelemetry import trace
from pydantic import ValidationError

from flowbus.runtime import telemetry
from flowbus.runtime.batching import GroupCommitter
from flowbus.runtime.log_format import run_context
from flowbus.runtime.metrics import CommandStats
from flowbus.runtime.payload import PayloadLimits, PayloadRefused
from flowbus.schemas.common import ErrorCode, ErrorInfo, FlowbusError, Message, Reply, validation_failed

log = logging.getLogger(__name__)

UNAVAILABLE, INVALID, INTERNAL = (
    ErrorCode.UNAVAILABLE.value,
    ErrorCode.VALIDATION_ERROR.value,
    ErrorCode.INTERNAL.value,
)
# The least nats-py's queue in front of the callback holds: a burst that
# arrives in one read must reach the callback, which answers UNAVAILABLE.
BURST_MSGS = 65_536
BURST_BYTES = 64 << 20


def _ids(command: Any) -> dict[str, str]:
    return telemetry.attributes(
        getattr(command, "flow_run_id", None), getattr(command, "flow_id", None), getattr(command, "task_run_id", None)
    )


def _callers_span(msg: Msg) -> trace.Span | None:
    """The caller's span from the message's ``traceparent`` (non-recording): the trace a
    DEBUG line names where this service made no span of its own."""
    parent = telemetry.extract(msg.headers)
    return trace.get_current_span(parent) if parent is not None else None


@dataclass(frozen=True)
class _Lane:
    subject: str
    queue: str
    model: type[Message]
    committer: GroupCommitter[Any, Any]
    # The command's span name, from the command (its state, ...).
    span_name: Callable[[Any], str]
    starts_traces: bool


class TracedCommand(Protocol):
    """A command whose lane starts traces: the fast lane sets its span's ``traceparent``."""

    def set_traceparent(self, value: str | None) -> None: ...


_Envelope = Reply[Any]  # parametrized once: pydantic's lookup per reply costs as much as the reply


def error_reply(info: ErrorInfo) -> bytes:
    return _Envelope(ok=False, error=info).model_dump_json().encode()


def outcome_reply(outcome: Any) -> bytes:
    """The envelope of a committer outcome: a result, a refusal or a bug."""
    if isinstance(outcome, FlowbusError):
        return error_reply(outcome.info())
    if isinstance(outcome, BaseException):
        log.error("unhandled error in a fast-lane command", exc_info=outcome)
        return error_reply(ErrorInfo(code=ErrorCode.INTERNAL, message="internal error; see service logs"))
    return _Envelope(ok=True, data=outcome).model_dump_json().encode()


class FastLane:
    def __init__(
        self,
        service: str,
        limits: PayloadLimits,
        tracer: trace.Tracer,
        max_pending: int = 65_536,
        max_pending_bytes: int = 256 << 20,
        stats: CommandStats | None = None,
    ) -> None:
        self.service = service
        self.stats = stats if stats is not None else CommandStats()
        self.limits = limits
        self.tracer = tracer
        self.max_pending = max_pending
        self.max_pending_bytes = max_pending_bytes
        # Commands taken and not answered yet, over every lane, and their bytes.
        self.pending = 0
        self.pending_bytes = 0
        # Commands answered UNAVAILABLE since the start.
        self.turned_away = 0
        self._lanes: list[_Lane] = []
        # Spans recorded light (SpanRecorder) rather than as SDK spans.
        self._recording = telemetry.recorder(service) is not None
        self._exporting = telemetry.exporting(service)
        self._subscriptions: list[Subscription] = []

    def add(
        self,
        subject: str,
        queue: str,
        model: type[Message],
        committer: GroupCommitter[Any, Any],
        span_name: Callable[[Any], str] | None = None,
        starts_traces: bool = False,
    ) -> None:
        name = subject.rsplit(".", 1)[-1]
        self._lanes.append(_Lane(subject, queue, model, committer, span_name or (lambda _command: name), starts_traces))

    async def start(self, nc: NatsClient) -> None:
        for lane in self._lanes:
            self._subscriptions.append(
                await nc.subscribe(
                    lane.subject,
                    queue=lane.queue,
                    cb=self._callback(nc, lane),
                    pending_msgs_limit=max(self.max_pending, BURST_MSGS),
                    pending_bytes_limit=max(self.max_pending_bytes, BURST_BYTES),
                )
            )

    async def stop(self) -> None:
        """Stop taking commands; those already taken are answered by their committer."""
        for subscription in self._subscriptions:
            try:
                await subscription.unsubscribe()
            except Exception as exc:  # the connection may already be gone
                log.debug("unsubscribe failed: %s", exc)
        self._subscriptions.clear()

    def _callback(self, nc: NatsClient, lane: _Lane) -> Callable[[Msg], Any]:
        stats = self.stats
        recorder = telemetry.recorder(self.service)

        async def on_message(msg: Msg) -> None:
            reply_to = msg.reply
            if not reply_to:
                return  # a command nobody waits for: nothing to answer, nothing to do
            start = time.perf_counter()
            start_ns = time.time_ns()
            size = len(msg.data)
            if self.pending and (
                self.pending >= self.max_pending or self.pending_bytes + size > self.max_pending_bytes
            ):
                self.turned_away += 1
                stats.refused(lane.subject, UNAVAILABLE)
                await nc.publish(reply_to, self._unavailable)
                return
            try:
                self.limits.check(msg.data)
                command = lane.model.model_validate_json(msg.data)
            except PayloadRefused as exc:
                stats.refused(lane.subject, INVALID)
                await nc.publish(reply_to, error_reply(exc.info()))
                return
            except ValidationError as exc:
                stats.refused(lane.subject, INVALID)
                await nc.publish(reply_to, error_reply(validation_failed(exc).info()))
                return
            span = self._span(lane, msg, command)
            # A traced command of a lane that starts no trace, when spans go to the home's files alone:
            # recorded (flowbus.runtime.telemetry.SpanRecorder), not an SDK span.
            light = (
                msg.headers.get("traceparent")
                if recorder is not None and span is None and msg.headers and not lane.starts_traces
                else None
            )

            async def respond(outcome: Any) -> None:
                self.pending -= 1
                self.pending_bytes -= size
                try:
                    await nc.publish(reply_to, outcome_reply(outcome))
                finally:
                    elapsed = time.perf_counter() - start
                    stats.observe(lane.subject, elapsed)
                    if isinstance(outcome, BaseException):
                        code = outcome.code.value if isinstance(outcome, FlowbusError) else INTERNAL
                        stats.refused(lane.subject, code)
                    if log.isEnabledFor(logging.DEBUG):
                        self._debug(lane, command, outcome, elapsed, span or _callers_span(msg))
                    if light is not None and recorder is not None:
                        recorder.record(light, lane.span_name(command), start_ns, time.time_ns(), _ids(command))
                    if span is not None:
                        if lane.starts_traces and not isinstance(outcome, BaseException):
                            # The new run's ids: `flowbus trace` finds its trace by them.
                            span.set_attributes(telemetry.attributes(outcome.id, outcome.flow_id))
                        span.end()

            self.pending += 1
            self.pending_bytes += size
            lane.committer.submit_nowait(command, respond)

        return on_message

    @staticmethod
    def _debug(lane: _Lane, command: Any, outcome: Any, elapsed: float, span: trace.Span | None) -> None:
        """One DEBUG line for one command: its run and its span, so its trace, go with it."""
        code = "ok"
        if isinstance(outcome, BaseException):
            code = outcome.code.value if isinstance(outcome, FlowbusError) else INTERNAL
        run_id = getattr(command, "flow_run_id", None)
        with run_context(run_id if isinstance(run_id, str) else None):
            if span is None:
                log.debug("%s answered %s in %.1f ms", lane.subject, code, elapsed * 1000)
                return
            with trace.use_span(span, end_on_exit=False):
                log.debug("%s answered %s in %.1f ms", lane.subject, code, elapsed * 1000)

    @functools.cached_property
    def _unavailable(self) -> bytes:
        return error_reply(
            ErrorInfo(
                code=ErrorCode.UNAVAILABLE,
                message=f"the {self.service} service has {self.max_pending} commands or"
                f" {self.max_pending_bytes} bytes in hand; not taken, send it again later",
            )
        )

    def _span(self, lane: _Lane, msg: Msg, command: Any) -> trace.Span | None:
        if not self._exporting:
            if lane.starts_traces:
                received = msg.headers.get("traceparent") if msg.headers else None
                command.set_traceparent(telemetry.canonical(received) or telemetry.new_traceparent())
            return None
        if not lane.starts_traces and (self._recording or not msg.headers):
            return None  # recorded, or nothing to continue
        parent = telemetry.extract(msg.headers)
        if parent is None and not lane.starts_traces:
            return None
        span = self.tracer.start_span(
            lane.span_name(command),
            context=parent,
            kind=trace.SpanKind.SERVER,
            attributes=_ids(command),
        )
        if lane.starts_traces:
            command.set_traceparent(telemetry.traceparent(span))
        return span
