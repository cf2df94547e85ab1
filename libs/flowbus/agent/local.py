"""The local agent: takes due runs from the run queues and runs them here.

Runs are pushed: the agent holds a durable JetStream consumer (shared by
every agent with the same label set) over the run-queue subject of every
non-empty subset of its labels, and long-polls it, so a due run reaches it
in milliseconds. For each run it claims Submitted at the version it was
queued with: only one claim can win, however many agents or duplicate
deliveries. The winner starts ``python -m flowbus.agent.runner <id>``.

Reads: ``flowbus.runq.<key>`` (RUNQ stream).
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
from datetime import UTC, datetime, timedelta

from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from pydantic import ValidationError

from flowbus import subjects
from flowbus.agent.logs import LogShipper
from flowbus.client import AsyncClient, ServiceUnavailable
from flowbus.schemas.agents import AgentHeartbeat, AgentOut, RegisterAgent
from flowbus.schemas.common import Conflict, FlowbusError, NotFound, VersionLockingError
from flowbus.schemas.runs import RunQueued
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
        shipper = LogShipper(self.client.nc.jetstream(), queued.flow_run_id, asyncio.get_running_loop())
        try:
            env = dict(os.environ)
            env["FLOWBUS_NATS_URL"] = self.settings.resolved_nats_url()
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "flowbus.agent.runner", queued.flow_run_id, env=env
            )
            message = f"Submitted for execution: PID: {proc.pid}"
            log.info("Flow run %s: %s", queued.flow_run_id, message)
            shipper.log(logging.INFO, message)
            await shipper.drain()
            code = await proc.wait()
            if code != 0:
                await self._fail_if_unfinished(queued.flow_run_id, f"Flow run process exited with code {code}.")
        except FlowbusError as exc:
            log.error("Flow run %s: %s", queued.flow_run_id, exc.message)
        finally:
            await shipper.stop()
            self._slots.release()

    async def _fail_if_unfinished(self, flow_run_id: str, message: str) -> None:
        detail = await self.client.get_flow_run(flow_run_id)
        if not is_finished(detail.run.state.type):
            # Losing here means the run already moved on (e.g. the runner finished it).
            with contextlib.suppress(VersionLockingError, Conflict):
                await self.client.set_flow_run_state(flow_run_id, detail.run.version, StateType.FAILED, message)


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
