"""The scheduler's release loop: a backlog of unclaimable runs never starves new ones."""

from __future__ import annotations

import textwrap
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from flowbus.agent.local import LocalAgent
from flowbus.client import AsyncClient
from flowbus.embedded import SERVICE_MODULES, build_service_app
from flowbus.settings import SchedulerSettings, Settings
from flowbus.states import StateType
from tests.conftest import unique
from tests.integration.test_delivery import RECORDING_FLOW, agents, register_script, watching


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
    flow_id = await register_script(client, script, name)
    # Older due runs that no agent will ever take: more than one release batch.
    backlog = [await client.create_flow_run(flow_id, labels=[unique("nobody")]) for _ in range(7)]
    agent = LocalAgent(stack, labels=[label], hostname_label=False)
    async with watching(client) as states, agents(stack, agent):
        start = datetime.now(UTC) + timedelta(seconds=1)
        later = await client.create_flow_run(flow_id, labels=[label], scheduled_start_time=start)
        await states.finished([later.id], seconds=20)
    assert states.last(later.id) is StateType.SUCCESS
    detail = (await client.get_flow_run(later.id)).run
    assert detail.start_time is not None
    assert detail.start_time >= start
    for run in backlog:
        assert (await client.get_flow_run(run.id)).run.state.type is StateType.SCHEDULED
