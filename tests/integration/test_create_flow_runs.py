"""create_flow_runs: several creates in one command, each decided as if sent alone."""

from __future__ import annotations

import json

import pytest
from nats.aio.client import Client as Nats

from flowbus import subjects
from flowbus.client import AsyncClient
from flowbus.schemas.common import ErrorCode, ValidationFailed
from flowbus.schemas.runs import MAX_CREATES_PER_COMMAND, CreateFlowRun
from tests.helpers.builders import register, unique

pytestmark = pytest.mark.asyncio


async def test_each_create_of_a_batch_gets_its_own_outcome(client: AsyncClient) -> None:
    flow = await register(client, unique("p"), unique("batch"))
    runs = [
        CreateFlowRun(flow_id=flow.id, idempotency_key="k1"),
        CreateFlowRun(flow_id="no-such-flow"),
        CreateFlowRun(flow_id=flow.id, idempotency_key="k1"),  # the same key: the same run
        CreateFlowRun(flow_id=flow.id, parameters={"unknown": 1}),
    ]
    first, missing, again, refused = await client.create_flow_runs(runs)
    assert first.id is not None
    assert again.id == first.id
    assert missing.error is not None
    assert missing.error.code is ErrorCode.NOT_FOUND
    assert refused.error is not None
    assert refused.error.code is ErrorCode.VALIDATION_ERROR
    listed = await client.get_flow_runs(flow_id=flow.id)
    assert [r.id for r in listed] == [first.id]


async def test_an_oversize_or_malformed_batch_is_refused_whole(client: AsyncClient, nc: Nats) -> None:
    flow = await register(client, unique("p"), unique("batch"))
    with pytest.raises(ValidationFailed):
        await client.create_flow_runs([CreateFlowRun(flow_id=flow.id)] * (MAX_CREATES_PER_COMMAND + 1))
    for payload in (b"{not json", json.dumps({"runs": []}).encode(), json.dumps({"runs": [{"flow_id": 5}]}).encode()):
        reply = json.loads((await nc.request(subjects.RunCreationCommands.CREATE_FLOW_RUNS, payload, timeout=10)).data)
        assert reply["ok"] is False
        assert reply["error"]["code"] == "VALIDATION_ERROR"
    assert await client.get_flow_runs(flow_id=flow.id) == []
