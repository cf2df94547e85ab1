"""What the test modules share, so that none imports another (tests/unit/test_test_layout.py checks it).

builders: unique names, serialized and registered flows. scripts: flow
scripts to write and register. waiting: ``eventually()``. runs: watching runs
and their events. agents: in-process agents. processes: the `flowbus` command
as a subprocess. commands: raw commands over NATS. sqlite_counter: the
write-lock test's writer process. nats_cluster: three nats-server nodes.
chaos, chaos_stack, chaos_fuzz, chaos_cluster: the chaos tier's figures,
processes, fuzz payloads and cluster topology. Fixtures live in the conftest.py of the
tier that uses them.
"""

from tests.helpers.builders import register, serialized_flow, unique

__all__ = ["register", "serialized_flow", "unique"]
