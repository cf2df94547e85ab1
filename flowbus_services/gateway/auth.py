"""Who may do what through the gateway: roles, permissions, the check before execution.

Every root field of a request needs a permission; a key's role grants a set
of them. The whole document is checked before anything runs, so a request
that names one forbidden field changes nothing at all. Reads and writes
nothing on NATS.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    InlineFragmentNode,
    OperationDefinitionNode,
    OperationType,
    SelectionSetNode,
)

from flowbus.schemas.api_keys import Role


class Permission(StrEnum):
    READ = "read"  # queries and subscriptions
    RUN = "run"  # what an agent and its runs write: states, logs, heartbeats, agents
    WRITE = "write"  # projects, flows, runs, settings
    ADMIN = "admin"  # API keys and deleting projects: the bus's admin commands


ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.ADMIN: frozenset(Permission),
    Role.USER: frozenset({Permission.READ, Permission.RUN, Permission.WRITE}),
    Role.RUNNER: frozenset({Permission.READ, Permission.RUN}),
    Role.READ_ONLY: frozenset({Permission.READ}),
}

# Mutations an agent and its runs send; every other mutation needs WRITE
# unless listed in ADMIN_MUTATIONS.
RUN_MUTATIONS: set[str] = {
    "set_flow_run_states",
    "set_flow_run_state",
    "set_task_run_states",
    "set_task_run_state",
    "write_run_logs",
    "register_agent",
    "update_flow_run_heartbeat",
    "get_runs_in_queue",
    "get_or_create_task_run_info",
    "set_task_run_name",
}
# Mutations only an admin may send: the bus refuses their commands to every
# other role too (flowbus.bus_auth, docs/security.md).
ADMIN_MUTATIONS: set[str] = {"create_api_key", "delete_api_key", "delete_project"}
# Queries that only an admin may send.
ADMIN_QUERIES: set[str] = {"api_key"}


@dataclass(frozen=True)
class Principal:
    """Who sent a request: the key's name and role (``key_id`` None when auth is off)."""

    name: str
    role: Role
    key_id: str | None = None

    def may(self, permission: Permission) -> bool:
        return permission in ROLE_PERMISSIONS[self.role]


AUTH_OFF = Principal("auth-off", Role.ADMIN)


def required_permission(operation: OperationType, field: str) -> Permission:
    if field.startswith("__"):
        return Permission.READ
    if operation is OperationType.MUTATION:
        if field in ADMIN_MUTATIONS:
            return Permission.ADMIN
        return Permission.RUN if field in RUN_MUTATIONS else Permission.WRITE
    return Permission.ADMIN if field in ADMIN_QUERIES else Permission.READ


def forbidden_fields(document: DocumentNode, operation_name: str | None, principal: Principal) -> list[str]:
    """The root fields of the operation to run that ``principal`` may not use."""
    fragments = {d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)}
    operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
    chosen = [o for o in operations if operation_name is None or (o.name and o.name.value == operation_name)]
    denied: list[str] = []
    for operation in chosen:
        for field in _root_fields(operation.selection_set, fragments, set()):
            if not principal.may(required_permission(operation.operation, field)) and field not in denied:
                denied.append(field)
    return denied


def _root_fields(
    selections: SelectionSetNode, fragments: dict[str, FragmentDefinitionNode], seen: set[str]
) -> Iterator[str]:
    for selection in selections.selections:
        if isinstance(selection, FieldNode):
            yield selection.name.value
        elif isinstance(selection, InlineFragmentNode):
            yield from _root_fields(selection.selection_set, fragments, seen)
        elif isinstance(selection, FragmentSpreadNode):
            name = selection.name.value
            if name in fragments and name not in seen:
                seen.add(name)
                yield from _root_fields(fragments[name].selection_set, fragments, seen)


def parse_role(value: str, choices: Iterable[Role] = Role) -> Role:
    try:
        return Role(value)
    except ValueError:
        raise ValueError(f"unknown role {value!r}; choose from {', '.join(r.value for r in choices)}") from None
