"""The flow-run runner: ``python -m flowbus.agent.runner <flow_run_id>``.

Started by an agent after it claimed the run (Submitted). Loads the flow
from its storage (the script path or module recorded at registration),
sets Running against the version it saw, runs the tasks (each task-run
state goes through the state service), ships logs, sends heartbeats, and
sets the final state. If the Running write loses (another runner, or the
run was cancelled) it stops without running anything.

Reads: ``flowbus.cmd.state.get_flow_run`` replies.
Writes: ``flowbus.cmd.state.set_*_state``, ``flowbus.logs.<id>``,
``flowbus.hb.flow_run.<id>``.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import runpy
import sys
import traceback
from datetime import UTC, datetime
from typing import Any

from flowbus import subjects
from flowbus.agent.logs import LogShipper
from flowbus.client import AsyncClient, NatsUnavailable, ServiceUnavailable
from flowbus.schemas.agents import RunHeartbeat
from flowbus.schemas.common import Conflict, FlowbusError, VersionLockingError
from flowbus.schemas.flows import StorageSpec
from flowbus.schemas.runs import FlowRunOut, StateSet, TaskRunOut
from flowbus.sdk import context
from flowbus.sdk.engine import RunAbandoned, run_flow
from flowbus.sdk.flow import LOADED_SCRIPT_PREFIX, Flow
from flowbus.settings import Settings
from flowbus.states import StateType

log = logging.getLogger("flowbus.runner")


class FlowLoadError(Exception):
    pass


def load_flow(storage: StorageSpec, name: str) -> Flow:
    """Import the flow's code from where registration said it lives."""
    with context.scope(loading_flow=True):
        try:
            if storage.type == "script":
                assert storage.path is not None
                # As `python script.py` would: the script's folder is importable.
                folder = os.path.dirname(storage.path)
                if folder not in sys.path:
                    sys.path.insert(0, folder)
                namespace = runpy.run_path(storage.path, run_name=f"{LOADED_SCRIPT_PREFIX}")
            else:
                assert storage.module is not None
                namespace = vars(importlib.import_module(storage.module))
        except FileNotFoundError as exc:
            raise FlowLoadError(f"Flow script not found: {exc.filename}") from exc
        except Exception as exc:
            raise FlowLoadError(f"Failed to load flow from {storage.path or storage.module}: {exc!r}") from exc
    flows = [v for v in namespace.values() if isinstance(v, Flow) and v.name == name]
    if not flows:
        raise FlowLoadError(f"No flow named {name!r} in {storage.path or storage.module}")
    return flows[0]


async def write_own_state(
    client: AsyncClient,
    flow_run_id: str,
    version: int,
    state: StateType,
    message: str | None,
    task_run_id: str | None = None,
) -> StateSet:
    """A state write that survives a lost reply (a NATS fail-over).

    After a time-out the write may or may not have happened; the run is read
    back, and if it sits at ``version + 1`` in ``state`` the write went
    through. Only the runner writes these states of its own run, so that
    reading is unambiguous.
    """
    try:
        if task_run_id is not None:
            return await client.set_task_run_state(task_run_id, version, state, message)
        return await client.set_flow_run_state(flow_run_id, version, state, message)
    except ServiceUnavailable:
        detail = await client.get_flow_run(flow_run_id)
        rows: list[FlowRunOut | TaskRunOut] = (
            [detail.run] if task_run_id is None else [t for t in detail.task_runs if t.id == task_run_id]
        )
        if rows and rows[0].version == version + 1 and rows[0].state.type is state:
            return StateSet(id=rows[0].id, version=rows[0].version, state=rows[0].state)
        raise


