"""Which permission each mutation of the gateway's schema needs: what an agent
and its runs send is RUN (the runner role has it), everything else is WRITE."""

from __future__ import annotations

from graphql import OperationType

from flowbus_services.gateway.auth import Permission, required_permission
from flowbus_services.gateway.schema import build_schema

# What Prefect's agents and flow-run processes send, by the names the schema has.
RUNNER_SENDS = {
    "set_flow_run_states",
    "set_flow_run_state",
    "set_task_run_states",
    "set_task_run_state",
    "write_run_logs",
    "update_flow_run_heartbeat",
    "register_agent",
}

# What only a user (or an admin) may do.
WRITES = {
    "create_project",
    "create_flow",
    "createFlow",
    "archive_flow",
    "archiveFlow",
    "disableFlowHeartbeat",
    "set_flow_group_schedule",
    "create_flow_run",
    "cancel_flow_run",
    "delete_flow_run",
}


def test_runner_mutations_need_run_and_the_others_write() -> None:
    mutation_type = build_schema().mutation_type
    assert mutation_type is not None
    fields = set(mutation_type.fields)
    assert fields >= RUNNER_SENDS | WRITES
    needs = {name: required_permission(OperationType.MUTATION, name) for name in fields}
    assert {needs[name] for name in RUNNER_SENDS} == {Permission.RUN}
    assert {needs[name] for name in WRITES} == {Permission.WRITE}
    # Deleting a project is an admin command on the bus, so through the gateway too.
    assert {needs[name] for name in ("delete_project", "create_api_key", "delete_api_key")} == {Permission.ADMIN}
