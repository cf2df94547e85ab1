"""`flowbus up` and the gateway's keys, as a user meets them: the first admin key in
``$FLOWBUS_HOME/api-key`` (mode 0600), the GraphQL URL, 401 without the key, the same
key after a restart; with ``FLOWBUS_GATEWAY__AUTH=off``, no key and a warning."""

from __future__ import annotations

import json
import re
import stat
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.helpers.processes import FLOWBUS, UP_READY, flowbus, start, stop, wait_for_line

pytestmark = pytest.mark.e2e

GRAPHQL_LINE = re.compile(r"GraphQL: (http://\S+/graphql)")


def post_hello(url: str, key: str | None) -> tuple[int, dict[str, object]]:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(url, data=json.dumps({"query": "{ hello }"}).encode(), headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def start_up(home: Path, work: Path, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], str]:
    """`flowbus up` until it serves; the process and everything it printed so far."""
    proc = start([FLOWBUS, "up"], home, work, env)
    try:
        output = "".join(wait_for_line(proc, UP_READY))
    except BaseException:
        stop(proc)
        raise
    return proc, output


def graphql_url(output: str) -> str:
    match = GRAPHQL_LINE.search(output)
    assert match is not None, output
    return match.group(1)


def test_the_first_start_writes_an_admin_key_that_the_gateway_asks_for(home: Path, workdir: Path) -> None:
    key_file = home / "api-key"
    proc, output = start_up(home, workdir)
    try:
        url = graphql_url(output)
        assert f"  API key: {key_file}" in output
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        key = key_file.read_text().strip()
        assert key.startswith("fbk_")
        assert key not in output  # shown nowhere but in the file

        assert post_hello(url, key) == (200, {"data": {"hello": "👋"}})
        status, body = post_hello(url, None)
        assert status == 401
        assert body["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"  # type: ignore[index]
        assert post_hello(url, "fbk_" + "x" * 43)[0] == 401

        listing = flowbus(home, workdir, "get", "api-keys").stdout
        assert listing.splitlines()[1].split()[:2] == ["admin", "admin"]
        assert key not in listing
    finally:
        assert stop(proc) == 0

    # A second start keeps the file, and the key still works.
    proc, output = start_up(home, workdir)
    try:
        assert f"  API key: {key_file}" in output
        assert "created now" not in output
        assert key_file.read_text().strip() == key
        assert post_hello(graphql_url(output), key)[0] == 200
        assert [line.split()[0] for line in flowbus(home, workdir, "get", "api-keys").stdout.splitlines()[1:]] == [
            "admin"
        ]
    finally:
        stop(proc)


def test_a_home_that_lost_its_key_file_gets_a_new_admin_key_under_a_free_name(home: Path, workdir: Path) -> None:
    proc, _ = start_up(home, workdir)
    stop(proc)
    first = (home / "api-key").read_text().strip()
    (home / "api-key").unlink()
    proc, output = start_up(home, workdir)
    try:
        second = (home / "api-key").read_text().strip()
        assert second != first
        assert "admin-2" in output
        assert post_hello(graphql_url(output), second)[0] == 200
        assert post_hello(graphql_url(output), first)[0] == 200  # the old key was not revoked
    finally:
        stop(proc)


def test_with_auth_off_there_is_no_key_and_a_warning(home: Path, workdir: Path) -> None:
    proc, output = start_up(home, workdir, {"FLOWBUS_GATEWAY__AUTH": "off"})
    try:
        assert "API key: none (FLOWBUS_GATEWAY__AUTH=off)" in output
        assert not (home / "api-key").exists()
        assert post_hello(graphql_url(output), None) == (200, {"data": {"hello": "👋"}})
    finally:
        stop(proc)
    assert proc.stdout is not None
    rest = output + proc.stdout.read()
    # The gateway's own warning, from its process's log.
    assert re.search(r"API keys are off \(FLOWBUS_GATEWAY__AUTH=off\)", rest), rest


def test_the_single_process_layout_makes_the_first_key_too(home: Path, workdir: Path) -> None:
    proc, output = start_up(home, workdir, {"FLOWBUS_UP__SINGLE_PROCESS": "true"})
    try:
        key = (home / "api-key").read_text().strip()
        assert stat.S_IMODE((home / "api-key").stat().st_mode) == 0o600
        assert f"  API key: {home / 'api-key'}" in output
        assert post_hello(graphql_url(output), key)[0] == 200
        assert post_hello(graphql_url(output), None)[0] == 401
    finally:
        stop(proc)
