"""Entry module of the scheduler service.

Handlers: see ``handlers.py``. Background loops: the planner of runs from
clocks (``planner.py``), which reads flow and flow-group events and writes
``flowbus.cmd.run_creation.create_flow_runs`` and ``flowbus.cmd.state.delete_flow_run``;
and the release of due runs (``release.py``), which reads
``flowbus.hint.scheduler.wake`` and writes ``flowbus.runq.*``. Each runs
only while this instance holds its lease (``scheduler.planner``,
``scheduler.release`` in the KV bucket ``flowbus_leases``). Its own
metrics (run queues, late runs): ``metrics.py``.
Run alone with ``flowbus service run scheduler`` or
``uvicorn flowbus_services.scheduler.main:app``. No work happens at import.
"""

from __future__ import annotations

from faststream.asgi import AsgiFastStream

from flowbus import subjects
from flowbus.runtime.lease import leased
from flowbus.runtime.service import ServiceContext, build_service
from flowbus.settings import Settings
from flowbus_services.scheduler.handlers import register
from flowbus_services.scheduler.metrics import add_metrics
from flowbus_services.scheduler.planner import PLANNER_LEASE, Planner, planner_loop
from flowbus_services.scheduler.release import ReleaseCursor, release_loop

NAME = subjects.Service.SCHEDULER


def build_app(settings: Settings | None = None) -> AsgiFastStream:
    settings = settings or Settings()
    state = ReleaseCursor()
    planner: list[Planner] = []
    loops = [leased("scheduler.release", release_loop(state))]
    if settings.scheduler.plan_runs:
        loops.append(leased(PLANNER_LEASE, planner_loop(planner)))

    def handlers(ctx: ServiceContext) -> None:
        register(ctx, state=state, planner=planner)
        add_metrics(ctx, state)

    return build_service(NAME, settings, handlers, loops=loops)


app = build_app()
