"""Setting and clearing a flow group's schedule (set_flow_group_schedule):
the group's schedule overrides its flows' own, and a schedule that misses a
required parameter of a live version with its switch on is refused."""

from __future__ import annotations

import pytest

from flowbus import subjects
from flowbus.client import AsyncClient
from flowbus.schemas.common import NotFound, ValidationFailed
from flowbus.schemas.flows import ClockSpec, ParameterSpec, ScheduleSpec
from tests.helpers import serialized_flow, unique
from tests.helpers.runs import last_event

DAILY = ScheduleSpec(clocks=[ClockSpec(type="cron", cron="0 6 * * *", timezone="UTC")])
HOURLY = ScheduleSpec(clocks=[ClockSpec(type="interval", interval_seconds=3600)])


async def test_set_and_clear_a_group_schedule(client: AsyncClient) -> None:
    project = unique("p")
    await client.create_project(project)
    flow = await client.register(serialized_flow("f", schedule=DAILY), project)
    group_id = flow.flow_group_id
    event_subject = subjects.flow_group_event(group_id, subjects.FlowFact.GROUP_CHANGED)

    group = await client.set_flow_group_schedule(group_id, HOURLY)
    assert group.schedule == HOURLY
    shown = await client.get_flow(flow.id)
    assert (shown.schedule, shown.is_schedule_active) == (HOURLY, True)
    event = await last_event(client, event_subject)
    assert event["schedule_changed"] is True
    assert ScheduleSpec.model_validate(event["schedule"]) == HOURLY

    # A change of something else says the schedule did not change.
    await client.set_flow_group_labels(group_id, ["eu"])
    event = await last_event(client, event_subject)
    assert (event["labels"], event["schedule_changed"]) == (["eu"], False)

    cleared = await client.set_flow_group_schedule(group_id, None)
    assert cleared.schedule is None
    assert (await client.get_flow(flow.id)).schedule == DAILY  # the flow's own applies again
    event = await last_event(client, event_subject)
    assert (event["schedule"], event["schedule_changed"]) == (None, True)


async def test_a_schedule_missing_a_required_parameter_is_refused_while_the_switch_is_on(
    client: AsyncClient,
) -> None:
    project = unique("p")
    await client.create_project(project)
    covered = ScheduleSpec(clocks=[DAILY.clocks[0].model_copy(update={"parameter_defaults": {"x": 1}})])
    spec = serialized_flow("f", parameters=[ParameterSpec(name="x", required=True)], schedule=covered)
    flow = await client.register(spec, project)
    assert flow.is_schedule_active is True

    with pytest.raises(ValidationFailed, match=f"Flow {flow.id} .*required parameters"):
        await client.set_flow_group_schedule(flow.flow_group_id, HOURLY)
    assert (await client.get_flow(flow.id)).schedule == covered  # nothing stored

    # Group defaults cover it; so does a switch that is off.
    await client.set_flow_group_default_parameters(flow.flow_group_id, {"x": 2})
    assert (await client.set_flow_group_schedule(flow.flow_group_id, HOURLY)).schedule == HOURLY
    await client.set_flow_group_default_parameters(flow.flow_group_id, {})
    await client.set_flow_schedule_state(flow.id, False)
    await client.set_flow_group_schedule(flow.flow_group_id, DAILY)
    assert (await client.get_flow(flow.id)).schedule == DAILY


async def test_an_unknown_group_is_not_found(client: AsyncClient) -> None:
    with pytest.raises(NotFound, match="not found"):
        await client.set_flow_group_schedule(unique("nope"), DAILY)
