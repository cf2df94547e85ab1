"""Entry module of the scheduler service.

Reads: ``flowbus.cmd.scheduler.status``, ``flowbus.hint.scheduler.wake``.
Writes: ``flowbus.runq.*``.
Run alone with ``flowbus service run scheduler`` or
``uvicorn services.scheduler.main:app``. No work happens at import.
"""

from __future__ import annotations

from faststream.asgi import AsgiFastStream

from flowbus import subjects
from flowbus.runtime.service import ServiceContext, build_service
from flowbus.schemas.agents import SchedulerStatus
from flowbus.schemas.common import Empty, Reply
from flowbus.settings import Settings
from services.scheduler.release import ReleaseState, release_loop

NAME = subjects.Service.SCHEDULER


def build_app(settings: Settings | None = None) -> AsgiFastStream:
    state = ReleaseState()

    def register(ctx: ServiceContext) -> None:
        @ctx.broker.subscriber(
            subjects.SchedulerCommands.STATUS, queue=subjects.SchedulerCommands.QUEUE, title="status"
        )
        async def status(query: Empty) -> Reply[SchedulerStatus]:
            return Reply.success(SchedulerStatus(released_total=state.released_total, last_release=state.last_release))

    return build_service(NAME, settings or Settings(), register, loops=[release_loop(state)])


app = build_app()
