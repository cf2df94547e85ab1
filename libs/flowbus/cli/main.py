"""The ``flowbus`` command: every command group, put together.

Importing each command module adds its commands to ``flowbus.cli.app.app``,
in the order the help lists them.
"""

from __future__ import annotations

# isort: off
# Each module adds its commands as it loads, and the help lists them in that
# order: keep these imports in this order.
from flowbus.cli import system
from flowbus.cli import projects
from flowbus.cli import flows
from flowbus.cli import runs
from flowbus.cli import agents

# isort: on
from flowbus.cli.app import app

# Named, so that the imports above count as used.
COMMAND_MODULES = (system, projects, flows, runs, agents)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
