"""Serving an ASGI app with uvicorn on a socket the caller bound.

The socket is bound before uvicorn starts (``flowbus up`` binds the metrics
ports before it forks; several gateway instances share one port), and the
process, not uvicorn, owns SIGINT and SIGTERM. Used by the gateway and by the
metrics endpoints (flowbus.runtime.metrics_http). Touches no subject.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator

import uvicorn


def listen(
    host: str, port: int, *, backlog: int = 128, reuse_port: bool = False, nodelay: bool = False
) -> socket.socket:
    """A listening, non-blocking socket on ``host:port`` (0: a free port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port and hasattr(socket, "SO_REUSEPORT"):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if nodelay:
        # Inherited by every accepted connection. Without it a response's second
        # write (its body) waits for the client's delayed ACK: 40 ms per request
        # on a kept-alive connection.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers: the process owns SIGINT and SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve_on(config: uvicorn.Config, sock: socket.socket, grace: float) -> None:
    """Serve ``config``'s app on ``sock`` until cancelled; then stop, waiting at most ``grace`` x 2."""
    server = _Server(config)
    task = asyncio.ensure_future(server.serve(sockets=[sock]))
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        server.should_exit = True
        await asyncio.wait({task}, timeout=grace * 2)
        raise
