"""Flow processes forked ahead of demand (agent/warm_pool.py): one run each, gone with the agent."""

from __future__ import annotations

import os
from pathlib import Path

from flowbus.agent.local import LocalAgent
from flowbus.client import AsyncClient
from flowbus.settings import Settings
from flowbus.states import StateType
from tests.helpers.agents import running_agents
from tests.helpers.runs import WhenBlocking, watch_until_finished
from tests.helpers.scripts import register_greeting_flow
from tests.helpers.waiting import eventually


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_each_run_takes_a_warm_process_of_its_own_and_idle_ones_end_with_the_agent(
    stack: Settings, client: AsyncClient, tmp_path: Path
) -> None:
    flow_id = await register_greeting_flow(client, tmp_path)
    agent = LocalAgent(stack, labels=["itest-warm"], hostname_label=False)
    assert agent.settings.agent.warm_processes > 0
    pids: list[int] = []
    async with running_agents(agent):
        for name in ("one", "two", "three"):
            run_id = await client.create_flow_run(flow_id, labels=["itest-warm"], parameters={"name": name})
            watched = await watch_until_finished(client, run_id)
            assert watched.types[-1] is StateType.SUCCESS, watched.messages
            assert f"Hello, {name}!" in watched.messages
            submitted = [m for m in watched.messages if m.startswith(WhenBlocking.SUBMITTED)]
            pids += [int(m.removeprefix(WhenBlocking.SUBMITTED)) for m in submitted]
        idle = [warm.process.pid for warm in agent._warm._idle if warm.process.pid is not None]
    assert len(pids) == 3, pids
    assert len(set(pids)) == 3, pids  # a process per run, each used once
    assert idle, "the agent kept processes started ahead"
    # The agent stopped: its idle processes see their pipe close and exit.
    await eventually(lambda: _none_alive(idle), "the idle warm processes exited")


async def _none_alive(pids: list[int]) -> bool:
    return not any(_alive(pid) for pid in pids)
