"""Ready-made tasks for flows, like Prefect 1.x's ``prefect.tasks.prefect``.

``create_flow_run`` starts a run of another registered flow (a child run)
and returns its id; ``wait_for_flow_run`` waits for a run to finish, can
re-log its logs in the parent and can fail when the child did not succeed.
Both go through ``flowbus.client.Client``: they write
``flowbus.cmd.run_creation.create_flow_run`` and read the state service's
query replies and the child's ``flowbus.evt.flow_run.<id>.>`` events and
``flowbus.logs.<id>`` logs (JetStream, pushed). See ``flow_run.py``.
"""

from __future__ import annotations

from flowbus.tasks.flow_run import (
    ChildFlowRunError,
    CreateFlowRunTask,
    WaitForFlowRunTask,
    create_flow_run,
    wait_for_flow_run,
)

__all__ = ["ChildFlowRunError", "CreateFlowRunTask", "WaitForFlowRunTask", "create_flow_run", "wait_for_flow_run"]
