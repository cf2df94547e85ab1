"""``FlowRunInfo``: the 1.x shape of ``get_flow_run_info``, built from a ``get_flow_run`` reply."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from flowbus.client import FlowRunInfo
from flowbus.schemas.runs import FlowRunDetail, FlowRunOut, TaskRunOut
from flowbus.states import Failed, State, StateType, Success

NOW = datetime(2030, 1, 31, 12, 0, tzinfo=UTC)


def state(type_: str, message: str | None, version: int) -> dict[str, Any]:
    return {"type": type_, "message": message, "timestamp": NOW, "version": version}


def detail(state_type: str = "Success", message: str | None = "All reference tasks succeeded.") -> FlowRunDetail:
    run = {
        "id": "run-1",
        "flow_id": "flow-1",
        "flow_name": "f",
        "flow_group_id": "group-1",
        "project_name": "p",
        "name": "brave-otter",
        "parameters": {"n": 7},
        "context": {"team": "data"},
        "labels": ["gpu"],
        "scheduled_start_time": NOW,
        "auto_scheduled": False,
        "idempotency_key": "nightly",
        "version": 4,
        "state": state(state_type, message, 4),
        "agent_id": "agent-1",
        "start_time": NOW,
        "end_time": NOW,
        "times_resurrected": 0,
        "created": NOW,
        "updated": NOW,
    }
    task_run = {
        "id": "task-run-1",
        "flow_run_id": "run-1",
        "task_slug": "a-1",
        "task_name": "a",
        "map_index": -1,
        "version": 3,
        "state": state("Success", None, 3),
        "max_retries": 0,
        "retry_delay_seconds": None,
    }
    return FlowRunDetail.model_validate(
        {
            "run": run,
            "task_runs": [task_run],
            "storage": {"type": "script", "path": "/tmp/f.py"},
            "tasks": [],
            "run_config": {},
            "heartbeat_enabled": True,
            "version_locking_enabled": False,
        }
    )


def test_the_info_is_flat_as_in_1x() -> None:
    reply = detail()
    info = FlowRunInfo.of(reply)
    assert (info.id, info.name, info.flow_id, info.version) == ("run-1", "brave-otter", "flow-1", 4)
    assert (info.parameters, info.context) == ({"n": 7}, {"team": "data"})
    assert info.scheduled_start_time == NOW
    assert info.task_runs == reply.task_runs
    assert isinstance(info.task_runs[0], TaskRunOut)
    assert (info.project_name, info.labels, info.agent_id) == ("p", ["gpu"], "agent-1")
    assert (info.start_time, info.end_time, info.late) == (NOW, NOW, False)


def test_the_state_is_a_state_object() -> None:
    info = FlowRunInfo.of(detail())
    assert isinstance(info.state, Success)
    assert info.state == Success("All reference tasks succeeded.")
    assert info.state.type is StateType.SUCCESS
    assert info.state.is_finished()
    assert info.state.is_successful()
    failed = FlowRunInfo.of(detail("TimedOut", "too slow")).state
    assert isinstance(failed, Failed)
    assert (failed.is_failed(), failed.message) == (True, "too slow")


def test_the_former_nested_shape_is_still_there() -> None:
    reply = detail()
    info = FlowRunInfo.of(reply)
    assert info.run == reply.run
    assert (info.run.version, info.run.state.type, info.run.state.timestamp) == (4, StateType.SUCCESS, NOW)
    assert "run=" not in repr(info)


def test_every_field_of_the_run_is_on_the_info() -> None:
    # A field added to FlowRunOut must be added here too (or ``of`` refuses it).
    assert set(FlowRunOut.model_fields) <= set(FlowRunInfo.model_fields)
    info = FlowRunInfo.of(detail())
    assert all(getattr(info, name) == getattr(info.run, name) for name in FlowRunOut.model_fields if name != "state")


def test_a_dumped_info_reads_back_with_its_state_class() -> None:
    info = FlowRunInfo.of(detail("Cancelled", "stop"))
    assert info.model_dump(mode="json")["state"] == {"type": "Cancelled", "message": "stop", "result": None}
    again = FlowRunInfo.model_validate_json(info.model_dump_json())
    assert again == info
    assert type(again.state) is type(info.state)
    with pytest.raises(ValidationError):
        FlowRunInfo.model_validate({**info.model_dump(), "state": "Cancelled"})


def test_the_info_is_frozen() -> None:
    info = FlowRunInfo.of(detail())
    with pytest.raises(ValidationError):
        info.version = 5  # type: ignore[misc]
    assert isinstance(info.state, State)
