"""Raw NATS connections for tests, with a credential of the session's set (tests/conftest.py)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import trustme
from nats.aio.client import Client

from flowbus.bus_auth import BusRole, Credential, default_role_file
from flowbus.settings import Settings
from flowbus_services.up import free_port, nats_server_binary


def credential(role: BusRole = BusRole.SERVICE) -> Credential:
    """The session's credential of ``role`` (``FLOWBUS_AUTH_DIR``)."""
    return Credential.load(default_role_file(Settings().auth_path(), role))


async def raw_connect(url: str | list[str], role: BusRole = BusRole.SERVICE, **options: Any) -> Client:
    """A plain nats-py connection as ``role``."""
    return await nats.connect(url, **credential(role).connect_options(), **options)


def bus_env(url: str) -> dict[str, str]:
    """The variables that point a child process at a test's nats-server with the session's credentials."""
    return {"FLOWBUS_NATS_URL": url, "FLOWBUS_AUTH_DIR": str(Settings().auth_path())}


@dataclass(frozen=True)
class ServerTls:
    cert: Path
    key: Path
    ca: Path


def server_tls(folder: Path, ca: trustme.CA) -> ServerTls:
    """A certificate for 127.0.0.1 signed by ``ca``, written with the CA's into ``folder``."""
    issued = ca.issue_cert("127.0.0.1")
    files = ServerTls(cert=folder / "server.pem", key=folder / "server-key.pem", ca=folder / "ca.pem")
    issued.cert_chain_pems[0].write_to_path(str(files.cert))
    issued.private_key_pem.write_to_path(str(files.key))
    ca.cert_pem.write_to_path(str(files.ca))
    return files


@contextmanager
def nats_server(config: Path) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """A nats-server with ``config`` on a free loopback port, stopped on exit: its port and process."""
    port = free_port()
    proc = subprocess.Popen(
        [nats_server_binary(), "-c", str(config), "-a", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield port, proc
    finally:
        proc.terminate()
        proc.wait(timeout=10)
