"""Ready-made tasks that start another flow's run and wait for it (child flow runs).

Flow scripts import them from here, as 1.x scripts did from ``prefect.tasks.prefect``.

``create_flow_run`` creates a run of another registered flow and returns its
id; ``wait_for_flow_run`` blocks until that run finishes, optionally
re-logging its logs and failing when it did not succeed. Both run in the
runner's task thread and talk to the backend through the blocking
``flowbus.client.Client`` (NATS address from ``FLOWBUS_NATS_URL``, which the
agent sets for its runners).

Reads: ``flowbus.cmd.registration.get_flow`` and ``flowbus.cmd.state.get_flow_run``
replies, ``flowbus.evt.flow_run.<child>.>`` (EVENTS stream) and
``flowbus.logs.<child>`` (LOGS stream) while waiting.
Writes: ``flowbus.cmd.run_creation.create_flow_run``; the parent's own logs
(``flowbus.logs.<parent>``) through the context logger.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from pydantic import JsonValue

from flowbus.schemas.common import NAME_MAX
from flowbus.schemas.runs import FlowRunDeleted, FlowRunOut, LogRecord
from flowbus.sdk import context
from flowbus.sdk.tasks import Task
from flowbus.states import StateType, is_a


class ChildFlowRunError(Exception):
    """A child flow run did not succeed (or was deleted while it was awaited).

    Raised by ``wait_for_flow_run(..., raise_final_state=True)``, which makes
    the waiting task, and with it the parent run, fail.
    """

    def __init__(self, flow_run_id: str, name: str | None, state: StateType | None, state_message: str | None) -> None:
        self.flow_run_id = flow_run_id
        self.name = name
        self.state = state
        self.state_message = state_message
        label = f"{name} ({flow_run_id})" if name else flow_run_id
        ended = f"ended {state.value}" if state is not None else "was deleted"
        super().__init__(f"Child flow run {label} {ended}" + (f": {state_message}" if state_message else ""))


class CreateFlowRunTask(Task):
    """Create a run of another flow; returns the new run's id.

    The default idempotency key is the calling task run's id: when the
    parent's task is retried (or its runner restarted), the create returns
    the run made by the first attempt instead of a second child. Two creates
    of the same flow from one task run therefore give the same child; pass
    distinct ``idempotency_key`` values to get several.
    """

    def __init__(self, **task_options: Any) -> None:
        task_options.setdefault("name", "create_flow_run")
        super().__init__(**task_options)

    def run(
        self,
        flow_id: str | None = None,
        flow_name: str | None = None,
        project_name: str | None = None,
        parameters: dict[str, JsonValue] | None = None,
        labels: list[str] | None = None,
        run_name: str | None = None,
        idempotency_key: str | None = None,
        scheduled_start_time: datetime | None = None,
    ) -> str:
        from flowbus.client import Client

        if (flow_id is None) == (flow_name is None):
            raise ValueError("create_flow_run needs exactly one of flow_id and flow_name")
        logger: logging.Logger = context.get("logger")
        # Outside a flow run there is no task run to tie the key to: the client
        # then sends a random one, which still makes its own resends safe.
        key = idempotency_key or context.get("task_run_id")
        parent_name: str | None = context.get("flow_run_name")
        with Client() as client:
            if run_name is None and parent_name:
                child_flow = flow_name if flow_name is not None else client.get_flow(str(flow_id)).name
                run_name = f"{parent_name}-{child_flow}"[:NAME_MAX]
            # The whole run, not just its id: the server chose the name when we did not (no parent run name).
            child = client.create_flow_run_out(
                flow_id,
                flow_name=flow_name,
                project_name=project_name,
                parameters=parameters,
                labels=labels,
                run_name=run_name,
                scheduled_start_time=scheduled_start_time,
                idempotency_key=key,
            )
        logger.info("Created flow run %s (%s)", child.name, child.id)
        return child.id


class WaitForFlowRunTask(Task):
    """Wait for a flow run to finish; returns its final ``FlowRunOut``.

    Waiting is pushed, not polled: the run's state events and logs are read
    from JetStream from the first message, so a child that finished before
    the wait began is seen at once.
    """

    def __init__(self, **task_options: Any) -> None:
        task_options.setdefault("name", "wait_for_flow_run")
        super().__init__(**task_options)

    def run(self, flow_run_id: str, stream_logs: bool = False, raise_final_state: bool = False) -> FlowRunOut:
        from flowbus.client import Client

        logger: logging.Logger = context.get("logger")
        with Client() as client:
            name = client.get_flow_run(flow_run_id).run.name
            for item in client.watch_flow_run(flow_run_id):
                if isinstance(item, LogRecord) and stream_logs:
                    level = logging.getLevelNamesMapping().get(item.level, logging.INFO)
                    logger.log(level, "%s: %s", name, item.message)
                elif isinstance(item, FlowRunDeleted):
                    # There is no final state to take on or return.
                    raise ChildFlowRunError(flow_run_id, name, None, item.reason)
            final = client.get_flow_run(flow_run_id).run
        state = final.state
        logger.info("Flow run %s (%s) finished %s: %s", final.name, final.id, state.type.value, state.message)
        if raise_final_state and not is_a(state.type, StateType.SUCCESS):
            raise ChildFlowRunError(final.id, final.name, state.type, state.message)
        return final


create_flow_run = CreateFlowRunTask()
wait_for_flow_run = WaitForFlowRunTask()


__all__ = ["ChildFlowRunError", "CreateFlowRunTask", "WaitForFlowRunTask", "create_flow_run", "wait_for_flow_run"]
