"""The scheduler's release loop: a backlog of unclaimable runs never starves new ones."""

from __future__ import annotations

import asyncio
import textwrap
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from flowbus import subjects
from flowbus.agent.local import LocalAgent
from flowbus.client import AsyncClient
from flowbus.runtime.service import service_context
from flowbus.schemas.flows import SerializedFlow, StorageSpec, TaskSpec
from flowbus.schemas.runs import FlowRunCreated
from flowbus.settings import SchedulerSettings, Settings
from flowbus.states import StateType
from flowbus_services.registry import SERVICE_MODULES, build_service_app
from flowbus_services.scheduler.release import ReleaseCursor, release_due_runs
from tests.helpers import unique
from tests.helpers.agents import running_agents
from tests.helpers.runs import watching
from tests.helpers.scripts import RECORDING_FLOW, register_script


@pytest.fixture
async def tight(settings: Settings) -> AsyncIterator[tuple[Settings, AsyncClient]]:
    """The services with a release batch smaller than the backlog below and a
    poll slower than the run's start time: the run must be released by the
    due-time wake-up and the first-release pass, not by luck of the ordering."""
    tight = settings.model_copy(update={"scheduler": SchedulerSettings(release_interval=30.0, release_batch=3)})
    async with AsyncExitStack() as apps:
        for name in SERVICE_MODULES:
            await apps.enter_async_context(build_service_app(name, tight))
        async with AsyncClient(tight) as client:
            yield tight, client


async def test_a_future_run_is_released_on_time_despite_a_backlog(
    tight: tuple[Settings, AsyncClient], tmp_path: Path
) -> None:
    stack, client = tight
    name, label = unique("release"), unique("release")
    script = tmp_path / "release.py"
    script.write_text(textwrap.dedent(RECORDING_FLOW.format(ledger=str(tmp_path / "ledger.txt"), name=name)))
    flow_id = await register_script(client, script, name, "release")
    # Older due runs that no agent will ever take: more than one release batch.
    backlog = [await client.create_flow_run_out(flow_id, labels=[unique("nobody")]) for _ in range(7)]
    agent = LocalAgent(stack, labels=[label], hostname_label=False)
    async with watching(client) as states, running_agents(agent):
        start = datetime.now(UTC) + timedelta(seconds=1)
        later_id = await client.create_flow_run(flow_id, labels=[label], scheduled_start_time=start)
        await states.finished([later_id], seconds=20)
    assert states.last(later_id) is StateType.SUCCESS
    detail = (await client.get_flow_run(later_id)).run
    assert detail.start_time is not None
    assert detail.start_time >= start
    for run in backlog:
        assert (await client.get_flow_run(run.id)).run.state.type is StateType.SCHEDULED


async def test_a_pass_releases_runs_that_came_due_and_leaves_runs_created_due_to_run_creation(
    settings: Settings,
) -> None:
    async with AsyncExitStack() as apps:
        contexts = {
            name: service_context(await apps.enter_async_context(build_service_app(name, settings)))
            for name in SERVICE_MODULES
        }
        scheduler = contexts["scheduler"]
        async with AsyncClient(settings) as client:
            project = unique("release")
            await client.create_project(project)
            spec = SerializedFlow(
                name=unique("release"),
                tasks=[TaskSpec(slug="t-1", name="t")],
                storage=StorageSpec(type="script", path="/release.py"),
            )
            flow = await client.register(spec, project)
            created_due_id = await client.create_flow_run(flow.id, labels=[unique("nobody")])
            start = datetime.now(UTC) + timedelta(seconds=0.2)
            due_later_id = await client.create_flow_run(flow.id, labels=[unique("nobody")], scheduled_start_time=start)
            # Waiting for the clock itself: the run must have come due.
            await asyncio.sleep(max(0.0, (start - datetime.now(UTC)).total_seconds()) + 0.01)

            # A pass without a sweep page: only the run that came due is released.
            passing = ReleaseCursor(last_sweep=time.monotonic())
            assert await release_due_runs(scheduler, passing) == 1
            assert set(passing.recent) == {due_later_id}

            # The backlog sweep re-releases the run created due too (a stream may have lost it).
            sweeping = ReleaseCursor(horizon=datetime.now(UTC))
            await release_due_runs(scheduler, sweeping)
            assert set(sweeping.recent) == {created_due_id, due_later_id}


async def test_only_runs_created_due_later_wake_the_scheduler(stack: Settings, client: AsyncClient, nc: Client) -> None:
    """The wake hint carries the ``created`` event of a run due later; a run
    created due is queued by run_creation and wakes nobody."""
    hints: asyncio.Queue[FlowRunCreated] = asyncio.Queue()

    async def on_hint(msg: Msg) -> None:
        await hints.put(FlowRunCreated.model_validate_json(msg.data))

    await nc.subscribe(subjects.SCHEDULER_WAKE, cb=on_hint)
    await nc.flush()
    project = unique("wake")
    await client.create_project(project)
    spec = SerializedFlow(name=unique("wake"), storage=StorageSpec(type="script", path="/wake.py"))
    flow = await client.register(spec, project)
    start = datetime.now(UTC) + timedelta(hours=1)
    await client.create_flow_run(flow.id, labels=[unique("nobody")])
    later_id = await client.create_flow_run(flow.id, labels=[unique("nobody")], scheduled_start_time=start)
    async with asyncio.timeout(10):
        hint = await hints.get()
    assert (hint.flow_run_id, hint.scheduled_start_time) == (later_id, start)
    # One more run due later: its hint is the next one, so the run created due sent none.
    again_id = await client.create_flow_run(flow.id, labels=[unique("nobody")], scheduled_start_time=start)
    async with asyncio.timeout(10):
        assert (await hints.get()).flow_run_id == again_id
