"""`flowbus up` closes its bus: credentials made on the first start, private files, no secret shown,
credentials for another machine, rotation and removal (docs/security.md).
"""

from __future__ import annotations

import json
import stat
import subprocess
from pathlib import Path

import nats
import pytest
from nats.errors import Error as NatsError

from flowbus.bus_auth import BusRole, Credential
from tests.helpers.processes import FLOWBUS, UP_READY, run, start, stop, wait_for_line
from tests.helpers.waiting import eventually

pytestmark = pytest.mark.e2e


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def refused(url: str, credential: Credential | None) -> bool:
    """Whether the server refuses to authenticate ``credential`` (None: an anonymous client)."""

    async def quiet(exc: Exception) -> None:
        pass

    options = credential.connect_options() if credential is not None else {}
    try:
        nc = await nats.connect(url, allow_reconnect=False, error_cb=quiet, connect_timeout=5, **options)
    except NatsError as exc:
        return "Authorization Violation" in str(exc)
    await nc.close()
    return False


async def test_the_first_start_makes_private_credentials_and_shows_no_secret(home: Path, workdir: Path) -> None:
    proc = start([FLOWBUS, "up"], home, workdir)
    try:
        banner = "".join(wait_for_line(proc, UP_READY))
        auth = home / "auth"
        seeds = [Credential.load(auth / f"{role.value}.json").seed for role in BusRole]
        endpoint_text = (home / "endpoint.json").read_text()
        assert not any(seed in banner or seed in endpoint_text for seed in seeds)
        assert "NATS credentials:" in banner
        for folder in (home, auth):
            assert mode(folder) == 0o700, folder
        private = [*auth.iterdir(), home / "endpoint.json", home / "flowbus.db", home / "nats-server.conf"]
        private += [home / "nats-server.log", *home.glob("flowbus.db-*")]
        for path in private:
            assert mode(path) == 0o600, path
        url = json.loads(endpoint_text)["nats_url"]
        assert await refused(url, None)
        assert not await refused(url, Credential.load(auth / "admin.json"))
    finally:
        stop(proc)
    # A second start keeps the same credentials.
    again = start([FLOWBUS, "up"], home, workdir)
    try:
        wait_for_line(again, UP_READY)
        assert [Credential.load(home / "auth" / f"{role.value}.json").seed for role in BusRole] == seeds
    finally:
        stop(again)


async def test_a_credential_for_another_machine_can_be_rotated_and_removed(
    home: Path, workdir: Path, tmp_path: Path
) -> None:
    proc = start([FLOWBUS, "up"], home, workdir)
    try:
        wait_for_line(proc, UP_READY)
        url = json.loads((home / "endpoint.json").read_text())["nats_url"]
        added = run([FLOWBUS, "auth", "add", "east", "--role", "read-only"], home, workdir)
        assert added.returncode == 0, added.stderr
        assert "FLOWBUS_NATS_CREDS" in added.stdout
        creds = home / "auth" / "east.json"
        assert mode(creds) == 0o600
        # "Another machine": a home of its own, the copied file and the URL.
        elsewhere = {"FLOWBUS_NATS_CREDS": str(creds), "FLOWBUS_NATS_URL": url}
        other_home = tmp_path / "east-home"

        async def list_projects() -> subprocess.CompletedProcess[str]:
            return run([FLOWBUS, "get", "projects"], other_home, workdir, env=elsewhere)

        listed = await eventually(
            list_projects, "the reloaded server accepts the new credential", until=lambda r: r.returncode == 0
        )
        assert listed.returncode == 0
        denied = run([FLOWBUS, "create", "project", "nope"], other_home, workdir, env=elsewhere)
        assert denied.returncode != 0
        assert "may not publish" in denied.stdout + denied.stderr

        old = Credential.load(creds)
        rotated = run([FLOWBUS, "auth", "rotate", "east"], home, workdir)
        assert rotated.returncode == 0, rotated.stderr
        new = Credential.load(creds)
        assert new.seed != old.seed
        # Until the next start both keys work: running processes are not cut off.
        await eventually(lambda: refused(url, new), "the new key is accepted", until=lambda r: r is False)
        assert not await refused(url, old)

        assert run([FLOWBUS, "auth", "remove", "east"], home, workdir).returncode == 0
        await eventually(lambda: refused(url, new), "the removed credential is refused")
        assert await refused(url, old)
        assert not creds.exists()
    finally:
        stop(proc)
