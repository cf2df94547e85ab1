"""The local agent: takes due runs from the run queues and runs them here.

Runs are pushed: the agent holds a durable JetStream consumer (shared by
every agent with the same label set) over the run-queue subject of every
non-empty subset of its labels, and long-polls it, so a due run reaches it
in milliseconds. For each run it claims Submitted at the version it was
queued with: only one claim can win, however many agents or duplicate
deliveries. The winner starts ``python -m flowbus.agent.runner <id>``.
While it runs, the agent listens to the run's state events: a Cancelling
(``flowbus cancel`` of a running run) stops the flow's process (SIGTERM, then
SIGKILL after ``agent.cancel_grace_seconds``) and the run ends Cancelled.

Reads: ``flowbus.runq.<key>`` (RUNQ stream), ``flowbus.evt.flow_run.<id>.state``.
Writes: ``flowbus.cmd.heartbeat.register_agent``, ``flowbus.hb.agent.<id>``,
``flowbus.cmd.state.set_flow_run_state``, ``flowbus.logs.<run>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import uuid
from asyncio.subprocess import Process
from datetime import UTC, datetime, timedelta

from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from pydantic import ValidationError

from flowbus import subjects
from flowbus.agent.logs import LogShipper
from flowbus.client import AsyncClient, ServiceUnavailable
from flowbus.schemas.agents import AgentHeartbeat, AgentOut, RegisterAgent
from flowbus.schemas.common import Conflict, FlowbusError, NotFound, VersionLockingError
from flowbus.schemas.runs import RunQueued, StateChanged
from flowbus.settings import Settings
from flowbus.states import StateType, is_finished

log = logging.getLogger("flowbus.agent")
CONSUMER_IDLE_EXPIRY = timedelta(days=1)


class LocalAgent:
    def __init__(
        self,
        settings: Settings | None = None,
        labels: list[str] | None = None,
        name: str | None = None,
        hostname_label: bool = True,
    ) -> None:
        self.settings = settings or Settings()
        chosen = set(labels if labels is not None else self.settings.agent.labels)
        if hostname_label and not self.settings.agent.no_hostname_label:
            chosen.add(socket.gethostname())
        self.labels = sorted(chosen)
        self.name = name or self.settings.agent.name or f"local-{socket.gethostname()}"
        self.id = str(uuid.uuid4())
        self.client = AsyncClient(self.settings)
        self._slots = asyncio.Semaphore(self.settings.agent.max_concurrent_runs)
        self._children: set[asyncio.Task[None]] = set()
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        queues = subjects.agent_run_queues(self.labels)  # validates the label cap first
        nc = await self.client.connect()
        await self.client.request(
            subjects.Heartbeat.REGISTER_AGENT,
            RegisterAgent(agent_id=self.id, name=self.name, type="local", labels=self.labels),
            AgentOut,
        )
        js = nc.jetstream()
        psub = await js.pull_subscribe(
            "",
            durable=subjects.agent_durable(self.labels),
            stream=subjects.RUNQ_STREAM,
            config=ConsumerConfig(
                filter_subjects=queues,
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL,
                ack_wait=30,
                max_ack_pending=self.settings.agent.max_concurrent_runs * 4,
                inactive_threshold=CONSUMER_IDLE_EXPIRY.total_seconds(),
            ),
        )
        log.info("Agent %s (%s) started with labels %s", self.name, self.id, self.labels)
        print(f"Agent {self.name} waiting for flow runs (labels: {self.labels})", flush=True)
        beat = asyncio.create_task(self._heartbeats())
        try:
            while not self._stop.is_set():
                try:
                    msgs = await psub.fetch(batch=8, timeout=1.0)
                except (TimeoutError, NatsTimeout):
                    continue
                except NatsError as exc:
                    # Fail-over to another NATS node: the durable consumer keeps our place.
                    log.warning("run queue unavailable (%s); retrying", type(exc).__name__)
                    await asyncio.sleep(0.5)
                    continue
                for msg in msgs:
                    await self._handle(msg)
        finally:
            beat.cancel()
            if self._children:
                await asyncio.gather(*self._children, return_exceptions=True)
            await self.client.close()

    async def _heartbeats(self) -> None:
        subject = subjects.agent_heartbeat(self.id)
        while True:
            beat = AgentHeartbeat(agent_id=self.id, timestamp=datetime.now(UTC))
            await self.client.nc.publish(subject, beat.model_dump_json().encode())
            await asyncio.sleep(self.settings.heartbeat.agent_interval_seconds)

    async def _handle(self, msg: object) -> None:
        data = getattr(msg, "data", b"")
        try:
            queued = RunQueued.model_validate_json(data)
        except ValidationError:
            log.warning("dropping a malformed run-queue message")
            await msg.term()  # type: ignore[attr-defined]
            return
        await self._slots.acquire()
        try:
            await self.client.set_flow_run_state(
                queued.flow_run_id, queued.version, StateType.SUBMITTED, "Submitted for execution", agent_id=self.id
            )
        except (VersionLockingError, Conflict, NotFound):
            if not await self._claimed_by_us(queued):
                # Claimed by another agent, already run, or gone: nothing to do.
                self._slots.release()
                await msg.ack()  # type: ignore[attr-defined]
                return
        except ServiceUnavailable:
            self._slots.release()
            await msg.nak(delay=2.0)  # type: ignore[attr-defined]
            return
        except BaseException:
            self._slots.release()
            raise
        await msg.ack()  # type: ignore[attr-defined]
        task = asyncio.create_task(self._run_child(queued))
        self._children.add(task)
        task.add_done_callback(self._children.discard)

    async def _claimed_by_us(self, queued: RunQueued) -> bool:
        """True when an earlier claim of ours went through but its reply was lost
        (a redelivery after a NATS fail-over): the run is ours to start."""
        try:
            run = (await self.client.get_flow_run(queued.flow_run_id)).run
        except FlowbusError:
            return False
        return run.agent_id == self.id and run.state.type is StateType.SUBMITTED and run.version == queued.version + 1

    async def _run_child(self, queued: RunQueued) -> None:
        run_id = queued.flow_run_id
        shipper = LogShipper(self.client.nc.jetstream(), run_id, asyncio.get_running_loop())
        cancelling = asyncio.Event()

        async def on_state(msg: Msg) -> None:
            with contextlib.suppress(ValidationError):
                if StateChanged.model_validate_json(msg.data).state.type is StateType.CANCELLING:
                    cancelling.set()

        # Cancellation arrives by push: the run's state events, as they are published.
        watch = await self.client.nc.subscribe(subjects.flow_run_event(run_id, "state"), cb=on_state)
        try:
            env = dict(os.environ)
            env["FLOWBUS_NATS_URL"] = self.settings.resolved_nats_url()
            proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "flowbus.agent.runner", run_id, env=env)
            message = f"Submitted for execution: PID: {proc.pid}"
            log.info("Flow run %s: %s", run_id, message)
            shipper.log(logging.INFO, message)
            await shipper.drain()
            # A cancel that came before the subscription did is in the run's state.
            if (await self.client.get_flow_run(run_id)).run.state.type is StateType.CANCELLING:
                cancelling.set()
            code = await self._wait_or_cancel(proc, cancelling, shipper)
            await self._settle(run_id, code)
        except FlowbusError as exc:
            log.error("Flow run %s: %s", run_id, exc.message)
        finally:
            with contextlib.suppress(NatsError):
                await watch.unsubscribe()
            await shipper.stop()
            self._slots.release()

    async def _wait_or_cancel(self, proc: Process, cancelling: asyncio.Event, shipper: LogShipper) -> int:
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
        """After the flow process ended: a cancelled run ends Cancelled, a crashed one Failed."""
        detail = await self.client.get_flow_run(flow_run_id)
        state = detail.run.state.type
        if state is StateType.CANCELLING:
            target, message = StateType.CANCELLED, "Flow run was cancelled."
        elif code != 0 and not is_finished(state):
            target, message = StateType.FAILED, f"Flow run process exited with code {code}."
        else:
            return
        # Losing here means the run already moved on (e.g. the runner finished it).
        with contextlib.suppress(VersionLockingError, Conflict):
            await self.client.set_flow_run_state(flow_run_id, detail.run.version, target, message)


def run_local_agent(
    labels: list[str] | None = None,
    name: str | None = None,
    hostname_label: bool = True,
    settings: Settings | None = None,
) -> None:
    """Run an agent in the foreground until SIGINT or SIGTERM."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s | %(message)s")
    agent = LocalAgent(settings, labels, name, hostname_label)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, agent.stop)
        await agent.run()

    asyncio.run(main())
