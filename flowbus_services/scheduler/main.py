"""Entry module of the scheduler service.

Handlers: see ``handlers.py``. Background loop: the release of due runs
(``release.py``), which reads ``flowbus.hint.scheduler.wake`` and writes ``flowbus.runq.*``.
Run alone with ``flowbus service run scheduler`` or
``uvicorn flowbus_services.scheduler.main:app``. No work happens at import.
"""

from __future__ import annotations

from functools import partial

from faststream.asgi import AsgiFastStream

from flowbus import subjects
from flowbus.runtime.lease import leased
from flowbus.runtime.service import build_service
from flowbus.settings import Settings
from flowbus_services.scheduler.handlers import register
from flowbus_services.scheduler.release import ReleaseCursor, release_loop

NAME = subjects.Service.SCHEDULER


def build_app(settings: Settings | None = None) -> AsgiFastStream:
    state = ReleaseCursor()
    return build_service(
        NAME,
        settings or Settings(),
        partial(register, state=state),
        loops=[leased("scheduler.release", release_loop(state))],
    )


app = build_app()
