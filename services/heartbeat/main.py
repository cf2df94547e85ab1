"""Entry module of the heartbeat service.

Handlers: see ``handlers.py``. Background loop: the Zombie Killer
(``zombies.py``), which requests ``flowbus.cmd.state.set_*_run_state`` and
publishes on ``flowbus.logs.<flow_run_id>``.
Run alone with ``flowbus service run heartbeat`` or
``uvicorn services.heartbeat.main:app``. No work happens at import.
"""

from __future__ import annotations

from faststream.asgi import AsgiFastStream

from flowbus import subjects
from flowbus.runtime.service import build_service
from flowbus.settings import Settings
from services.heartbeat.handlers import register
from services.heartbeat.zombies import ZombieState, zombie_loop

NAME = subjects.Service.HEARTBEAT


def build_app(settings: Settings | None = None) -> AsgiFastStream:
    zombies = ZombieState()
    app = build_service(NAME, settings or Settings(), register, loops=[zombie_loop(zombies)])
    # Tests read the pass counter here, as they reach flowbus_context.
    setattr(app, "zombie_state", zombies)  # noqa: B010
    return app


app = build_app()
