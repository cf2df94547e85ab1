"""The web UI: a single-page app, served by the gateway at ``/`` from files inside this package.

No build step and no CDN: ``ui/`` holds the page shell (``index.html``), the
app's ES modules, its stylesheet and the vendored browser libraries
(``ui/vendor/``: dagre lays out a flow's schematic, graphql-ws speaks the
subscriptions' protocol). Every page path answers the same shell; the app
reads the path and asks the GraphQL API (POST /graphql with the user's key)
for what it shows, and follows a run live over the WebSocket on /graphql.

Page paths: ``/`` (dashboard), ``/login``, ``/agents``, ``/api-keys``,
``/flow/<id>``, ``/flow-run/<id>``, and ``/<tenant slug>/flow/<id>`` and
``/<tenant slug>/flow-run/<id>``, the links the Prefect 1.x client prints.

The shell and assets are answered with a strict Content-Security-Policy
(scripts, styles and connections to this origin only; no inline script), so
a value shown in a page can never run as code. Reads and writes nothing on
NATS.
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

ASSETS = Path(__file__).parent / "ui"
# The paths the app routes itself; each answers the shell.
PAGES = (
    "/",
    "/login",
    "/agents",
    "/api-keys",
    "/flow/{id}",
    "/flow-run/{id}",
    "/{tenant}/flow/{id}",
    "/{tenant}/flow-run/{id}",
)
SECURITY_HEADERS = {
    # 'self' covers the same origin's ws:// and wss:// too (CSP level 3).
    "content-security-policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}

_ENCODED_HEADERS = [(name.encode(), value.encode()) for name, value in SECURITY_HEADERS.items()]


class _Secured:
    """Adds the security headers to every response of the wrapped app."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *_ENCODED_HEADERS]}
            await send(message)

        await self.app(scope, receive, send_secured)


def ui_routes() -> list[BaseRoute]:
    """The shell at every page path, and the assets under ``/ui/``."""
    shell = (ASSETS / "index.html").read_bytes()

    async def page(_request: Request) -> Response:
        # no-cache: a new release's shell (and the asset names in it) is seen at once.
        headers = {"cache-control": "no-cache", **SECURITY_HEADERS}
        return Response(shell, media_type="text/html; charset=utf-8", headers=headers)

    assets = _Secured(StaticFiles(directory=ASSETS))
    return [*(Route(path, page, methods=["GET", "HEAD"]) for path in PAGES), Mount("/ui", app=assets)]
