"""The fast lane's bound: past ``nats.fast_lane_max_pending`` commands (or
``..._max_pending_bytes``) in hand, a command is answered UNAVAILABLE at once;
none waits past the request timeout, the others are applied, and the client
resends what was turned away."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from nats.aio.client import Client

from flowbus import subjects
from flowbus.client import AsyncClient
from flowbus.schemas.common import ErrorCode, Reply
from flowbus.schemas.runs import CreateFlowRun, FlowRunOut
from flowbus.settings import GatewaySettings, NatsTuning, SchedulerSettings, Settings
from flowbus_services.up import free_port
from tests.helpers.builders import register, unique

BURST = 300
BOUND = 4
TIMEOUT = 10.0


@pytest.fixture
def settings(request: pytest.FixtureRequest, nats_url: str, database_url: str, tmp_path: Path) -> Settings:
    # Either bound alone turns commands away: a few commands' worth of bytes, or BOUND commands.
    bound = {"fast_lane_max_pending": BOUND} if request.param == "count" else {"fast_lane_max_pending_bytes": 600}
    return Settings(
        home=tmp_path / "home",
        nats_url=nats_url,
        database_url=database_url,
        nats=NatsTuning(max_command_bytes=64 * 1024, request_timeout=TIMEOUT, unavailable_retry_seconds=60, **bound),
        scheduler=SchedulerSettings(release_interval=0.1),
        gateway=GatewaySettings(port=free_port(), auth="off"),
    )


@pytest.mark.parametrize("settings", ["count", "bytes"], indirect=True)
async def test_a_full_fast_lane_answers_unavailable(client: AsyncClient, nc: Client) -> None:
    flow = await register(client, unique("p"), unique("f"))
    payload = CreateFlowRun(flow_id=flow.id).model_dump_json().encode()

    async def create() -> Reply[FlowRunOut]:
        msg = await nc.request(subjects.RunCreationCommands.CREATE_FLOW_RUN, payload, timeout=TIMEOUT)
        return Reply[FlowRunOut].model_validate_json(msg.data)

    # A request that hung past the timeout would raise here.
    replies = await asyncio.gather(*(create() for _ in range(BURST)))
    refused = [r.error for r in replies if r.error is not None]
    created = [r.data for r in replies if r.data is not None]
    assert refused, "the burst never filled the fast lane"
    assert {e.code for e in refused} == {ErrorCode.UNAVAILABLE}
    assert created
    assert len(created) + len(refused) == BURST
    # What was turned away was not created.
    runs = await client.get_flow_runs(flow_id=flow.id, limit=1000)
    assert sorted(r.id for r in runs) == sorted(r.id for r in created)


@pytest.mark.parametrize("settings", ["count"], indirect=True)
async def test_the_client_resends_what_was_turned_away(client: AsyncClient) -> None:
    flow = await register(client, unique("p"), unique("f"))
    ids = await asyncio.gather(*(client.create_flow_run(flow.id) for _ in range(30)))
    assert len(set(ids)) == 30
