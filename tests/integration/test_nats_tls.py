"""TLS to NATS: a ``tls://`` URL with the CA from settings, and client certificates for mutual TLS.

A nats-server with the session's users (tests/conftest.py) and a certificate
from a throw-away CA (trustme), on a free loopback port.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from flowbus.bus_auth import AuthStore, BusRole, server_config
from flowbus.runtime.nats import NatsUnavailable, connect
from flowbus.settings import EmbeddedNatsSettings, NatsTlsSettings, Settings
from tests.helpers.bus import nats_server, server_tls
from tests.helpers.waiting import eventually


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def _serve(tmp: Path, ca: trustme.CA, *, verify_clients: bool) -> Iterator[tuple[str, Path]]:
    tls = server_tls(tmp, ca)
    config = json.loads(
        server_config(tmp / "js", AuthStore(Settings().auth_path()).users(), EmbeddedNatsSettings().limits())
    )
    config["tls"] = {"cert_file": str(tls.cert), "key_file": str(tls.key)}
    if verify_clients:
        config["tls"] |= {"ca_file": str(tls.ca), "verify": True}
    (tmp / "tls.conf").write_text(json.dumps(config))
    with nats_server(tmp / "tls.conf") as (port, _proc):
        yield f"tls://127.0.0.1:{port}", tls.ca


@pytest.fixture
def tls_server(tmp_path: Path, ca: trustme.CA) -> Iterator[tuple[str, Path]]:
    yield from _serve(tmp_path, ca, verify_clients=False)


@pytest.fixture
def mtls_server(tmp_path: Path, ca: trustme.CA) -> Iterator[tuple[str, Path]]:
    yield from _serve(tmp_path, ca, verify_clients=True)


async def _admin_connects(settings: Settings) -> bool:
    nc = await connect(settings, "tls-test", BusRole.ADMIN)
    try:
        return nc.is_connected
    finally:
        await nc.close()


async def test_a_tls_url_connects_with_the_ca_from_settings(tls_server: tuple[str, Path]) -> None:
    url, ca_file = tls_server
    settings = Settings(nats_url=url, nats_tls=NatsTlsSettings(ca_file=ca_file))
    assert await eventually(lambda: _admin_connects(settings), "a TLS connection", ignoring=(NatsUnavailable,))


async def test_a_server_certificate_from_an_unknown_ca_is_refused(tls_server: tuple[str, Path]) -> None:
    url, ca_file = tls_server
    await eventually(
        lambda: _admin_connects(Settings(nats_url=url, nats_tls=NatsTlsSettings(ca_file=ca_file))),
        "the server listens",
        ignoring=(NatsUnavailable,),
    )
    with pytest.raises(NatsUnavailable, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
        await asyncio.wait_for(_admin_connects(Settings(nats_url=url)), 30)


async def test_mutual_tls_needs_the_client_certificate(
    mtls_server: tuple[str, Path], ca: trustme.CA, tmp_path: Path
) -> None:
    url, ca_file = mtls_server
    client = ca.issue_cert("flowbus-client")
    client.cert_chain_pems[0].write_to_path(str(tmp_path / "client.pem"))
    client.private_key_pem.write_to_path(str(tmp_path / "client.key"))
    with_cert = NatsTlsSettings(ca_file=ca_file, cert_file=tmp_path / "client.pem", key_file=tmp_path / "client.key")
    assert await eventually(
        lambda: _admin_connects(Settings(nats_url=url, nats_tls=with_cert)),
        "a mutual TLS connection",
        ignoring=(NatsUnavailable,),
    )
    with pytest.raises(NatsUnavailable):
        await asyncio.wait_for(_admin_connects(Settings(nats_url=url, nats_tls=NatsTlsSettings(ca_file=ca_file))), 30)
