"""The input limits of flowbus.schemas.common: each cap refuses with
VALIDATION_ERROR before the items past it are validated, the flow checks are
linear, JSON fields nest at most MAX_JSON_DEPTH levels, and the log writer
keeps only the records of the run a batch's subject names."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

import pytest
from faststream.message import StreamMessage
from pydantic import BaseModel, ValidationError

from flowbus import subjects
from flowbus.runtime.payload import PayloadLimits
from flowbus.runtime.service import lenient_json_decoder
from flowbus.schemas import common
from flowbus.schemas.agents import ListAgents
from flowbus.schemas.common import (
    LIST_LIMIT_MAX,
    MAX_CLOCK_DATES,
    MAX_CLOCKS,
    MAX_EDGES,
    MAX_ENV_VARS,
    MAX_JSON_DEPTH,
    MAX_LABELS,
    MAX_PARAMETERS,
    MAX_TASK_TAGS,
    MAX_TASKS,
    NAME_MAX,
    duplicates,
    json_depth,
    validation_failed,
)
from flowbus.schemas.flows import ListFlows, ListProjects, RegisterFlow, SerializedFlow
from flowbus.schemas.runs import CreateFlowRun, LogBatch, LogRecord, SetFlowRunState
from flowbus_services.state.logs import records_of


def _flow(tasks: int, edges: int = 0, parameters: int = 0, **extra: Any) -> dict[str, Any]:
    return {
        "name": "big",
        "storage": {"type": "module", "module": "m"},
        "tasks": [{"slug": f"task-{i:05d}", "name": f"Task {i}"} for i in range(tasks)],
        "edges": [
            {"upstream": f"task-{i % tasks:05d}", "downstream": f"task-{(i + 1) % tasks:05d}"} for i in range(edges)
        ],
        "parameters": [{"name": f"p{i}"} for i in range(parameters)],
        **extra,
    }


def _refusal(model: type[BaseModel], data: Any) -> str:
    """The VALIDATION_ERROR message a service answers ``data`` with."""
    with pytest.raises(ValidationError) as caught:
        model.model_validate(data)
    failed = validation_failed(caught.value)
    assert failed.code == "VALIDATION_ERROR"
    return failed.message


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


async def _as_the_service_validates(body: bytes) -> None:
    """Decode and validate a register_flow payload as the registration service does."""
    decoded = await lenient_json_decoder(PayloadLimits(len(body), 64))(StreamMessage[Any](raw_message=None, body=body))
    RegisterFlow.model_validate(decoded)


async def test_a_30000_task_flow_is_refused_at_its_count_before_any_task_is_checked() -> None:
    body = json.dumps({"project_name": "p", "serialized_flow": _flow(30_000)}).encode()
    with pytest.raises(ValidationError) as caught:
        await _as_the_service_validates(body)
    assert validation_failed(caught.value).message == (
        f"invalid message: serialized_flow.tasks: 30000 tasks exceed the limit of {MAX_TASKS}"
    )
    # Issue 16 (F8): pairwise checks over the tasks took 8.7 s here and stalled
    # the service. The count is refused first: one error, no check per task.
    assert len(caught.value.errors()) == 1


def test_a_flow_at_the_caps_validates() -> None:
    flow = SerializedFlow.model_validate(_flow(MAX_TASKS, MAX_EDGES, MAX_PARAMETERS))
    assert (len(flow.tasks), len(flow.edges), len(flow.parameters)) == (MAX_TASKS, MAX_EDGES, MAX_PARAMETERS)


class _Counted(str):
    """A string that counts the comparisons made of it."""

    calls = 0

    def __hash__(self) -> int:
        _Counted.calls += 1
        return str.__hash__(self)

    def __eq__(self, other: object) -> bool:
        _Counted.calls += 1
        return str.__eq__(self, other)


@pytest.mark.parametrize("size", [1_000, MAX_TASKS, 4 * MAX_TASKS])
def test_finding_duplicates_is_linear(size: int) -> None:
    # The quadratic check compared each value with every other: size**2 operations.
    values = [_Counted(f"t{i}") for i in range(size)] + [_Counted("t0"), _Counted("t7")]
    _Counted.calls = 0
    assert duplicates(values) == ["t0", "t7"]
    assert _Counted.calls <= 3 * len(values)


def test_duplicates_are_named_a_few_at_a_time() -> None:
    tasks = _flow(1000)["tasks"] * 2
    message = _refusal(SerializedFlow, {**_flow(0), "tasks": tasks})
    assert "duplicate task slugs: ['task-00000'" in message
    assert "and 980 more" in message


@pytest.mark.parametrize(
    ("flow", "what"),
    [
        pytest.param(_flow(MAX_TASKS + 1), f"{MAX_TASKS + 1} tasks", id="tasks"),
        pytest.param(_flow(2, MAX_EDGES + 1), f"{MAX_EDGES + 1} edges", id="edges"),
        pytest.param(_flow(1, parameters=MAX_PARAMETERS + 1), f"{MAX_PARAMETERS + 1} parameters", id="parameters"),
        pytest.param(
            {**_flow(0), "tasks": [{"slug": "t", "name": "t", "tags": ["x"] * (MAX_TASK_TAGS + 1)}]},
            f"{MAX_TASK_TAGS + 1} tags",
            id="task-tags",
        ),
        pytest.param(
            {**_flow(0), "schedule": {"clocks": [{"type": "interval", "interval_seconds": 60}] * (MAX_CLOCKS + 1)}},
            f"{MAX_CLOCKS + 1} clocks",
            id="clocks",
        ),
        pytest.param(
            {**_flow(0), "schedule": {"clocks": [{"type": "dates", "dates": ["2030-01-01T00:00:00Z"] * 1001}]}},
            f"{MAX_CLOCK_DATES + 1} dates",
            id="dates",
        ),
        pytest.param(
            {**_flow(0), "run_config": {"labels": ["l"] * (MAX_LABELS + 1)}}, f"{MAX_LABELS + 1} labels", id="labels"
        ),
        pytest.param(
            {**_flow(0), "run_config": {"env": {f"V{i}": "x" for i in range(MAX_ENV_VARS + 1)}}},
            f"{MAX_ENV_VARS + 1} environment variables",
            id="env",
        ),
    ],
)
def test_each_list_cap_is_a_validation_error(flow: dict[str, Any], what: str) -> None:
    assert "exceed the limit of" in _refusal(SerializedFlow, flow)
    assert what in _refusal(SerializedFlow, flow)


@pytest.mark.parametrize(
    "flow",
    [
        pytest.param({**_flow(2), "edges": [{"upstream": "task-00000", "downstream": "task-00001", "key": "k" * 256}]}),
        pytest.param({**_flow(0), "schedule": {"clocks": [{"type": "cron", "cron": "*" * 256}]}}, id="cron"),
        pytest.param(
            {**_flow(0), "schedule": {"clocks": [{"type": "cron", "cron": "* * * * *", "timezone": "z" * 256}]}},
            id="timezone",
        ),
        pytest.param({**_flow(0), "run_config": {"env": {"K" * 256: "v"}}}, id="env-name"),
        pytest.param({**_flow(0), "run_config": {"env": {"K": "v" * 40_000}}}, id="env-value"),
    ],
)
def test_strings_are_bounded(flow: dict[str, Any]) -> None:
    assert "at most" in _refusal(SerializedFlow, flow)


def test_json_depth_counts_containers_without_recursing() -> None:
    assert json_depth(1, 10) == 0
    assert json_depth({"a": [1, {"b": []}]}, 10) == 4
    # Far deeper than the interpreter could recurse: it stops past the limit.
    assert json_depth(_nested(100_000), MAX_JSON_DEPTH) == MAX_JSON_DEPTH + 1


@pytest.mark.parametrize(
    ("model", "make"),
    [
        pytest.param(CreateFlowRun, lambda v: {"flow_id": "f", "parameters": {"p": v}}, id="run-parameters"),
        pytest.param(CreateFlowRun, lambda v: {"flow_id": "f", "context": {"c": v}}, id="run-context"),
        pytest.param(
            SetFlowRunState,
            lambda v: {"flow_run_id": "r", "version": 1, "state": {"type": "Success", "result": v}},
            id="state-result",
        ),
        pytest.param(
            LogRecord,
            lambda v: {
                "flow_run_id": "r",
                "timestamp": "2030-01-01T00:00:00Z",
                "name": "n",
                "level": "INFO",
                "message": "m",
                "info": {"i": v},
            },
            id="log-info",
        ),
        pytest.param(SerializedFlow, lambda v: {**_flow(0), "parameters": [{"name": "p", "default": v}]}, id="default"),
    ],
)
def test_json_fields_nest_at_most_max_json_depth_levels(model: type[BaseModel], make: Any) -> None:
    # The field's own object counts as a level: a value inside it may nest one less.
    model.model_validate(make(_nested(MAX_JSON_DEPTH - 1)))
    model.model_validate_json(json.dumps(make(_nested(MAX_JSON_DEPTH - 1))))
    for depth in (MAX_JSON_DEPTH + 1, 150):
        assert f"deeper than {MAX_JSON_DEPTH} levels" in _refusal(model, make(_nested(depth)))
        with pytest.raises(ValidationError):
            model.model_validate_json(json.dumps(make(_nested(depth))))


def test_run_parameters_are_capped() -> None:
    too_many = {f"p{i}": i for i in range(MAX_PARAMETERS + 1)}
    assert f"{MAX_PARAMETERS + 1} parameters" in _refusal(CreateFlowRun, {"flow_id": "f", "parameters": too_many})
    long_name = {"p" * (NAME_MAX + 1): 1}
    assert "at most" in _refusal(CreateFlowRun, {"flow_id": "f", "parameters": long_name})


async def test_a_payload_nested_too_deeply_for_json_loads_is_refused_not_raised() -> None:
    body = b"[" * 100_000 + b"]" * 100_000
    decoded = await lenient_json_decoder(PayloadLimits(len(body), 64))(StreamMessage[Any](raw_message=None, body=body))
    assert decoded.message == "payload nested deeper than 64 levels"


@pytest.mark.parametrize("model", [ListProjects, ListFlows, ListAgents])
def test_list_pages_are_capped(model: type[BaseModel]) -> None:
    assert model.model_validate({}).limit == common.LIST_LIMIT_DEFAULT  # type: ignore[attr-defined]
    assert model.model_validate({"limit": LIST_LIMIT_MAX, "offset": 5}).offset == 5  # type: ignore[attr-defined]
    for bad in ({"limit": LIST_LIMIT_MAX + 1}, {"limit": 0}, {"offset": -1}):
        _refusal(model, bad)


def _record(run_id: str, message: str) -> LogRecord:
    return LogRecord(flow_run_id=run_id, timestamp=datetime.now(UTC), name="n", level="INFO", message=message)


def test_the_log_writer_keeps_only_the_records_of_the_subjects_run(caplog: pytest.LogCaptureFixture) -> None:
    batch = LogBatch(records=[_record("run-a", "own"), _record("run-b", "forged"), _record("run-b", "forged too")])
    with caplog.at_level(logging.WARNING, logger="flowbus_services.state.logs"):
        kept = records_of(subjects.logs("run-a"), batch)
    assert [r.message for r in kept] == ["own"]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "dropped 2 of 3 log records" in warnings[0].getMessage()
    caplog.clear()
    assert [r.message for r in records_of(subjects.logs("run-b"), LogBatch(records=[_record("run-b", "x")]))] == ["x"]
    assert not caplog.records