class BackendHooks:
    """Reports task-run states to the state service from the engine's thread."""

    def __init__(
        self,
        client: AsyncClient,
        loop: asyncio.AbstractEventLoop,
        flow_run_id: str,
        task_runs: dict[str, tuple[str, int]],
    ):
        self.client = client
        self.flow_run_id = flow_run_id
        self.loop = loop
        self.task_runs = task_runs  # slug -> (task run id, version)

    def task_scope(self, slug: str) -> dict[str, Any]:
        entry = self.task_runs.get(slug)
        return {"task_run_id": entry[0]} if entry else {}

    def task_state(self, slug: str, state: StateType, message: str | None) -> bool:
        entry = self.task_runs.get(slug)
        if entry is None:
            return True
        task_run_id, version = entry
        future = asyncio.run_coroutine_threadsafe(
            write_own_state(self.client, self.flow_run_id, version, state, message, task_run_id), self.loop
        )
        try:
            out = future.result()
        except (VersionLockingError, Conflict) as exc:
            log.error("Task run %s: %s", slug, exc.message)
            return False
        self.task_runs[slug] = (task_run_id, out.version)
        return True


async def execute(flow_run_id: str, settings: Settings) -> int:
    async with AsyncClient(settings) as client:
        detail = await client.get_flow_run(flow_run_id)
        run = detail.run
        loop = asyncio.get_running_loop()
        shipper = LogShipper(client.nc.jetstream(), run.id, loop)
        shipper.setFormatter(logging.Formatter("%(message)s"))
        logging.getLogger("flowbus").addHandler(shipper)
        logging.getLogger("flowbus").setLevel(logging.INFO)
        shipper.start()
        version = run.version
        heartbeat: asyncio.Task[None] | None = None

        async def finish(state: StateType, message: str) -> None:
            # Logs first: a watcher sees them before the final state.
            await shipper.drain()
            await write_own_state(client, run.id, version, state, message)

        try:
            try:
                flow = await asyncio.to_thread(load_flow, detail.storage, run.flow_name)
            except FlowLoadError as exc:
                log.error("%s", exc)
                await finish(StateType.FAILED, str(exc))
                return 1
            try:
                version = (await write_own_state(client, run.id, version, StateType.RUNNING, "Running flow.")).version
            except (VersionLockingError, Conflict) as exc:
                # Someone else owns this run now: run nothing (once and only once).
                log.warning("Not running flow run %s: %s", run.id, exc.message)
                return 0
            if detail.heartbeat_enabled:
                heartbeat = asyncio.create_task(_heartbeats(client, run.id, settings.heartbeat.interval_seconds))
            task_runs = {t.task_slug: (t.id, t.version) for t in detail.task_runs}
            hooks = BackendHooks(client, loop, run.id, task_runs)

            def work() -> Any:
                with context.scope(flow_run_id=run.id, flow_run_name=run.name, flow_id=run.flow_id):
                    return run_flow(flow, run.parameters, hooks)

            try:
                result = await asyncio.to_thread(work)
            except RunAbandoned as exc:
                log.error("Flow run abandoned: %s", exc)
                return 0
            except Exception as exc:
                log.error("Unexpected error while running the flow: %r\n%s", exc, traceback.format_exc())
                await finish(StateType.FAILED, f"Unexpected error: {exc!r}")
                return 1
            await finish(result.state, result.message)
            return 0
        finally:
            if heartbeat is not None:
                heartbeat.cancel()
            logging.getLogger("flowbus").removeHandler(shipper)
            await shipper.stop()


async def _heartbeats(client: AsyncClient, flow_run_id: str, interval: float) -> None:
    subject = subjects.flow_run_heartbeat(flow_run_id)
    while True:
        beat = RunHeartbeat(flow_run_id=flow_run_id, timestamp=datetime.now(UTC))
        await client.nc.publish(subject, beat.model_dump_json().encode())
        await asyncio.sleep(interval)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m flowbus.agent.runner FLOW_RUN_ID", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s | %(message)s")
    try:
        return asyncio.run(execute(args[0], Settings()))
    except FlowbusError as exc:
        print(f"flowbus runner: {exc.code.value}: {exc.message}", file=sys.stderr)
        return 1
    except (NatsUnavailable, ServiceUnavailable) as exc:
        print(f"flowbus runner: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
