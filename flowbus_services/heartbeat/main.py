"""Entry module of the heartbeat service.

Handlers: see ``handlers.py``. Background loops: the Zombie Killer
(``zombies.py``), Lazarus (``lazarus.py``) and the requeue of stuck claims
(``claims.py``), which request ``flowbus.cmd.state.set_flow_run_state`` and
publish on ``flowbus.logs.<flow_run_id>``; each runs only while this
instance holds its lease (``heartbeat.zombie_killer``, ``heartbeat.lazarus``,
``heartbeat.stuck_claims``). Its own metrics (what the loops did, agents
online, runs per agent): ``metrics.py``.
Run alone with ``flowbus service run heartbeat`` or
``uvicorn flowbus_services.heartbeat.main:app``. No work happens at import.
"""

from __future__ import annotations

import weakref

from faststream.asgi import AsgiFastStream

from flowbus import subjects
from flowbus.runtime.lease import leased
from flowbus.runtime.service import ServiceContext, build_service
from flowbus.settings import Settings
from flowbus_services.heartbeat.claims import StuckClaimStats, stuck_claims_loop
from flowbus_services.heartbeat.handlers import register
from flowbus_services.heartbeat.lazarus import LazarusStats, lazarus_loop
from flowbus_services.heartbeat.metrics import add_metrics
from flowbus_services.heartbeat.zombies import ZombieKillerStats, zombie_loop

NAME = subjects.Service.HEARTBEAT


# The Zombie Killer's counters of each app build_app made.
_ZOMBIES: weakref.WeakKeyDictionary[AsgiFastStream, ZombieKillerStats] = weakref.WeakKeyDictionary()
# Lazarus's counters of each app build_app made.
_LAZARUS: weakref.WeakKeyDictionary[AsgiFastStream, LazarusStats] = weakref.WeakKeyDictionary()
# The stuck-claim requeue's counters of each app build_app made.
_CLAIMS: weakref.WeakKeyDictionary[AsgiFastStream, StuckClaimStats] = weakref.WeakKeyDictionary()


def build_app(settings: Settings | None = None) -> AsgiFastStream:
    stats, lazarus, claims = ZombieKillerStats(), LazarusStats(), StuckClaimStats()

    def handlers(ctx: ServiceContext) -> None:
        register(ctx)
        add_metrics(ctx, stats, lazarus, claims)

    app = build_service(
        NAME,
        settings or Settings(),
        handlers,
        loops=[
            leased("heartbeat.zombie_killer", zombie_loop(stats)),
            leased("heartbeat.lazarus", lazarus_loop(lazarus)),
            leased("heartbeat.stuck_claims", stuck_claims_loop(claims)),
        ],
    )
    _ZOMBIES[app] = stats
    _LAZARUS[app] = lazarus
    _CLAIMS[app] = claims
    return app


def zombie_killer_stats(app: AsgiFastStream) -> ZombieKillerStats:
    """The counters of the Zombie Killer running in ``app``: its passes and the runs it failed."""
    return _ZOMBIES[app]


def lazarus_stats(app: AsgiFastStream) -> LazarusStats:
    """The counters of Lazarus running in ``app``: its passes, the runs it rescheduled and failed."""
    return _LAZARUS[app]


def stuck_claims_stats(app: AsgiFastStream) -> StuckClaimStats:
    """The counters of the stuck-claim requeue running in ``app``: its passes, the runs it requeued and failed."""
    return _CLAIMS[app]


app = build_app()
