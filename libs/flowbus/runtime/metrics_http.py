"""``/metrics`` over HTTP: the ASGI endpoint, a process's small app, and serving it on a socket.

Every service's ASGI app routes ``/metrics`` to ``metrics_endpoint``; the
gateway's HTTP server does too. ``flowbus up`` runs several services per
process and serves none of their ASGI apps, so each of its service processes
serves ``process_app`` (``/metrics`` of all its services, ``/healthz``,
``/readyz``) on a socket the parent bound for it; an agent serves one with
its own metrics when given a metrics port. uvicorn does the HTTP.

``GET`` (or ``HEAD``) ``/metrics`` answers the Prometheus text format, or
OpenMetrics when the ``Accept`` header asks for it; the only query parameter
is ``name[]`` (repeatable: the metrics to keep), as prometheus-client's own
exposition takes it. Anything else gets a JSON error with a stable code:
405 ``METHOD_NOT_ALLOWED`` for another method, 400 ``VALIDATION_ERROR`` for
another parameter, a malformed name or an over-long query.

Reads and writes no NATS subject.
"""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import parse_qsl

import uvicorn

from flowbus.runtime import asgi_serving
from flowbus.runtime.metrics import ComponentMetrics, render

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MAX_QUERY_BYTES = 4096
_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
SHUTDOWN_GRACE_SECONDS = 2.0


async def _respond(
    send: Send, status: int, body: bytes, content_type: str, extra: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def error(send: Send, status: int, code: str, message: str, extra: Sequence[tuple[bytes, bytes]] = ()) -> None:
    """A JSON error in the reply envelope's shape: ``{"ok": false, "error": {"code", "message"}}``."""
    body = json.dumps({"ok": False, "error": {"code": code, "message": message}}).encode()
    await _respond(send, status, body, "application/json", extra)


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return ""


def query_names(raw: bytes) -> list[str]:
    """The ``name[]`` values of a query string; ``ValueError`` (its message for the user) for anything else."""
    if len(raw) > MAX_QUERY_BYTES:
        raise ValueError(f"the query string is over {MAX_QUERY_BYTES} bytes")
    params = parse_qsl(raw.decode("latin-1"), keep_blank_values=True)
    unknown = sorted({key for key, _ in params} - {"name[]"})
    if unknown:
        raise ValueError(
            f"unknown query parameter {unknown[0]!r}: /metrics takes only name[] (a metric to keep, repeatable)"
        )
    names = [value for _key, value in params]
    for name in names:
        if not _METRIC_NAME.fullmatch(name):
            raise ValueError(
                f"name[]={name!r} is not a metric name (letters, digits, _ and :, not starting with a digit)"
            )
    return names


def metrics_endpoint(components: Callable[[], Sequence[ComponentMetrics]]) -> ASGIApp:
    """The ASGI app of ``/metrics`` over what ``components()`` returns at each scrape."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        method = scope["method"]
        if method not in ("GET", "HEAD"):
            message = f"/metrics answers GET and HEAD, not {method}"
            await error(send, 405, "METHOD_NOT_ALLOWED", message, [(b"allow", b"GET, HEAD")])
            return
        try:
            names = query_names(scope.get("query_string", b""))
        except ValueError as exc:
            await error(send, 400, "VALIDATION_ERROR", str(exc))
            return
        body, content_type = await render(components(), accept=_header(scope, b"accept"), names=names)
        await _respond(send, 200, b"" if method == "HEAD" else body, content_type)

    return app


def process_app(
    components: Callable[[], Sequence[ComponentMetrics]],
    readiness: Callable[[], Awaitable[list[str]]] | None = None,
) -> ASGIApp:
    """A process's HTTP app: ``/metrics`` of ``components``, ``/healthz``, and ``/readyz``
    (200 while ``readiness()`` names nothing failing, else 503 with what fails)."""
    metrics = metrics_endpoint(components)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        if path == "/metrics":
            await metrics(scope, receive, send)
        elif path in ("/healthz", "/readyz") and scope["method"] not in ("GET", "HEAD"):
            await error(send, 405, "METHOD_NOT_ALLOWED", f"{path} answers GET and HEAD", [(b"allow", b"GET, HEAD")])
        elif path == "/healthz":
            await _respond(send, 200, b'{"status":"ok"}', "application/json")
        elif path == "/readyz":
            problems = await readiness() if readiness is not None else []
            body = json.dumps({"status": "ok" if not problems else "unavailable", "failing": problems}).encode()
            await _respond(send, 200 if not problems else 503, body, "application/json")
        else:
            await error(send, 404, "NOT_FOUND", f"no {path} here: this server answers /metrics, /healthz and /readyz")

    return app


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (0: a free port), ready to hand to ``serve``."""
    return asgi_serving.listen(host, port)


def url_of(sock: socket.socket, path: str = "/metrics") -> str:
    host, port = sock.getsockname()[:2]
    shown = "127.0.0.1" if host == "0.0.0.0" else "[::1]" if host == "::" else f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}{path}"


async def serve(app: ASGIApp, sock: socket.socket) -> None:
    """Serve ``app`` on ``sock`` until cancelled (the socket stays open: a restarted process serves it again)."""
    config = uvicorn.Config(app, lifespan="off", log_config=None, log_level="warning", access_log=False, ws="none")
    await asgi_serving.serve_on(config, sock, SHUTDOWN_GRACE_SECONDS)
