"""The ``flowbus`` command line of the shared library: ``app``, with every command group.

Importing each command module adds its commands to ``flowbus.cli.app.app``,
in the order the help lists them. The commands that run the services
(``flowbus up``, ``flowbus service run``) are added by ``flowbus_services.cli``,
the installed ``flowbus`` script.
"""

from __future__ import annotations

# isort: off
# Each module adds its commands as it loads, and the help lists them in that
# order: keep these imports in this order.
from flowbus.cli import system
from flowbus.cli import status
from flowbus.cli import traces
from flowbus.cli import projects
from flowbus.cli import flows
from flowbus.cli import runs
from flowbus.cli import agents
from flowbus.cli import schedules
from flowbus.cli import keys
from flowbus.cli import auth

# isort: on
from flowbus.cli.app import app

COMMAND_MODULES = (system, status, traces, projects, flows, runs, agents, schedules, keys, auth)

__all__ = ["COMMAND_MODULES", "app"]
