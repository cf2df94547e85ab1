"""`flowbus auth init [--nats-include FILE]`: the credentials and users for a NATS server of one's own.

As docker-compose.yml uses it: a real nats-server from the wheel whose
configuration ``include``s the file the command writes (by a path relative
to the configuration, as nats-server reads includes), with TLS from a
throw-away CA (trustme), on a free loopback port.
"""

from __future__ import annotations

import json
import ssl
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest
import trustme
from nats.errors import Error as NatsError
from typer.testing import CliRunner

from flowbus.bus_auth import ACCOUNT, BusRole, Credential
from flowbus.cli import app
from flowbus.runtime.nats import NatsUnavailable, connect
from flowbus.settings import NatsTlsSettings, Settings
from tests.helpers.bus import nats_server, server_tls
from tests.helpers.waiting import eventually


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# The account's JetStream file storage (a setting), which the test server must be able to hold.
ACCOUNT_FILE_STORE = 64 * 1024**2


def auth_init(auth: Path, *args: str) -> tuple[int, str]:
    env = {"FLOWBUS_AUTH_DIR": str(auth), "FLOWBUS_EMBEDDED_NATS__MAX_FILE_STORE": str(ACCOUNT_FILE_STORE)}
    result = CliRunner().invoke(app, ["auth", "init", *args], env=env)
    return result.exit_code, result.output


@pytest.fixture
def initialised(tmp_path: Path) -> Path:
    """``flowbus auth init`` run as docker-compose.yml's auth-init runs it; returns the auth folder."""
    auth = tmp_path / "auth"
    code, output = auth_init(auth, "--nats-include", str(auth / "accounts.conf"))
    assert code == 0, output
    return auth


def test_init_makes_private_credentials_and_a_readable_include(initialised: Path) -> None:
    auth = initialised
    assert mode(auth) == 0o700
    for role in BusRole:
        credential = Credential.load(auth / f"{role.value}.json")
        assert credential.role is role
        assert mode(auth / f"{role.value}.json") == 0o600
    include = auth / "accounts.conf"
    # Public keys only: the server may run as another user.
    assert mode(include) == 0o644
    keyword, _, body = include.read_text().partition(":")
    assert keyword == "accounts"
    account = json.loads(body)[ACCOUNT]
    assert account["jetstream"]["max_file"] == ACCOUNT_FILE_STORE  # the limits come from the settings
    users = account["users"]
    assert sorted(u["nkey"] for u in users) == sorted(
        Credential.load(auth / f"{role.value}.json").public_key for role in BusRole
    )
    assert not any(Credential.load(auth / f"{role.value}.json").seed in include.read_text() for role in BusRole)


def test_init_again_keeps_the_credentials(initialised: Path) -> None:
    seeds = {role: Credential.load(initialised / f"{role.value}.json").seed for role in BusRole}
    code, output = auth_init(initialised, "--nats-include", str(initialised / "accounts.conf"))
    assert code == 0, output
    assert "exist already" in output
    assert {role: Credential.load(initialised / f"{role.value}.json").seed for role in BusRole} == seeds


def test_an_include_that_cannot_be_written_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    code, output = auth_init(tmp_path / "auth", "--nats-include", str(tmp_path / "a-file" / "accounts.conf"))
    assert code == 1
    assert "Cannot write the NATS include file" in output


@pytest.fixture
def server(initialised: Path, tmp_path: Path) -> Iterator[tuple[str, Path, subprocess.Popen[bytes]]]:
    """A TLS nats-server including the users ``auth init`` wrote; its URL and CA file."""
    tls = server_tls(tmp_path, trustme.CA())
    etc = tmp_path / "etc" / "nats"
    etc.mkdir(parents=True)
    (etc / "flowbus.conf").write_text(
        "include ../../auth/accounts.conf\n"
        + json.dumps(
            {
                "tls": {"cert_file": str(tls.cert), "key_file": str(tls.key)},
                "jetstream": {"store_dir": str(tmp_path / "js"), "max_file_store": ACCOUNT_FILE_STORE},
            }
        )[1:-1]
        + "\n"
    )
    with nats_server(etc / "flowbus.conf") as (port, proc):
        yield f"tls://127.0.0.1:{port}", tls.ca, proc


async def test_a_server_including_the_users_admits_the_service_credential_only(
    server: tuple[str, Path, subprocess.Popen[bytes]], initialised: Path
) -> None:
    url, ca_file, proc = server
    settings = Settings(nats_url=url, auth_dir=initialised, nats_tls=NatsTlsSettings(ca_file=ca_file))

    async def service_connects() -> bool:
        assert proc.poll() is None, "nats-server refused its configuration"
        nc = await connect(settings, "auth-init-test", BusRole.SERVICE)
        try:
            return nc.is_connected
        finally:
            await nc.close()

    assert await eventually(service_connects, "the service credential connects", ignoring=(NatsUnavailable,))

    async def quiet(exc: Exception) -> None:
        pass

    with pytest.raises(NatsError, match="Authorization Violation"):
        await nats.connect(
            url,
            tls=ssl.create_default_context(cafile=str(ca_file)),
            allow_reconnect=False,
            error_cb=quiet,
            connect_timeout=5,
        )
