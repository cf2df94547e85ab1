"""What the test modules share, so that none imports another (tests/unit/test_test_layout.py checks it).

builders: unique names, serialized and registered flows. scripts: flow scripts
as files. waiting: ``eventually()``. runs: watching runs and their events.
agents: in-process agents. processes: the `flowbus` command as a subprocess.
Fixtures live in the conftest.py of the tier that uses them.
"""

from tests.helpers.builders import register, serialized_flow, unique

__all__ = ["register", "serialized_flow", "unique"]
