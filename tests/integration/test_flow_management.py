"""Registration beyond registering: projects, archiving, settings, schedules, groups."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from flowbus import subjects
from flowbus.client import AsyncClient
from flowbus.db.engine import Database
from flowbus.db.tables import FlowRun
from flowbus.schemas.common import Archived, Conflict, NotFound, ValidationFailed
from flowbus.schemas.flows import ClockSpec, ParameterSpec, ScheduleSpec
from flowbus.schemas.runs import FlowRunDeleted, LogBatch, LogRecord, StateChanged
from flowbus.states import StateType
from tests.helpers import register, serialized_flow, unique
from tests.helpers.commands import send
from tests.helpers.runs import last_event, watch_until_finished
from tests.helpers.waiting import eventually

DAILY = ClockSpec(type="cron", cron="0 6 * * *", timezone="UTC")


async def insert_auto_scheduled_run(database_url: str, flow_id: str, group_id: str) -> str:
    """An auto-scheduled run in the future, written straight to the database:
    flowbus does not create runs from a schedule's clocks yet, so this stands
    in for the run such a scheduler would have created."""
    db = Database(database_url)
    try:
        async with db.write_session() as session:
            run = FlowRun(
                flow_id=flow_id,
                flow_group_id=group_id,
                name="auto",
                scheduled_start_time=datetime.now(UTC) + timedelta(days=1),
                auto_scheduled=True,
                state=StateType.SCHEDULED.value,
            )
            session.add(run)
        return run.id
    finally:
        await db.dispose()


# ---- projects -------------------------------------------------------------------


async def test_rename_describe_and_get_project(client: AsyncClient) -> None:
    old, new, taken = unique("old"), unique("new"), unique("taken")
    await client.create_project(old)
    await client.create_project(taken)
    with pytest.raises(Conflict, match="already exists"):
        await client.rename_project(old, taken)
    renamed = await client.rename_project(old, new)
    assert renamed.name == new
    await client.set_project_description(new, "all the ETL")
    assert (await client.get_project(new)).description == "all the ETL"
    with pytest.raises(NotFound):
        await client.get_project(old)
    with pytest.raises(NotFound):
        await client.rename_project(unique("missing"), unique("x"))


async def test_deleting_a_project_cascades_to_flows_runs_and_logs(client: AsyncClient) -> None:
    project = unique("doomed")
    flow = await register(client, project, "f")
    run_id = await client.create_flow_run(flow.id)
    record = LogRecord(flow_run_id=run_id, timestamp=datetime.now(UTC), name="t", level="INFO", message="kept?")
    await client.nc.jetstream().publish(subjects.logs(run_id), LogBatch(records=[record]).model_dump_json().encode())
    await eventually(lambda: client.get_flow_run_logs(run_id), "the log record is stored")
    await client.delete_project(project)
    with pytest.raises(NotFound):
        await client.get_flow(flow.id)
    with pytest.raises(NotFound):
        await client.get_flow_run(run_id)
    with pytest.raises(NotFound):
        await client.get_flow_run_logs(run_id)
    assert project not in [p.name for p in await client.get_projects()]
    with pytest.raises(NotFound):
        await client.delete_project(project)


# ---- archiving ------------------------------------------------------------------


async def test_archiving_blocks_runs_and_cleans_up_waiting_ones(client: AsyncClient, database_url: str) -> None:
    flow = await register(client, unique("p"), "f")
    adhoc_id = await client.create_flow_run(flow.id, scheduled_start_time=datetime.now(UTC) + timedelta(hours=1))
    auto_id = await insert_auto_scheduled_run(database_url, flow.id, flow.flow_group_id)

    archived = await client.archive_flow(flow.id)
    assert archived.archived is True
    assert (await last_event(client, subjects.flow_event(flow.id, "archived")))["fact"] == "archived"
    with pytest.raises(Archived, match=f"Flow {flow.id} is archived."):
        await client.create_flow_run(flow.id)

    cancelled = (await watch_until_finished(client, adhoc_id)).final
    assert isinstance(cancelled, StateChanged)
    assert cancelled.state.type is StateType.CANCELLED
    assert cancelled.state.message == f"Flow {flow.id} was archived."
    assert isinstance((await watch_until_finished(client, auto_id)).final, FlowRunDeleted)
    with pytest.raises(NotFound):
        await client.get_flow_run(auto_id)

    restored = await client.unarchive_flow(flow.id)
    assert restored.archived is False
    assert (await client.create_flow_run_out(flow.id)).flow_id == flow.id


async def test_two_versions_may_both_be_unarchived(client: AsyncClient) -> None:
    project = unique("p")
    v1 = await register(client, project, "f")
    v2 = await register(client, project, "f")
    await client.unarchive_flow(v1.id)
    live = await client.get_flows(project_name=project, archived=False, newest_only=False)
    assert sorted(f.version for f in live) == [1, 2]
    detail = await client.get_flow(v2.id)
    assert detail.versions is not None
    assert [(v.version, v.archived) for v in detail.versions] == [(2, False), (1, False)]
    with pytest.raises(Conflict, match="2 unarchived flows"):
        await client.create_flow_run(version_group_id=v2.flow_group_id)


async def test_unknown_flow_ids_are_not_found(client: AsyncClient) -> None:
    for call in (
        client.archive_flow("nope"),
        client.unarchive_flow("nope"),
        client.set_flow_settings("nope", heartbeat_enabled=False),
        client.set_flow_schedule_state("nope", True),
        client.set_flow_group_labels("nope", ["x"]),
        client.set_flow_group_default_parameters("nope", {"x": 1}),
    ):
        with pytest.raises(NotFound):
            await call


# ---- settings -------------------------------------------------------------------


async def test_settings_toggle_per_group(client: AsyncClient) -> None:
    project = unique("p")
    v1 = await register(client, project, "f")
    assert v1.settings.model_dump() == {
        "heartbeat_enabled": True,
        "lazarus_enabled": True,
        "version_locking_enabled": False,
    }
    await client.disable_flow_heartbeat(v1.id)
    await client.disable_lazarus_for_flow(v1.id)
    out = await client.enable_flow_version_locking(v1.id)
    assert out.settings.model_dump() == {
        "heartbeat_enabled": False,
        "lazarus_enabled": False,
        "version_locking_enabled": True,
    }
    assert (await last_event(client, subjects.flow_event(v1.id, "settings")))["fact"] == "settings"
    # Settings live on the group: the next version has them too.
    v2 = await register(client, project, "f")
    assert v2.settings == out.settings
    back = await client.disable_flow_heartbeat(v2.id, value=False)
    assert back.settings.heartbeat_enabled is True
    detail = await client.get_flow_run(await client.create_flow_run(v2.id))
    assert detail.heartbeat_enabled is True
    assert detail.version_locking_enabled is True


async def test_settings_command_needs_a_setting(client: AsyncClient) -> None:
    flow = await register(client, unique("p"), "f")
    reply = await send(client.nc, subjects.RegistrationCommands.SET_FLOW_SETTINGS, {"flow_id": flow.id})
    assert reply["error"]["code"] == "VALIDATION_ERROR"


# ---- schedules ------------------------------------------------------------------


async def test_schedule_needs_required_parameters_covered(client: AsyncClient, database_url: str) -> None:
    project = unique("p")
    await client.create_project(project)
    required = [ParameterSpec(name="x", required=True), ParameterSpec(name="y", default=1)]
    uncovered = serialized_flow("f", parameters=required, schedule=ScheduleSpec(clocks=[DAILY]))
    flow = await client.register(uncovered, project)
    assert flow.is_schedule_active is False  # registration could not turn it on
    with pytest.raises(ValidationFailed, match=r"Can not schedule a flow that has required parameters\."):
        await client.set_flow_schedule_state(flow.id, True)

    # Group defaults cover the parameter for every clock.
    await client.set_flow_group_default_parameters(flow.flow_group_id, {"x": 5})
    on = await client.set_flow_schedule_state(flow.id, True)
    assert on.is_schedule_active is True
    assert on.default_parameters == {"x": 5}

    auto_id = await insert_auto_scheduled_run(database_url, flow.id, flow.flow_group_id)
    adhoc_id = await client.create_flow_run(flow.id, scheduled_start_time=datetime.now(UTC) + timedelta(hours=1))
    off = await client.set_flow_schedule_state(flow.id, False)
    assert off.is_schedule_active is False
    assert isinstance((await watch_until_finished(client, auto_id)).final, FlowRunDeleted)
    # Ad-hoc runs survive a schedule switch.
    assert (await client.get_flow_run(adhoc_id)).run.state.type is StateType.SCHEDULED


async def test_clock_parameter_defaults_cover_required_parameters(client: AsyncClient) -> None:
    project = unique("p")
    await client.create_project(project)
    clocks = [
        DAILY.model_copy(update={"parameter_defaults": {"x": 1}}),
        DAILY.model_copy(update={"parameter_defaults": {"x": 2}}),
    ]
    spec = serialized_flow(
        "f", parameters=[ParameterSpec(name="x", required=True)], schedule=ScheduleSpec(clocks=clocks)
    )
    flow = await client.register(spec, project)
    assert flow.is_schedule_active is True
    half = ScheduleSpec(clocks=[clocks[0], DAILY])
    other = await client.register(serialized_flow("g", parameters=spec.parameters, schedule=half), project)
    assert other.is_schedule_active is False


async def test_unscheduled_flow_cannot_be_turned_on(client: AsyncClient) -> None:
    flow = await register(client, unique("p"), "f")
    with pytest.raises(ValidationFailed, match="has no schedule"):
        await client.set_flow_schedule_state(flow.id, True)


async def test_unarchiving_restores_an_active_schedule(client: AsyncClient) -> None:
    project = unique("p")
    await client.create_project(project)
    flow = await client.register(serialized_flow("f", schedule=ScheduleSpec(clocks=[DAILY])), project)
    assert flow.is_schedule_active is True
    await client.archive_flow(flow.id)
    assert (await client.unarchive_flow(flow.id)).is_schedule_active is True


# ---- group labels and default parameters -------------------------------------------


async def test_group_labels_and_defaults_apply_to_queries_and_runs(client: AsyncClient) -> None:
    flow = await register(
        client, unique("p"), "f", labels=["flow-label"], parameters=[ParameterSpec(name="n", default=1)]
    )
    await client.set_flow_group_labels(flow.flow_group_id, ["gpu", "eu"])
    await client.set_flow_group_default_parameters(flow.flow_group_id, {"n": 7})
    shown = await client.get_flow(flow.id)
    assert shown.labels == ["eu", "gpu"]
    assert shown.default_parameters == {"n": 7}
    run = await client.create_flow_run_out(flow.id)
    assert run.labels == ["eu", "gpu"]
    assert run.parameters == {"n": 7}
    await client.set_flow_group_labels(flow.flow_group_id, None)
    assert (await client.get_flow(flow.id)).labels == ["flow-label"]
