"""Entry module of the heartbeat service.

Handlers: see ``handlers.py``. Background loop: the Zombie Killer
(``zombies.py``), which requests ``flowbus.cmd.state.set_flow_run_state`` and
publishes on ``flowbus.logs.<flow_run_id>``.
Run alone with ``flowbus service run heartbeat`` or
``uvicorn flowbus_services.heartbeat.main:app``. No work happens at import.
"""

from __future__ import annotations

import weakref

from faststream.asgi import AsgiFastStream

from flowbus import subjects
from flowbus.runtime.lease import leased
from flowbus.runtime.service import build_service
from flowbus.settings import Settings
from flowbus_services.heartbeat.handlers import register
from flowbus_services.heartbeat.zombies import ZombieKillerStats, zombie_loop

NAME = subjects.Service.HEARTBEAT


# The Zombie Killer's counters of each app build_app made.
_ZOMBIES: weakref.WeakKeyDictionary[AsgiFastStream, ZombieKillerStats] = weakref.WeakKeyDictionary()


def build_app(settings: Settings | None = None) -> AsgiFastStream:
    stats = ZombieKillerStats()
    app = build_service(
        NAME, settings or Settings(), register, loops=[leased("heartbeat.zombie_killer", zombie_loop(stats))]
    )
    _ZOMBIES[app] = stats
    return app


def zombie_killer_stats(app: AsgiFastStream) -> ZombieKillerStats:
    """The counters of the Zombie Killer running in ``app``: its passes and the runs it failed."""
    return _ZOMBIES[app]


app = build_app()
