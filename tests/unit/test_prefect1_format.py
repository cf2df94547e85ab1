"""Prefect 1.x's serialized flows, tasks, edges, run configs and states read into
flowbus's messages (flowbus_services/gateway/prefect1.py and the Prefect branches
of gateway/convert.py), and Prefect's serialized state built back.

What Prefect sent is kept whole beside what flowbus reads of it; what flowbus
cannot honour (a clock it does not run, schedule filters) and malformed input
of any shape are refused with ValidationFailed (VALIDATION_ERROR), never an
exception of another kind.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from flowbus.schemas.common import ErrorCode, ValidationFailed
from flowbus.schemas.flows import EdgeSpec, ParameterSpec, TaskSpec
from flowbus.states import StateType
from flowbus_services.gateway import prefect1
from flowbus_services.gateway.convert import (
    edges_from_input,
    run_config_from_input,
    serialized_flow_from_input,
    state_from_input,
    tasks_from_input,
)
from flowbus_services.gateway.prefect1 import serialized_state
from tests.helpers import serialized_flow
from tests.helpers.prefect1_payloads import NO_RESULT, V, prefect_edge, prefect_flow, prefect_state, prefect_task

# The task types Prefect names (kept as TaskSpec.type).
PARAMETER = "prefect.core.parameter.Parameter"
FUNCTION = "prefect.tasks.core.function.FunctionTask"

# What ``flow.register()`` sends (decompressed): no tasks or edges, those follow
# in register_tasks and register_edges.
HELLO_FLOW: dict[str, Any] = prefect_flow("hello-flow", ["vm"])


# The parameter is a task too: Prefect registers it with the others.
NAME_TASK = {**prefect_task("name", "name"), "type": "prefect.core.parameter.Parameter", "default": "world"}
SAY_TASK = prefect_task("say-1", inputs={"name": {"required": True, "type": "typing.Any"}})


def with_schedule(*clocks: dict[str, Any], **modifiers: Any) -> dict[str, Any]:
    schedule = {
        "type": "Schedule",
        "clocks": list(clocks),
        "filters": [],
        "or_filters": [],
        "not_filters": [],
        "adjustments": [],
        "__version__": V,
        **modifiers,
    }
    return {**HELLO_FLOW, "schedule": schedule}


def nested(depth: int) -> Any:
    """JSON nested ``depth`` levels deep (built without recursion)."""
    value: Any = []
    for _ in range(depth):
        value = [value]
    return value


def refused(call: Callable[[], object]) -> ValidationFailed:
    with pytest.raises(ValidationFailed) as caught:
        call()
    assert caught.value.code is ErrorCode.VALIDATION_ERROR
    return caught.value


# ---- flows ----------------------------------------------------------------------


def test_a_registered_flow_is_read_and_kept_whole() -> None:
    given = copy.deepcopy(HELLO_FLOW)
    flow = serialized_flow_from_input(given)

    assert flow.name == "hello-flow"
    assert flow.parameters == [ParameterSpec(name="name", required=False, default="world")]
    assert (flow.tasks, flow.edges, flow.schedule) == ([], [], None)
    assert flow.core_version == V
    assert flow.storage.type == "prefect"
    assert flow.storage.prefect == HELLO_FLOW["storage"]
    assert (flow.run_config.labels, flow.run_config.env) == (["vm"], None)
    assert flow.run_config.prefect == HELLO_FLOW["run_config"]
    assert flow.prefect == HELLO_FLOW
    assert given == HELLO_FLOW, "the input is not changed"


def test_a_flow_with_its_tasks_and_edges_inline() -> None:
    """``prefect register`` sends the tasks and edges inside the flow."""
    given = {
        **HELLO_FLOW,
        "tasks": [NAME_TASK, SAY_TASK, prefect_task("shout-1", max_retries=2, retry_delay=10, tags=["b", "a", "b"])],
        "edges": [prefect_edge("name", "say-1", "name"), prefect_edge("say-1", "shout-1")],
    }
    flow = serialized_flow_from_input(given)
    assert flow.tasks == [
        TaskSpec(slug="name", name="name", type=PARAMETER),
        TaskSpec(slug="say-1", name="say", type=FUNCTION),
        TaskSpec(slug="shout-1", name="shout", type=FUNCTION, max_retries=2, retry_delay_seconds=10, tags=["a", "b"]),
    ]
    assert flow.edges == [
        EdgeSpec(upstream="name", downstream="say-1", key="name"),
        EdgeSpec(upstream="say-1", downstream="shout-1"),
    ]
    assert flow.prefect == given

    # The same checks as for flowbus's own flows.
    unknown = {**given, "edges": [prefect_edge("name", "nope-1")]}
    assert "unknown task" in refused(lambda: serialized_flow_from_input(unknown)).message
    twice = {**given, "tasks": [SAY_TASK, SAY_TASK]}
    assert "duplicate task slugs" in refused(lambda: serialized_flow_from_input(twice)).message


def test_flowbus_flows_are_read_as_before() -> None:
    own = serialized_flow("own", tasks=["a"]).model_dump(mode="json")
    flow = serialized_flow_from_input(own)
    assert (flow.storage.type, flow.prefect, flow.run_config.prefect) == ("script", None, None)
    # Only a flow that names Prefect's type and a version is read as Prefect's:
    # anything else is flowbus's form, whose unknown fields are refused.
    for almost in (
        {k: v for k, v in HELLO_FLOW.items() if k != "__version__"},
        {**HELLO_FLOW, "type": "prefect.core.flow.NotAFlow"},
    ):
        assert not prefect1.is_prefect_flow(almost)
        refused(lambda almost=almost: serialized_flow_from_input(almost))  # type: ignore[misc]


def test_a_kept_run_config_is_the_one_checked() -> None:
    """A Prefect agent applies the env of the run config Prefect sent: flowbus's
    form may not carry one of its own beside the env checked."""
    own = serialized_flow("own").model_dump(mode="json")
    for prefect in (
        {"type": "LocalRun", "env": {"PYTHONPATH": "/tmp/evil"}},
        {"type": "LocalRun", "env": {"STAGE": "prod"}},
    ):
        flow = {**own, "run_config": {"labels": None, "env": None, "prefect": prefect}}
        refused(lambda flow=flow: serialized_flow_from_input(flow))  # type: ignore[misc]
    same = {**own, "run_config": {"env": {"STAGE": "prod"}, "prefect": {"type": "LocalRun", "env": {"STAGE": "prod"}}}}
    assert serialized_flow_from_input(same).run_config.env == {"STAGE": "prod"}


def test_a_flow_with_no_storage_or_bad_parts_is_refused() -> None:
    bad = [
        {k: v for k, v in HELLO_FLOW.items() if k != "storage"},
        {**HELLO_FLOW, "storage": None},
        {**HELLO_FLOW, "storage": "Local"},
        {**HELLO_FLOW, "name": ""},
        {**HELLO_FLOW, "name": ["hello"]},
        {**HELLO_FLOW, "parameters": "name"},
        {**HELLO_FLOW, "parameters": [3]},
        {**HELLO_FLOW, "parameters": [{"name": ["x"]}]},
        {**HELLO_FLOW, "tasks": {"say-1": SAY_TASK}},
        {**HELLO_FLOW, "tasks": ["say-1"]},
        {**HELLO_FLOW, "edges": [["name", "say-1"]]},
        {**HELLO_FLOW, "run_config": ["UniversalRun"]},
        {**HELLO_FLOW, "run_config": {"type": "LocalRun", "labels": "vm"}},
        {**HELLO_FLOW, "run_config": {"type": "LocalRun", "env": {"A": 1}}},
        # A run config's env lands in the flow's process: flowbus's rules apply.
        {**HELLO_FLOW, "run_config": {"type": "LocalRun", "env": {"PYTHONPATH": "/tmp"}}},
        {**HELLO_FLOW, "schedule": "hourly"},
        {**HELLO_FLOW, "storage": {"type": "Local", 1: "not a JSON key"}},
        HELLO_FLOW | {f"k{i}": i for i in range(2000)},
        HELLO_FLOW | {"reference_tasks": nested(100)},
    ]
    for flow in bad:
        refused(lambda flow=flow: serialized_flow_from_input(flow))  # type: ignore[misc]


# ---- register_tasks and register_edges -----------------------------------------


def test_register_tasks_input() -> None:
    tasks = tasks_from_input(
        [
            NAME_TASK,
            SAY_TASK,
            prefect_task("retry-1", max_retries=3, retry_delay=30, tags=["etl", "db", "etl"]),
            # Prefect's None where flowbus has a default; a task without a name is called after its slug.
            {"slug": "bare-1", "name": None, "max_retries": None, "tags": None},
        ]
    )
    assert tasks == [
        TaskSpec(slug="name", name="name", type=PARAMETER),
        TaskSpec(slug="say-1", name="say", type=FUNCTION),
        TaskSpec(
            slug="retry-1", name="retry", type=FUNCTION, max_retries=3, retry_delay_seconds=30, tags=["db", "etl"]
        ),
        TaskSpec(slug="bare-1", name="bare-1"),
    ]
    assert tasks_from_input([]) == []


def test_register_edges_input() -> None:
    edges = edges_from_input([prefect_edge("name", "say-1", "name"), prefect_edge("say-1", "shout-1")])
    assert edges == [
        EdgeSpec(upstream="name", downstream="say-1", key="name"),
        EdgeSpec(upstream="say-1", downstream="shout-1"),
    ]
    assert edges_from_input([]) == []


BAD_TASK_FIELDS: dict[str, dict[str, Any]] = {
    "no slug": {"slug": None},
    "empty slug": {"slug": ""},
    "slug a list": {"slug": ["say-1"]},
    "name a number": {"name": 7},
    "max_retries a word": {"max_retries": "three"},
    "max_retries negative": {"max_retries": -1},
    "retry_delay a word": {"retry_delay": "10s"},
    "retry_delay negative": {"retry_delay": -5},
    "tags a string": {"tags": "etl"},
    "an empty tag": {"tags": [""]},
    "a tag a number": {"tags": [3]},
    "tags of two types": {"tags": [1, "etl"]},
    "a tag a list": {"tags": [["etl"]]},
    "a tag an object": {"tags": [{"name": "etl"}]},
    "a tag null": {"tags": [None]},
    "too many tags": {"tags": [f"t{i}" for i in range(1000)]},
}


@pytest.mark.parametrize(
    "tasks",
    [
        pytest.param(None, id="null"),
        pytest.param({"tasks": [SAY_TASK]}, id="an object"),
        pytest.param("say-1", id="a string"),
        pytest.param([3], id="a number in the list"),
        pytest.param([[SAY_TASK]], id="a list in the list"),
        *(pytest.param([{**SAY_TASK, **fields}], id=name) for name, fields in BAD_TASK_FIELDS.items()),
    ],
)
def test_bad_register_tasks_input_is_refused(tasks: Any) -> None:
    refused(lambda: tasks_from_input(tasks))


@pytest.mark.parametrize(
    "edges",
    [
        pytest.param(None, id="null"),
        pytest.param({"edges": []}, id="an object"),
        pytest.param([3], id="a number in the list"),
        pytest.param([{"upstream_task": "name", "downstream_task": {"slug": "say-1"}}], id="a task a string"),
        pytest.param([{"upstream_task": {"slug": "name"}}], id="no downstream task"),
        pytest.param([{"upstream_task": {"slug": "name"}, "downstream_task": None}], id="a null task"),
        pytest.param([{"upstream_task": {}, "downstream_task": {"slug": "say-1"}}], id="a task without a slug"),
        pytest.param([{"upstream_task": {"slug": ["name"]}, "downstream_task": {"slug": "s"}}], id="a slug a list"),
        pytest.param([{**prefect_edge("name", "say-1"), "key": 5}], id="key a number"),
        pytest.param([{**prefect_edge("name", "say-1"), "key": "k" * 10_000}], id="key too long"),
    ],
)
def test_bad_register_edges_input_is_refused(edges: Any) -> None:
    refused(lambda: edges_from_input(edges))


# ---- schedules ------------------------------------------------------------------


def test_a_cron_clock_takes_its_zone_from_its_start_date() -> None:
    clock = {
        "type": "CronClock",
        "cron": "0 6 * * *",
        "start_date": {"dt": "2026-12-01T00:00:00", "tz": "Europe/Paris"},
        "end_date": None,
        "parameter_defaults": {"name": "cron"},
        "labels": ["eu"],
        "day_or": True,
        "__version__": V,
    }
    flow = serialized_flow_from_input(with_schedule(clock, {**clock, "start_date": None, "labels": None}))
    assert flow.schedule is not None
    paris, utc = flow.schedule.clocks
    assert (paris.type, paris.cron, paris.timezone, paris.parameter_defaults, paris.labels) == (
        "cron",
        "0 6 * * *",
        "Europe/Paris",
        {"name": "cron"},
        ["eu"],
    )
    assert (utc.cron, utc.timezone, utc.labels) == ("0 6 * * *", None, None)


def test_an_interval_clock_counts_microseconds() -> None:
    hourly = {
        "type": "IntervalClock",
        "interval": 3_600_000_000,
        "start_date": {"dt": "2026-12-01T08:30:00", "tz": "America/New_York"},
        "end_date": None,
        "parameter_defaults": None,
        "labels": None,
        "__version__": V,
    }
    brief = {"type": "IntervalClock", "interval": 1_500_000, "start_date": None, "__version__": V}
    flow = serialized_flow_from_input(with_schedule(hourly, brief))
    assert flow.schedule is not None
    first, second = flow.schedule.clocks
    assert (first.type, first.interval_seconds, first.timezone, first.parameter_defaults) == (
        "interval",
        3600,
        "America/New_York",
        {},
    )
    assert first.start_date == datetime(2026, 12, 1, 8, 30, tzinfo=ZoneInfo("America/New_York"))
    assert first.start_date is not None
    assert first.start_date.utcoffset() == timedelta(hours=-5)
    assert (second.interval_seconds, second.start_date, second.timezone) == (1.5, None, None)


def test_a_dates_clock_reads_each_date_in_its_zone() -> None:
    clock = {
        "type": "DatesClock",
        "dates": [
            {"dt": "2027-01-01T09:00:00", "tz": "Asia/Tokyo"},
            {"dt": "2027-07-01T09:00:00", "tz": "UTC"},
            {"dt": "2027-08-01T09:00:00", "tz": None},
        ],
        "start_date": {"dt": "2027-01-01T09:00:00", "tz": "Asia/Tokyo"},
        "end_date": None,
        "parameter_defaults": {},
        "labels": None,
        "__version__": V,
    }
    flow = serialized_flow_from_input(with_schedule(clock))
    assert flow.schedule is not None
    [dates] = flow.schedule.clocks
    assert dates.type == "dates"
    assert dates.dates == [
        datetime(2027, 1, 1, 0, tzinfo=UTC),
        datetime(2027, 7, 1, 9, tzinfo=UTC),
        datetime(2027, 8, 1, 9, tzinfo=UTC),
    ]
    assert dates.dates[0].utcoffset() == timedelta(hours=9)


def test_empty_schedule_modifiers_are_no_modifiers() -> None:
    clock = {"type": "CronClock", "cron": "* * * * *", "__version__": V}
    flow = serialized_flow_from_input(with_schedule(clock, filters=None, adjustments=[]))
    assert flow.schedule is not None
    assert len(flow.schedule.clocks) == 1


@pytest.mark.parametrize("modifier", ["filters", "or_filters", "not_filters", "adjustments"])
def test_schedule_filters_and_adjustments_are_refused(modifier: str) -> None:
    clock = {"type": "CronClock", "cron": "0 6 * * *", "__version__": V}
    flow = with_schedule(clock, **{modifier: [{"fn": "prefect.schedules.filters.is_weekday"}]})
    assert modifier in refused(lambda: serialized_flow_from_input(flow)).message


CRON = {"type": "CronClock", "cron": "0 6 * * *", "__version__": V}
INTERVAL = {"type": "IntervalClock", "interval": 60_000_000, "__version__": V}
DATES = {"type": "DatesClock", "dates": [{"dt": "2027-01-01T09:00:00", "tz": "UTC"}], "__version__": V}


BAD_CLOCKS: dict[str, list[Any]] = {
    "an RRuleClock": [{"type": "RRuleClock", "rrule": "FREQ=DAILY"}],
    "no type": [{"cron": "0 6 * * *"}],
    "type a list": [{"type": ["CronClock"], "cron": "0 6 * * *"}],
    "a clock a string": ["CronClock"],
    "no clocks": [],
    "cron not cron": [{**CRON, "cron": "every day"}],
    "cron null": [{**CRON, "cron": None}],
    "unknown zone": [{**CRON, "start_date": {"dt": "2026-12-01T00:00:00", "tz": "Mars/Olympus"}}],
    "zone a list": [{**CRON, "start_date": {"dt": "2026-12-01T00:00:00", "tz": ["UTC"]}}],
    "undeclared parameter": [{**CRON, "parameter_defaults": {"undeclared": 1}}],
    "parameter_defaults a list": [{**CRON, "parameter_defaults": [1]}],
    "labels a string": [{**CRON, "labels": "eu"}],
    "interval null": [{**INTERVAL, "interval": None}],
    "interval a word": [{**INTERVAL, "interval": "1h"}],
    "interval true": [{**INTERVAL, "interval": True}],
    "interval zero": [{**INTERVAL, "interval": 0}],
    "interval negative": [{**INTERVAL, "interval": -60_000_000}],
    "interval past any float": [{**INTERVAL, "interval": 10**400}],
    "interval past a century": [{**INTERVAL, "interval": 1e300}],
    "start a word": [{**INTERVAL, "start_date": {"dt": "yesterday", "tz": "UTC"}}],
    "start a number": [{**INTERVAL, "start_date": {"dt": 5, "tz": "UTC"}}],
    "start without dt": [{**INTERVAL, "start_date": {"tz": "UTC"}}],
    "start in no zone": [{**INTERVAL, "start_date": {"dt": "2026-12-01T00:00:00", "tz": "Nowhere/Land"}}],
    "no dates": [{**DATES, "dates": []}],
    "dates null": [{**DATES, "dates": None}],
    "dates a string": [{**DATES, "dates": "2027-01-01"}],
    "a date a string": [{**DATES, "dates": ["2027-01-01T09:00:00"]}],
    "a date's dt null": [{**DATES, "dates": [{"dt": None}]}],
}


@pytest.mark.parametrize("clocks", [pytest.param(c, id=name) for name, c in BAD_CLOCKS.items()])
def test_clocks_flowbus_cannot_run_or_read_are_refused(clocks: list[Any]) -> None:
    flow = {**with_schedule(), "schedule": {"type": "Schedule", "clocks": clocks, "__version__": V}}
    refused(lambda: serialized_flow_from_input(flow))


def test_an_unknown_clock_is_named() -> None:
    flow = with_schedule(CRON, {"type": "RRuleClock"})
    assert "'RRuleClock'" in refused(lambda: serialized_flow_from_input(flow)).message


# ---- run configs ----------------------------------------------------------------


def test_a_prefect_run_config_is_kept_whole() -> None:
    universal = {"type": "UniversalRun", "labels": ["vm", "gpu"], "env": None, "__version__": V}
    config = run_config_from_input(universal)
    assert config is not None
    assert (config.labels, config.env, config.prefect) == (["vm", "gpu"], None, universal)

    local = {
        "type": "LocalRun",
        "labels": None,
        "env": {"STAGE": "prod"},
        "working_dir": "/srv/flows",
        "__version__": V,
    }
    config = run_config_from_input(local)
    assert config is not None
    # Its labels and env are read; its other fields are the Prefect agent's.
    assert (config.labels, config.env, config.prefect) == (None, {"STAGE": "prod"}, local)


def test_a_flowbus_run_config_is_read_as_before() -> None:
    config = run_config_from_input({"labels": ["a"], "env": {"X": "1"}, "__version__": V})
    assert config is not None
    assert (config.labels, config.env, config.prefect) == (["a"], {"X": "1"}, None)
    assert run_config_from_input(None) is None
    empty = run_config_from_input({})
    assert empty is not None
    assert (empty.labels, empty.env, empty.prefect) == (None, None, None)


@pytest.mark.parametrize(
    "run_config",
    [
        {"cpu": 2},
        {"labels": ["a"], "working_dir": "/srv"},
        {"labels": ["a"], "prefect": {"type": "LocalRun"}},
        ["LocalRun"],
        "LocalRun",
        5,
        {"type": "LocalRun", "labels": "vm"},
        {"type": "LocalRun", "labels": [""]},
        {"type": "LocalRun", "labels": [3]},
        {"type": "LocalRun", "env": ["A=1"]},
        {"type": "LocalRun", "env": {"A": 1}},
        {"type": "LocalRun", "working_dir": nested(100)},
        {"type": "LocalRun"} | {f"k{i}": i for i in range(2000)},
    ],
    ids=lambda v: repr(v)[:80],
)
def test_bad_run_configs_are_refused(run_config: Any) -> None:
    refused(lambda: run_config_from_input(run_config))


# ---- states ---------------------------------------------------------------------


def test_a_prefect_state_is_kept_whole() -> None:
    submitted = prefect_state(
        "Submitted",
        "Submitted for execution",
        state=prefect_state("Scheduled", "Flow run scheduled.", start_time="2026-12-01T21:50:31.890861+00:00"),
    )
    spec = state_from_input(submitted)
    assert (spec.type, spec.message, spec.result, spec.serialized) == (
        StateType.SUBMITTED,
        "Submitted for execution",
        None,
        submitted,
    )

    retrying = prefect_state(
        "Retrying",
        "Retrying Task (after attempt 1 of 3)",
        start_time="2026-12-01T21:51:01+00:00",
        run_count=1,
        cached_inputs={"x": {"type": "Result", "location": None}},
    )
    assert state_from_input(retrying).serialized == retrying

    # flowbus's own form (Prefect's docs' shape) carries no serialized state.
    own = state_from_input({"type": "Success", "message": "It worked!", "result": {"rows": 3}})
    assert (own.type, own.message, own.result, own.serialized) == (StateType.SUCCESS, "It worked!", {"rows": 3}, None)


@pytest.mark.parametrize(
    "state",
    [
        pytest.param(None, id="null"),
        pytest.param("Running", id="a string"),
        pytest.param(["Running"], id="a list"),
        pytest.param({"type": "Running", "colour": "red"}, id="flowbus's form with an unknown key"),
        pytest.param({"__version__": V}, id="no type"),
        pytest.param(prefect_state("Exploded"), id="an unknown type"),
        pytest.param({**prefect_state("Running"), "type": None}, id="type null"),
        pytest.param({**prefect_state("Running"), "type": ["Running"]}, id="type a list"),
        pytest.param(prefect_state("Running", message={"text": "hi"}), id="message an object"),
        pytest.param(prefect_state("Running", message="m" * 100_000), id="message too long"),
        pytest.param(prefect_state("Running", context=nested(100)), id="nested too deep"),
        pytest.param(prefect_state("Running", **{f"k{i}": i for i in range(2000)}), id="too many keys"),
    ],
)
def test_bad_states_are_refused(state: Any) -> None:
    refused(lambda: state_from_input(state))


def test_serialized_state_is_built_in_prefects_full_form() -> None:
    assert serialized_state("Running", "Running flow.") == {
        "type": "Running",
        "message": "Running flow.",
        "_result": NO_RESULT,
        "context": {},
        "cached_inputs": {},
        "__version__": V,
    }
    # A Scheduled state's start time, an aware ISO time (a naive one is UTC).
    for start in (datetime(2030, 1, 1, 12, tzinfo=UTC), datetime(2030, 1, 1, 12)):
        assert serialized_state("Scheduled", None, start) == prefect_state(
            "Scheduled", None, start_time="2030-01-01T12:00:00+00:00"
        )
    paris = datetime(2030, 1, 1, 13, tzinfo=timezone(timedelta(hours=1)))
    assert serialized_state("Scheduled", None, paris)["start_time"] == "2030-01-01T13:00:00+01:00"
    # Not a state type: its type and message only (nothing Prefect could load as one).
    assert serialized_state(None, None) == {"type": None, "message": None}
    assert serialized_state("Exploded", "x") == {"type": "Exploded", "message": "x"}


def test_serialized_state_is_the_stored_one_of_the_same_type() -> None:
    stored = prefect_state("Running", "Running flow.", context={"task_run_count": 2})
    answered = serialized_state("Running", "Running flow.", None, stored)
    assert answered == stored
    answered["message"] = "changed by a reader"
    assert stored["message"] == "Running flow.", "a copy, not the stored object"

    # A later state another client set: the stored one is stale and rebuilt from the row.
    assert serialized_state("Success", "done", None, stored) == prefect_state("Success", "done")
    assert serialized_state("Scheduled", None, datetime(2030, 1, 1, tzinfo=UTC), stored)["type"] == "Scheduled"
