"""Entry module of the gateway: its NATS side (API-key commands) and its HTTP server.

Run alone with ``flowbus service run gateway``; ``flowbus up`` runs it with
the other services. The listening socket is bound while the service starts,
so a port in use fails the start at once, and the server answers as soon as
the service reports ready. Several instances may share one port
(SO_REUSEPORT) or sit behind any HTTP balancer: no state lives in the process.

Reads: ``flowbus.cmd.gateway.*`` (queue group ``gateway``) and
``flowbus.evt.api_key.*.*`` (every instance: revoked keys, see keys.py).
Writes: replies, the key events, and every GraphQL write as a command to the
service that owns it.
"""

from __future__ import annotations

import logging
import socket
from functools import partial
from typing import Any

import uvicorn
from faststream.asgi import AsgiFastStream
from starlette.routing import BaseRoute, Route

from flowbus import subjects
from flowbus.bus_auth import BusRole
from flowbus.client import AsyncClient
from flowbus.db.engine import Database
from flowbus.runtime.asgi_serving import listen, serve_on
from flowbus.runtime.service import ServiceContext, build_service, readiness
from flowbus.settings import GatewaySettings, Settings
from flowbus_services.gateway.context import Gateway
from flowbus_services.gateway.http import build_http_app
from flowbus_services.gateway.keys import KeyStore
from flowbus_services.gateway.keys import register as register_keys
from flowbus_services.gateway.schema import build_schema

log = logging.getLogger(__name__)
NAME = subjects.Service.GATEWAY
SHUTDOWN_GRACE_SECONDS = 5.0


def bind(settings: GatewaySettings) -> socket.socket:
    """The gateway's listening socket (shared with other instances on the same port)."""
    return listen(settings.host, settings.port, backlog=2048, reuse_port=settings.reuse_port, nodelay=True)


def register(ctx: ServiceContext) -> KeyStore:
    """The gateway's NATS handlers (the API-key commands); the key store that serves them."""
    return register_keys(ctx)


async def serve_http(sock: socket.socket, ctx: ServiceContext, keys: KeyStore, service: Any = None) -> None:
    """Serve GraphQL and health on ``sock`` until cancelled, verifying keys with ``keys``;
    ``service`` (the gateway's own ASGI app) answers /docs/asyncapi and /metrics, as every service's port does."""
    settings = ctx.settings
    assert ctx.nc is not None
    read_url = settings.gateway.read_database_url
    reads = Database(read_url) if read_url else ctx.db
    await keys.listen(ctx.nc)
    gateway = Gateway(settings=settings, db=reads, client=AsyncClient(settings, nc=ctx.nc), keys=keys)
    extra = (reads,) if read_url else ()
    docs: list[BaseRoute] = []
    if service is not None:
        # /metrics takes every method: it answers a wrong one itself, with a clear message.
        docs = [Route("/docs/asyncapi", service, methods=["GET"]), Route("/metrics", service)]
    app = build_http_app(gateway, build_schema(), readiness=partial(readiness, ctx, *extra), extra_routes=docs)
    config = uvicorn.Config(
        app,
        lifespan="off",
        log_level="warning",
        access_log=False,
        ws="websockets-sansio",
        # A WebSocket message over the body limit is refused by uvicorn before it is buffered whole.
        ws_max_size=settings.gateway.max_body_bytes,
        timeout_graceful_shutdown=int(SHUTDOWN_GRACE_SECONDS),
    )
    try:
        await serve_on(config, sock, SHUTDOWN_GRACE_SECONDS)
    finally:
        await keys.close()
        if read_url:
            await reads.dispose()


def build_app(settings: Settings | None = None) -> AsgiFastStream:
    settings = settings or Settings()
    sockets: list[socket.socket] = []
    stores: list[KeyStore] = []

    def handlers(ctx: ServiceContext) -> None:
        stores.append(register(ctx))

    async def listen(ctx: ServiceContext) -> None:
        sockets.append(bind(ctx.settings.gateway))
        if ctx.settings.gateway.auth == "off":
            log.warning(
                "API keys are off (FLOWBUS_GATEWAY__AUTH=off): every request to %s:%s is served as admin;"
                " only for a trusted local setup",
                ctx.settings.gateway.host,
                ctx.settings.gateway.port,
            )

    async def serve(ctx: ServiceContext) -> None:
        if sockets[0].fileno() == -1:  # closed by a server that crashed: listen again
            sockets[0] = bind(ctx.settings.gateway)
        await serve_http(sockets[0], ctx, stores[0], app)

    serve.__name__ = "serve_http"
    app = build_service(NAME, settings, handlers, loops=[serve], startup=[listen], role=BusRole.GATEWAY)
    return app
