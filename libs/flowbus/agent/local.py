"""The local agent: takes due runs from the run queues and runs them here.

It long-polls a durable consumer over its label sets' run queues (recreated
if it disappears), claims each run (Submitted at its queued version: one
claim wins), starts it in a process of its own (one forked and connected
ahead of demand when there is one: flowbus.agent.warm_pool) and, on a
cancel, stops that process; whatever fails between the claim and the process's start returns
the run to Scheduled; ``limit`` caps the runs in hand (docs/architecture.md,
"Agent and runner").
With flow roots it fails, unstarted, a run whose flow's code lies outside
them; it never hands a flow's process the run config's denied variables
(docs/security.md). With ``agent.metrics_port`` it serves its ``/metrics``
(runs claimed, started, finished, executing; log publish failures; memory,
event-loop lag) on that port of ``metrics.host``; its log lines carry the
run each is about (flowbus.runtime.log_format).

Reads: ``flowbus.runq.<key>`` (RUNQ stream), ``flowbus.evt.flow_run.<id>.state``.
Writes: ``flowbus.cmd.heartbeat.register_agent``, ``flowbus.hb.agent.<id>``,
``flowbus.cmd.state.set_flow_run_state``, ``flowbus.logs.<run>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from pydantic import ValidationError

from flowbus import subjects
from flowbus.agent.flow_roots import OutsideFlowRoots, check_roots_exist, check_storage, resolve_roots
from flowbus.agent.launcher import FlowProcess, Launcher
from flowbus.agent.logs import LogShipper
from flowbus.agent.runner import set_state_surviving_lost_reply, settle_unfinished_run
from flowbus.agent.warm_pool import WarmPool
from flowbus.bus_auth import BusRole
from flowbus.client import AsyncClient, ServiceUnavailable
from flowbus.run_env import allowed_run_env
from flowbus.runtime import telemetry
from flowbus.runtime.consumer import DurablePull
from flowbus.runtime.log_format import configure_logging, current_service, run_context
from flowbus.runtime.metrics import ComponentMetrics, Families
from flowbus.runtime.metrics_http import listen, process_app, serve, url_of
from flowbus.runtime.nats import nats_servers
from flowbus.schemas.agents import AgentHeartbeat, AgentOut, RegisterAgent
from flowbus.schemas.common import Conflict, FlowbusError, NotFound, VersionLockingError
from flowbus.schemas.runs import FlowRunDetail, RunQueued, StateChanged
from flowbus.settings import FLOW_ROOTS_ENV, Settings
from flowbus.states import StateType, is_finished

log = logging.getLogger("flowbus.agent")
CONSUMER_IDLE_EXPIRY = timedelta(days=1)


# Runs fetched per request: a few at a time keeps claims concurrent without
# taking more than the agent has room for.
FETCH_BATCH = 16
# How long one fetch long-polls; it bounds how quickly a stop is noticed.
FETCH_WAIT = 1.0
# Shared by every agent with the same labels, so it must not cap them: each
# agent limits itself by fetching only as many runs as it has free slots.
CONSUMER_MAX_ACK_PENDING = 10_000
# How long a run-queue message may stay unacknowledged before it is delivered again.
ACK_WAIT_SECONDS = 30
# A claimed run whose process fails to start is returned to Scheduled; the
# third failure in a row here ends it Failed instead, so that a fault that
# repeats (not an outage) does not send the run round the queue for ever.
MAX_START_ATTEMPTS = 3


@dataclass
class AgentStats:
    """What the agent did since it started, for its /metrics."""

    claimed: int = 0  # claims won (Scheduled -> Submitted by this agent)
    claims_lost: int = 0  # another agent (or a cancel) was first
    started: int = 0  # flow processes started
    returned: int = 0  # claimed runs whose process did not start (handed back, or failed at the last attempt)
    finished: int = 0  # flow processes that ended (whatever their exit code)
    failed_exits: int = 0  # of those, the ones that exited non-zero or by a signal
    executing: int = 0  # flow processes running now
    log_publish_failures: int = 0  # log batches JetStream did not take (each is tried again)


class LocalAgent:
    def __init__(
        self,
        settings: Settings | None = None,
        labels: list[str] | None = None,
        name: str | None = None,
        hostname_label: bool = True,
        limit: int | None = None,
        flow_roots: Sequence[str | Path] | None = None,
    ) -> None:
        self.settings = settings or Settings()
        telemetry.configure(self.settings, "agent")
        roots = flow_roots if flow_roots is not None else self.settings.agent.flow_roots
        check_roots_exist(roots)
        # Real paths, so that a root reached through a symlink still matches.
        self.flow_roots = resolve_roots(roots)
        chosen = set(labels if labels is not None else self.settings.agent.labels)
        if hostname_label and not self.settings.agent.no_hostname_label:
            chosen.add(socket.gethostname())
        self.labels = sorted(chosen)
        self.name = name or self.settings.agent.name or f"local-{socket.gethostname()}"
        self.limit = limit if limit is not None else self.settings.agent.max_concurrent_runs
        if self.limit < 1:
            raise ValueError(f"An agent's limit must be at least 1, got {self.limit}.")
        self.id = str(uuid.uuid4())
        # Everything but claims waits out a stack restart (nats.outage_retry_seconds).
        self.client = AsyncClient(
            self.settings, role=BusRole.AGENT, outage_seconds=self.settings.nats.outage_retry_seconds
        )
        # Claims (on the same connection, from run()) give up as quickly as a
        # prompt: the run-queue message is handed back and comes again, and a
        # claim must end well within its ack wait, or a second delivery of the
        # message could be claimed meanwhile and taken for our own.
        self._claims: AsyncClient | None = None
        # Failed starts per run, while the run keeps coming back here.
        self._failed_starts: dict[str, int] = {}
        self._launcher = Launcher()
        # Flow processes started and connected ahead of the runs they will take.
        self._warm = WarmPool(self._launcher.context, self.settings.agent.warm_processes, self._agent_env)
        # Runs being claimed or executed; never more than `limit`.
        self._active: set[asyncio.Task[None]] = set()
        self._slot_freed = asyncio.Event()
        self._stop = asyncio.Event()
        self.consumer: DurablePull | None = None
        # Whether each flow seen was registered by Prefect 1.x (its runs are left to Prefect agents).
        self._prefect_flows: dict[str, bool] = {}
        self.stats = AgentStats()
        self.metrics = ComponentMetrics("agent", self.settings.metrics.scrape_timeout_seconds)
        self.metrics.add(self._collect)
        # Where /metrics is served, once run() started it (agent.metrics_port set).
        self.metrics_url: str | None = None

    def stop(self) -> None:
        """Take no new runs; those running finish, then ``run()`` returns."""
        self._stop.set()

    @property
    def running(self) -> int:
        return len(self._active)

    def _collect(self, f: Families) -> None:
        stats = self.stats
        info = f.gauge("flowbus_agent_info", "1, with this agent's id and name.", ["agent_id", "agent"])
        info.add(1, self.id, self.name)
        f.gauge("flowbus_agent_runs_executing", "Flow processes this agent runs now.").add(stats.executing)
        f.gauge("flowbus_agent_limit", "Most flow runs this agent takes at once.").add(self.limit)
        f.counter("flowbus_agent_runs_claimed", "Runs this agent claimed (Scheduled -> Submitted).").add(stats.claimed)
        f.counter("flowbus_agent_claims_lost", "Claims another agent (or a cancel) was first to.").add(
            stats.claims_lost
        )
        f.counter("flowbus_agent_runs_started", "Flow processes started.").add(stats.started)
        f.counter(
            "flowbus_agent_runs_unstarted",
            "Claimed runs whose process did not start (handed back to the queue, or Failed at the last attempt).",
        ).add(stats.returned)
        finished = f.counter("flowbus_agent_runs_finished", "Flow processes that ended, by exit.", ["exit"])
        finished.add(stats.finished - stats.failed_exits, "zero")
        finished.add(stats.failed_exits, "nonzero")
        f.counter(
            "flowbus_jetstream_publish_failures",
            "Log batches JetStream did not take (each is tried again).",
        ).add(stats.log_publish_failures)

    async def _serve_metrics(self) -> asyncio.Task[None] | None:
        """Serve /metrics when ``agent.metrics_port`` is set (0: a free port); its URL is printed."""
        port, host = self.settings.agent.metrics_port, self.settings.metrics.host
        if port is None:
            return None
        try:
            sock = listen(host, port)
        except OSError as exc:
            raise ValueError(f"the agent cannot serve /metrics on {host}:{port}: {exc.strerror or exc}") from None
        self.metrics_url = url_of(sock)

        async def ready() -> list[str]:
            try:
                return [] if self.client.nc.is_connected else ["nats"]
            except Exception:  # not connected yet
                return ["nats"]

        print(f"Agent {self.name} metrics: {self.metrics_url}", flush=True)
        return asyncio.create_task(serve(process_app(lambda: [self.metrics], ready), sock), name="agent-metrics")

    async def run(self) -> None:
        current_service.set("agent")
        queues = subjects.agent_run_queues(self.labels)  # validates the label cap first
        http = await self._serve_metrics()
        try:
            await self._run(queues)
        finally:
            if http is not None:
                http.cancel()
                await asyncio.gather(http, return_exceptions=True)

    async def _run(self, queues: list[str]) -> None:
        nc = await self.client.connect()
        self._claims = AsyncClient(self.settings, nc=nc, role=BusRole.AGENT)
        await self._launcher.warm_up()
        await self.client.request(
            subjects.HeartbeatCommands.REGISTER_AGENT,
            RegisterAgent(agent_id=self.id, name=self.name, type="local", labels=self.labels),
            AgentOut,
        )
        # Recreated with this configuration if it disappears while the agent runs.
        self.consumer = DurablePull(
            nc.jetstream(),
            subjects.RUNQ_STREAM,
            subjects.agent_durable(self.labels),
            ConsumerConfig(
                filter_subjects=queues,
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL,
                ack_wait=ACK_WAIT_SECONDS,
                max_ack_pending=CONSUMER_MAX_ACK_PENDING,
                inactive_threshold=CONSUMER_IDLE_EXPIRY.total_seconds(),
            ),
        )
        await self.consumer.start()
        log.info("Agent %s (%s) started with labels %s, limit %d", self.name, self.id, self.labels, self.limit)
        roots = f", flow roots: {self.flow_roots}" if self.flow_roots else ""
        print(
            f"Agent {self.name} waiting for flow runs (labels: {self.labels}, limit: {self.limit}{roots})", flush=True
        )
        beat = asyncio.create_task(self._heartbeats())
        lag = asyncio.create_task(self.metrics.watch_loop_lag())
        try:
            self._warm.fill()
            await self._take_runs(self.consumer)
        finally:
            beat.cancel()
            lag.cancel()
            await self._warm.close()
            if self._active:
                print(f"Agent {self.name} stopping: waiting for {len(self._active)} flow run(s) to finish", flush=True)
                await asyncio.gather(*self._active, return_exceptions=True)
            await self.client.close()
            print(f"Agent {self.name} stopped", flush=True)

    async def _take_runs(self, consumer: DurablePull) -> None:
        while not self._stop.is_set():
            free = self.limit - len(self._active)
            if free <= 0:
                # At the limit, further runs wait in the stream, not in this process.
                self._slot_freed.clear()
                await _first_of(self._slot_freed, self._stop)
                continue
            try:
                # A fail-over to another NATS node is waited out (the durable keeps
                # our place); a deleted consumer is recreated.
                msgs = await consumer.fetch(min(free, FETCH_BATCH), timeout=FETCH_WAIT)
            except (TimeoutError, NatsTimeout):
                continue
            for msg in msgs:
                if self._stop.is_set():
                    # Stopping: hand the run straight back to the queue for another agent.
                    with contextlib.suppress(NatsError):
                        await msg.nak()
                    continue
                task = asyncio.create_task(self._take(msg))
                self._active.add(task)
                task.add_done_callback(self._release)

    def _release(self, task: asyncio.Task[None]) -> None:
        self._active.discard(task)
        self._slot_freed.set()
        if not task.cancelled() and task.exception() is not None:
            # Each run's errors are handled in _take; one that still escapes is not silent.
            log.error("flow run handling failed", exc_info=task.exception())

    async def _heartbeats(self) -> None:
        subject = subjects.agent_heartbeat(self.id)
        while True:
            beat = AgentHeartbeat(agent_id=self.id, timestamp=datetime.now(UTC))
            # A beat lost in an outage is replaced by the next one; the loop must go on.
            with contextlib.suppress(NatsError):
                await self.client.nc.publish(subject, beat.model_dump_json().encode())
            await asyncio.sleep(self.settings.heartbeat.agent_interval_seconds)

    async def _take(self, msg: Msg) -> None:
        """Claim a queued run (Scheduled -> Submitted at the queued version) and run it if we won."""
        try:
            queued = RunQueued.model_validate_json(msg.data)
        except ValidationError:
            log.warning("dropping a malformed run-queue message")
            await msg.term()
            return
        with (
            run_context(queued.flow_run_id),  # this task's log lines are this run's
            telemetry.run_span(
                "take_flow_run", queued.traceparent, flow_run_id=queued.flow_run_id, flow_id=queued.flow_id
            ),
        ):
            await self._take_run(msg, queued)

    async def _take_run(self, msg: Msg, queued: RunQueued) -> None:
        try:
            ours = await self._claim(queued)
        except ServiceUnavailable as exc:
            log.warning("Flow run %s: not claimed (%s); it is offered again.", queued.flow_run_id, exc)
            await msg.nak(delay=2.0)
            return
        try:
            await msg.ack()
        except NatsError as exc:
            if ours:
                # Delivered again, the message would pass for our own claim's: hand the run back instead.
                await self._return_run(queued, exc)
            return
        if ours:
            self.stats.claimed += 1
            await self._run_child(queued)
        else:
            self.stats.claims_lost += 1

    async def _claim(self, queued: RunQueued) -> bool:
        """Whether the run is ours to start: claimed now, or by an earlier delivery whose reply was lost."""
        claims = self._claims
        assert claims is not None, "run() connects first"
        if await self._prefect_flow(claims, queued.flow_id):
            # Registered by Prefect 1.x: only a Prefect agent can load its storage,
            # and one polls for it (get_runs_in_queue); the run stays Scheduled.
            return False
        try:
            with telemetry.run_span("claim", None, flow_run_id=queued.flow_run_id, flow_id=queued.flow_id):
                await claims.set_flow_run_state(
                    queued.flow_run_id, queued.version, StateType.SUBMITTED, "Submitted for execution", agent_id=self.id
                )
        except (VersionLockingError, Conflict, NotFound):
            # Claimed by another agent, already run, or gone, unless the claim was ours.
            return await self._claimed_by_us(claims, queued)
        return True

    async def _prefect_flow(self, claims: AsyncClient, flow_id: str) -> bool:
        """True for a flow Prefect 1.x registered (asked once per flow: a flow version never changes storage)."""
        known = self._prefect_flows.get(flow_id)
        if known is None:
            try:
                known = (await claims.get_flow(flow_id)).storage.type == "prefect"
            except FlowbusError:
                return False  # the claim will say what is wrong with the run
            self._prefect_flows[flow_id] = known
        return known

    async def _claimed_by_us(self, claims: AsyncClient, queued: RunQueued) -> bool:
        """True when an earlier claim of ours went through but its reply was lost
        (a redelivery after a NATS fail-over): the run is ours to start."""
        try:
            run = (await claims.get_flow_run(queued.flow_run_id)).run
        except FlowbusError:
            return False
        return run.agent_id == self.id and run.state.type is StateType.SUBMITTED and run.version == queued.version + 1

    async def _run_child(self, queued: RunQueued) -> None:
        """Start the claimed run's process and settle the run after it.

        The claim and the start are one recoverable step: any error before
        the process runs returns the run to the queue (``_return_run``).
        After it, the run is the runner's; an error settling it is logged
        (Lazarus and the Zombie Killer look after a run left behind).
        """
        run_id = queued.flow_run_id
        shipper = LogShipper(self.client.nc.jetstream(), run_id, asyncio.get_running_loop())
        cancelling = asyncio.Event()
        finished = asyncio.Event()  # the run's finished state was published
        watch: Subscription | None = None
        proc: FlowProcess | None = None

        async def on_state(msg: Msg) -> None:
            with contextlib.suppress(ValidationError):
                state = StateChanged.model_validate_json(msg.data).state.type
                if state is StateType.CANCELLING:
                    cancelling.set()
                elif is_finished(state):
                    finished.set()

        try:
            # Cancellation arrives by push: the run's state events, as they are published.
            event = subjects.flow_run_event(run_id, subjects.FlowRunFact.STATE)
            watch = await self.client.nc.subscribe(event, cb=on_state)
            proc = await self._start(queued, shipper)
            if proc is None:
                return
            await shipper.drain()
            self.stats.executing += 1
            try:
                code = await self._wait_or_cancel(proc, cancelling, shipper)
            finally:
                self.stats.executing -= 1
            self.stats.finished += 1
            self.stats.failed_exits += code != 0
            if code != 0 or not finished.is_set():
                # A clean exit after the run's finished state leaves nothing to settle: no read.
                await self._settle(run_id, code)
        except Exception as exc:
            if proc is None:
                await self._return_run(queued, exc, shipper)
            else:
                log.error("Flow run %s: could not settle it after its process %d: %r", run_id, proc.pid, exc)
        finally:
            if watch is not None:
                with contextlib.suppress(NatsError):
                    await watch.unsubscribe()
            await shipper.stop()
            self.stats.log_publish_failures += shipper.publish_failures

    async def _start(self, queued: RunQueued, shipper: LogShipper) -> FlowProcess | None:
        """The claimed run's process, started; None when the run ended without
        one (cancelled meanwhile, or refused by the flow roots)."""
        run_id = queued.flow_run_id
        # Read after subscribing: a cancel that came before the subscription is in the run's state.
        detail = await self.client.get_flow_run(run_id)
        if detail.run.state.type is StateType.CANCELLING:
            await self._settle(run_id, 0)
            return None
        try:
            check_storage(detail.storage, self.flow_roots)
        except OutsideFlowRoots as exc:
            await self._fail_unstarted(detail.run.id, detail.run.version, shipper, logging.WARNING, str(exc))
            return None
        # The runner gets the endpoint file's URL: wait for it while `flowbus up` restarts.
        await nats_servers(self.settings)
        env = self._run_env(detail, shipper)
        proc = self._warm.assign(run_id, env, detail) or self._launcher.start(run_id, env)
        self.stats.started += 1
        self._failed_starts.pop(run_id, None)
        message = f"Submitted for execution: PID: {proc.pid}"
        log.info("Flow run %s: %s", run_id, message)
        shipper.log(logging.INFO, message)
        return proc

    async def _return_run(self, queued: RunQueued, exc: Exception, shipper: LogShipper | None = None) -> None:
        """After a failure between our claim and the process's start: the run
        back to Scheduled, from the Submitted of our claim, so that it is
        offered again (Failed instead at the MAX_START_ATTEMPTS-th failure)."""
        run_id, claimed = queued.flow_run_id, queued.version + 1
        self.stats.returned += 1
        failures = self._failed_starts.get(run_id, 0) + 1
        self._failed_starts[run_id] = failures
        if failures >= MAX_START_ATTEMPTS:
            del self._failed_starts[run_id]
            reason = f"The flow's process could not be started ({failures} attempts): {exc!r}"
            with contextlib.suppress(FlowbusError, ServiceUnavailable):
                await self._fail_unstarted(run_id, claimed, shipper, logging.ERROR, reason)
            return
        reason = f"Returned to the queue by agent {self.name}: its process was not started ({exc!r})."
        log.warning("Flow run %s: %s", run_id, reason, exc_info=exc)
        if shipper is not None:
            shipper.log(logging.WARNING, reason)
        try:
            await set_state_surviving_lost_reply(self.client, run_id, claimed, StateType.SCHEDULED, reason)
        except (VersionLockingError, Conflict, NotFound) as refused:
            # It moved on (cancelled, taken by another writer, deleted): leave it as it is.
            log.info("Flow run %s: left as it is (%s).", run_id, refused.message)
        except ServiceUnavailable as lost:
            log.error("Flow run %s: could not return it to the queue, it stays Submitted: %s", run_id, lost)

    async def _fail_unstarted(
        self, run_id: str, version: int, shipper: LogShipper | None, level: int, reason: str
    ) -> None:
        """End a claimed run Failed before any process of it started."""
        log.log(level, "Flow run %s: %s", run_id, reason)
        if shipper is not None:
            shipper.log(level, reason)
            await shipper.drain()
        with contextlib.suppress(VersionLockingError, Conflict):
            await set_state_surviving_lost_reply(self.client, run_id, version, StateType.FAILED, reason)

    def _run_env(self, detail: FlowRunDetail, shipper: LogShipper | None = None) -> dict[str, str]:
        """The flow process's environment; later layers win:

        1. the agent's own environment;
        2. the run config's ``env``, less what flowbus.run_env denies (creation
           refuses those; a row from before the rule may still hold them);
        3. the run's identity and the settings the runner takes from the agent;
        4. last, the agent's credentials (``_credential_env``).
        """
        env = dict(os.environ)
        allowed, dropped = allowed_run_env(detail.run_config.env)
        if dropped:
            message = f"Not passing run_config.env variables {dropped} to the flow: they are denied (docs/security.md)."
            log.warning("Flow run %s: %s", detail.run.id, message)
            if shipper is not None:
                shipper.log(logging.WARNING, message)
        env.update(allowed)
        env.update(
            {
                "FLOWBUS_NATS_URL": self.settings.resolved_nats_url(),
                "FLOWBUS_FLOW_RUN_ID": detail.run.id,
                "FLOWBUS_FLOW_ID": detail.run.flow_id,
                "FLOWBUS_LABELS": json.dumps(detail.run.labels),
                "FLOWBUS_AGENT_ID": self.id,
                FLOW_ROOTS_ENV: json.dumps(self.flow_roots),
                # The runner's spans go under this agent's, in the run's trace.
                telemetry.TRACEPARENT_ENV: telemetry.traceparent() or "",
            }
        )
        env.update(self._credential_env())
        return env

    async def _agent_env(self) -> dict[str, str]:
        """A warm flow process's environment before it has a run: ``_run_env``
        less the run's own layers (its run config's ``env``, its identity)."""
        await nats_servers(self.settings)
        env = dict(os.environ)
        env.update(
            {
                "FLOWBUS_NATS_URL": self.settings.resolved_nats_url(),
                "FLOWBUS_AGENT_ID": self.id,
                FLOW_ROOTS_ENV: json.dumps(self.flow_roots),
            }
        )
        env.update(self._credential_env())
        return env

    def _credential_env(self) -> dict[str, str]:
        """The agent's NATS credential for the flow's process (``FLOWBUS_NATS_CREDS``):
        applied last in ``_run_env``, so neither the run config nor anything else
        can replace it. The runner speaks with the agent's credential."""
        creds = self.settings.nats_credential_file(BusRole.AGENT)
        return {"FLOWBUS_NATS_CREDS": str(creds.resolve())} if creds is not None else {}

    async def _wait_or_cancel(self, proc: FlowProcess, cancelling: asyncio.Event, shipper: LogShipper) -> int:
        """The flow process's exit code; a cancel stops it (SIGTERM, then SIGKILL after the grace period)."""
        exited = asyncio.create_task(proc.wait())
        cancelled = asyncio.create_task(cancelling.wait())
        await asyncio.wait({exited, cancelled}, return_when=asyncio.FIRST_COMPLETED)
        cancelled.cancel()
        if not exited.done():
            shipper.log(logging.INFO, f"Cancelling: stopping flow process {proc.pid}.")
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                await asyncio.wait_for(asyncio.shield(exited), self.settings.agent.cancel_grace_seconds)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
        return await exited

    async def _settle(self, flow_run_id: str, code: int) -> None:
        """After the flow process ended: a cancelled run ends Cancelled, one its
        process left unfinished by dying (non-zero exit) ends Failed."""
        how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
        await settle_unfinished_run(self.client, flow_run_id, f"Flow run process {how}." if code != 0 else None)


def run_local_agent(
    labels: list[str] | None = None,
    name: str | None = None,
    hostname_label: bool = True,
    settings: Settings | None = None,
    limit: int | None = None,
    flow_roots: Sequence[str | Path] | None = None,
) -> None:
    """Run an agent in the foreground until SIGINT or SIGTERM (running flows finish first);
    ``flow_roots`` (None: the settings') limits the flows it runs, see ``flowbus.agent.flow_roots``."""
    chosen = settings or Settings()
    configure_logging("agent", log_format=chosen.log_format, level=chosen.log_level, levels=chosen.log_levels)
    agent = LocalAgent(chosen, labels, name, hostname_label, limit, flow_roots)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, agent.stop)
        await agent.run()

    asyncio.run(main())


async def _first_of(*events: asyncio.Event) -> None:
    waiters = [asyncio.create_task(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
