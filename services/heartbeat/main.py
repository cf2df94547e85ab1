"""Entry module of the heartbeat service.

Handlers: see ``handlers.py``. Background loop: the Zombie Killer
(``zombies.py``), which requests ``flowbus.cmd.state.set_flow_run_state`` and
publishes on ``flowbus.logs.<flow_run_id>``.
Run alone with ``flowbus service run heartbeat`` or
``uvicorn services.heartbeat.main:app``. No work happens at import.
"""

from __future__ import annotations

from faststream.asgi import AsgiFastStream

from flowbus.runtime.service import build_service
from flowbus.settings import Settings
from services.heartbeat.handlers import register
from services.heartbeat.zombies import ZombieKillerStats, zombie_loop

NAME = "heartbeat"


def build_app(settings: Settings | None = None) -> AsgiFastStream:
    stats = ZombieKillerStats()
    app = build_service(NAME, settings or Settings(), register, loops=[zombie_loop(stats)])
    # Tests read the pass counter here, as they reach flowbus_context.
    setattr(app, "zombie_killer_stats", stats)  # noqa: B010
    return app


app = build_app()
