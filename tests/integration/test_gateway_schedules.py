"""The ``flow_schedule`` query over real HTTP: a flow's next start times as the
scheduler service computes them (cron and interval clocks, the group's
schedule over the flow's), inactive and unscheduled flows, a bad ``count``,
an unknown flow, and a read-only key."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from flowbus.client import AsyncClient
from flowbus.schemas.api_keys import Role
from flowbus.schemas.flows import ClockSpec, ParameterSpec, ScheduleSpec
from flowbus.settings import Settings
from tests.helpers.builders import register, unique
from tests.helpers.gateway import GraphQL

SCHEDULE = """
query ($id: uuid!, $count: Int) {
  flow_schedule(flow_id: $id, count: $count) { flow_id active source upcoming { start labels parameters } }
}"""
PARIS = ZoneInfo("Europe/Paris")
UNKNOWN = "00000000-0000-4000-8000-000000000000"
DAILY_AT_SIX = ScheduleSpec(
    clocks=[ClockSpec(type="cron", cron="0 6 * * *", timezone="Europe/Paris", parameter_defaults={"x": 2})]
)
HOURLY = ScheduleSpec(clocks=[ClockSpec(type="interval", interval_seconds=3600, labels=["gpu"])])


async def schedule(gql: GraphQL, flow_id: str, count: int | None = None, key: str | None = None) -> dict[str, Any]:
    variables: dict[str, Any] = {"id": flow_id} if count is None else {"id": flow_id, "count": count}
    result: dict[str, Any] = (await gql.data(SCHEDULE, variables, key=key))["flow_schedule"]
    return result


def starts(answer: dict[str, Any]) -> list[datetime]:
    return [datetime.fromisoformat(u["start"]) for u in answer["upcoming"]]


async def test_a_cron_schedule_lists_its_next_times(gql: GraphQL, client: AsyncClient) -> None:
    params = [ParameterSpec(name="x", default=1), ParameterSpec(name="y", default="a")]
    flow = await register(client, unique("p"), "f", schedule=DAILY_AT_SIX, parameters=params)
    before = datetime.now(UTC)
    answer = await schedule(gql, flow.id, 3)
    assert (answer["flow_id"], answer["active"], answer["source"]) == (flow.id, True, "flow")
    times = starts(answer)
    assert len(times) == 3
    assert before < times[0] <= before + timedelta(days=1, hours=1)
    paris = [t.astimezone(PARIS) for t in times]
    assert {(t.hour, t.minute) for t in paris} == {(6, 0)}
    assert [b.date() - a.date() for a, b in pairwise(paris)] == [timedelta(days=1)] * 2
    # The clock's values over the flow's defaults; no labels of its own.
    assert [(u["parameters"], u["labels"]) for u in answer["upcoming"]] == [({"x": 2, "y": "a"}, None)] * 3
    # What the CLI's command answers (flowbus get schedule), the same request.
    assert times == [u.start for u in (await client.get_schedule(flow.id, 3)).upcoming]
    # Ten by default.
    assert len((await schedule(gql, flow.id))["upcoming"]) == 10


async def test_an_interval_schedule_and_the_groups_over_the_flows(gql: GraphQL, client: AsyncClient) -> None:
    params = [ParameterSpec(name="x", default=1)]
    flow = await register(client, unique("p"), "f", schedule=DAILY_AT_SIX, parameters=params)
    await client.set_flow_group_schedule(flow.flow_group_id, HOURLY)
    answer = await schedule(gql, flow.id, 100)
    assert (answer["active"], answer["source"]) == (True, "group")
    times = starts(answer)
    assert len(times) == 100
    assert {b - a for a, b in pairwise(times)} == {timedelta(hours=1)}
    assert {tuple(u["labels"]) for u in answer["upcoming"]} == {("gpu",)}


async def test_inactive_and_unscheduled_flows(gql: GraphQL, client: AsyncClient) -> None:
    off = await register(client, unique("p"), "off", schedule=HOURLY, set_schedule_active=False)
    answer = await schedule(gql, off.id, 2)
    # Off: what it would create once on.
    assert (answer["active"], answer["source"], len(answer["upcoming"])) == (False, "flow", 2)
    none = await register(client, unique("p"), "none")
    assert await schedule(gql, none.id) == {"flow_id": none.id, "active": False, "source": None, "upcoming": []}


async def test_a_bad_count_or_an_unknown_flow_is_refused(gql: GraphQL, client: AsyncClient) -> None:
    flow = await register(client, unique("p"), "f", schedule=HOURLY)
    for count in (0, -1, 101, 10_000):
        assert await gql.error_codes(SCHEDULE, {"id": flow.id, "count": count}) == ["VALIDATION_ERROR"], count
    response = await gql.post(SCHEDULE, {"id": flow.id, "count": "ten"})
    assert [e["extensions"]["code"] for e in response.json()["errors"]] == ["VALIDATION_ERROR"]
    assert await gql.error_codes(SCHEDULE, {"id": UNKNOWN}) == ["NOT_FOUND"]
    response = await gql.post(SCHEDULE, {"id": "not-a-uuid"})
    assert [e["extensions"]["code"] for e in response.json()["errors"]] == ["VALIDATION_ERROR"]


class TestKeys:
    @pytest.fixture
    def settings(self, settings: Settings, database_url: str) -> Settings:
        # (database_url named here too, or pytest loses its parameters through the override)
        return settings.model_copy(update={"gateway": settings.gateway.model_copy(update={"auth": "on"})})

    async def test_a_read_only_key_may_read_a_schedule(self, gql: GraphQL, client: AsyncClient) -> None:
        flow = await register(client, unique("p"), "f", schedule=HOURLY)
        key = (await client.create_api_key(unique("viewer"), Role.READ_ONLY)).key
        assert len((await schedule(gql, flow.id, 1, key=key))["upcoming"]) == 1
