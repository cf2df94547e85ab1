"""Lazarus with a real agent: an agent process claims a run and is killed
with SIGKILL before the run's process starts it. Lazarus reschedules the run
and a second agent runs it to Success; with Lazarus turned off for the flow
(`flowbus flow settings ID --no-lazarus`) the run stays Submitted.

The services run in this process (Lazarus's pass counter is read here); the
agents and the CLI are processes, as a user runs them. The flow's script
waits, while it is loaded, for a hold file to go away: the agent has claimed
the run (Submitted) and its flow process is still loading it, not Running.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from flowbus.client import AsyncClient
from flowbus.settings import LazarusSettings, Settings
from flowbus.states import StateType
from flowbus_services.heartbeat.lazarus import RESCHEDULED_MESSAGE
from tests.helpers import unique
from tests.helpers.bus import bus_env
from tests.helpers.lazarus import Services, lazarus_services, pass_ended
from tests.helpers.processes import FLOWBUS, process_group_members, run, start, stop
from tests.helpers.runs import RunStates, watch_until_finished, watching
from tests.helpers.scripts import register_script, write_script
from tests.helpers.waiting import eventually

pytestmark = pytest.mark.e2e

PROJECT = "lazarus"

# Loading waits while the hold file exists (bounded: 60 s), then the flow runs one task.
HELD_FLOW = """
import os
import time
import flowbus
from flowbus import Flow, task

for _ in range(1200):
    if not os.path.exists({hold!r}):
        break
    time.sleep(0.05)

@task
def arrive():
    flowbus.context.get("logger").info("arrived")

with Flow({name!r}) as flow:
    arrive()
"""


@pytest.fixture
async def services(settings: Settings) -> AsyncIterator[Services]:
    """Lazarus passing every 0.2 s; a run is stale after 10 s of silence: longer
    than a live agent takes from its claim to Running (a fork server to start,
    the flow to load) on a busy machine, or the second agent's claim would be
    rescheduled too."""
    lazarus = LazarusSettings(interval_seconds=0.2, stale_after_seconds=10.0, max_resurrections=3)
    async with lazarus_services(settings, lazarus) as services:
        yield services


class Scene:
    """A held flow registered with a label of its own, and the agents a test starts."""

    def __init__(self, services: Services, tmp_path: Path) -> None:
        self.client: AsyncClient = services.client
        self.settings = services.settings
        self.tmp_path = tmp_path
        self.label = unique("lazarus")
        self.hold = tmp_path / "hold"
        self.agents: list[subprocess.Popen[str]] = []
        self.env = bus_env(self.settings.resolved_nats_url())

    async def register(self) -> str:
        name = unique("held")
        path = write_script(self.tmp_path / f"{name}.py", HELD_FLOW.format(hold=str(self.hold), name=name))
        return await register_script(self.client, path, name, PROJECT, labels=[self.label])

    def start_agent(self) -> subprocess.Popen[str]:
        args = [FLOWBUS, "agent", "local", "start", "--no-hostname-label", "--label", self.label]
        # A process group of its own: the agent, its fork server and its flow processes.
        agent = start(args, self.settings.home, self.tmp_path, self.env, new_session=True)
        self.agents.append(agent)
        return agent

    async def claimed_then_killed(self, flow_id: str, states: RunStates) -> str:
        """A run claimed by an agent that is SIGKILLed, with its flow process, before the run starts."""
        self.hold.touch()
        agent = self.start_agent()
        run_id = await self.client.create_flow_run(flow_id, labels=[self.label])
        await states.reached(run_id, StateType.SUBMITTED)
        os.killpg(agent.pid, signal.SIGKILL)
        await asyncio.to_thread(agent.wait, 30)
        # Nothing this agent started survives to start the run later.
        await eventually(
            lambda: asyncio.to_thread(process_group_members, agent.pid),
            "the killed agent's processes are gone",
            until=lambda members: not members,
        )
        self.hold.unlink()
        run = (await self.client.get_flow_run(run_id)).run
        assert run.state.type is StateType.SUBMITTED
        return run_id

    async def stop_agents(self) -> None:
        # In a thread: the services the agents are finishing their work with
        # (settling a run, shipping its last logs) run on this event loop.
        for agent in self.agents:
            if agent.poll() is None:
                await asyncio.to_thread(stop, agent, signal.SIGTERM)
        if self.hold.exists():
            self.hold.unlink()


@pytest.fixture
async def scene(services: Services, tmp_path: Path) -> AsyncIterator[Scene]:
    scene = Scene(services, tmp_path)
    try:
        yield scene
    finally:
        await scene.stop_agents()


async def test_a_run_whose_agent_died_after_the_claim_is_rescheduled_and_run_by_another_agent(
    services: Services, scene: Scene
) -> None:
    client = services.client
    flow_id = await scene.register()
    async with watching(client) as states:
        run_id = await scene.claimed_then_killed(flow_id, states)
        await states.until(lambda: states.seen[run_id].count(StateType.SCHEDULED) == 2)

    rescheduled = (await client.get_flow_run(run_id)).run
    assert (rescheduled.state.message, rescheduled.times_resurrected) == (RESCHEDULED_MESSAGE, 1)
    scene.start_agent()
    watched = await watch_until_finished(client, run_id)
    assert watched.types == [
        StateType.SCHEDULED,
        StateType.SUBMITTED,
        StateType.SCHEDULED,
        StateType.SUBMITTED,
        StateType.RUNNING,
        StateType.SUCCESS,
    ], watched.messages
    assert "arrived" in watched.messages
    assert services.stats.flow_runs_rescheduled == 1


async def test_a_flow_with_lazarus_off_keeps_its_run_submitted(services: Services, scene: Scene) -> None:
    client = services.client
    flow_id = await scene.register()
    # In a thread: the services answering the CLI run on this event loop.
    args = [FLOWBUS, "flow", "settings", flow_id, "--no-lazarus"]
    cli = await asyncio.to_thread(run, args, services.settings.home, scene.tmp_path, env=scene.env)
    assert cli.returncode == 0, cli.stdout + cli.stderr
    assert "lazarus off" in cli.stdout
    # A run of a flow with Lazarus on, claimed after the other and never started:
    # once Lazarus has rescheduled it, it has seen the other run stale too.
    control_flow = await scene.register()
    async with watching(client) as states:
        run_id = await scene.claimed_then_killed(flow_id, states)
        control = await client.create_flow_run_out(control_flow, labels=[unique("nobody")])
        await client.set_flow_run_state(control.id, control.version, StateType.SUBMITTED)
        await states.until(lambda: states.seen.get(control.id, []).count(StateType.SCHEDULED) == 2)
        passes = services.stats.passes
        await pass_ended(services.stats)
        await pass_ended(services.stats)

    assert services.stats.passes >= passes + 2
    kept = (await client.get_flow_run(run_id)).run
    assert (kept.state.type, kept.times_resurrected) == (StateType.SUBMITTED, 0)
    assert states.seen[run_id] == [StateType.SCHEDULED, StateType.SUBMITTED]
