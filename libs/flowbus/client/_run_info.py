"""``FlowRunInfo``: a flow run as Prefect 1.x's ``Client.get_flow_run_info`` gave it.

A view the client builds from the ``get_flow_run`` reply (``FlowRunDetail``);
it is never sent, so it is no message of ``flowbus.schemas``. Reads and
writes nothing itself.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, PlainValidator

from flowbus.schemas.runs import FlowRunDetail, FlowRunOut, TaskRunOut
from flowbus.states import State


def _state_object(value: object) -> State:
    """A State object as it is, or one from its JSON form (a dumped ``FlowRunInfo`` read back)."""
    if isinstance(value, State):
        return value
    if isinstance(value, dict) and "type" in value:
        return State.of(value["type"], value.get("message"), value.get("result"))
    raise ValueError("a state is a flowbus.states.State or its JSON form")


def _state_json(state: State) -> dict[str, Any]:
    # The type is a class variable, which a dataclass dump would leave out.
    return {"type": state.type.value, "message": state.message, "result": state.result}


# A ``flowbus.states`` object (``Success``, ``Failed``, ...) in a pydantic model.
StateObject = Annotated[State, PlainValidator(_state_object), PlainSerializer(_state_json)]


class FlowRunInfo(BaseModel):
    """A run, flat, as Prefect 1.x's ``FlowRunInfoResult``: ``.id``, ``.name``,
    ``.flow_id``, ``.version``, ``.state``, ``.parameters``, ``.context``,
    ``.scheduled_start_time`` and ``.task_runs``, then the rest of the run.

    ``state`` is a ``flowbus.states`` object, as 1.x's was: ``Success(...)``
    with ``.type``, ``.message``, ``is_finished()``, ``is_successful()`` and
    ``isinstance(info.state, Success)``. The state as the services report it,
    with its ``timestamp``, is ``run.state`` (a ``StateOut``); ``version`` is
    the run's version, the one to set its next state at. ``task_runs`` are the
    run's task runs as ``get_flow_run`` gives them (``TaskRunOut``, all map
    indexes). ``run`` is the run as ``get_flow_run`` gives it, the shape this
    method returned before (``info.run.version``, ``info.run.state.type``).
    Where 1.x had ``project`` (id and name), flowbus has ``project_name``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    name: str
    flow_id: str
    version: int
    state: StateObject
    parameters: dict[str, Any]
    context: dict[str, Any]
    scheduled_start_time: datetime
    task_runs: list[TaskRunOut]
    flow_name: str
    flow_group_id: str
    project_name: str
    labels: list[str]
    auto_scheduled: bool
    idempotency_key: str | None
    agent_id: str | None
    start_time: datetime | None
    end_time: datetime | None
    times_resurrected: int
    created: datetime
    updated: datetime
    late: bool
    # Last, and out of the repr: the same run again, in the former nested shape.
    run: FlowRunOut = Field(repr=False)

    @classmethod
    def of(cls, detail: FlowRunDetail) -> FlowRunInfo:
        """The info of a ``get_flow_run`` reply."""
        run = detail.run
        fields = run.model_dump(exclude={"state"})
        return cls(
            **fields,
            state=State.of(run.state.type, run.state.message),
            task_runs=detail.task_runs,
            run=run,
        )
