"""Settings read from the environment: the flat FLOWBUS_HEARTBEAT_INTERVAL
alongside the nested FLOWBUS_HEARTBEAT__INTERVAL_SECONDS; the NATS URL, which
is never guessed (FLOWBUS_NATS_URL, else the endpoint file, waited for while a
`flowbus up` of the home is alive)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from flowbus.runtime.nats import NoServerRunning, nats_servers
from flowbus.settings import HeartbeatSettings, NatsTuning, Settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # The developer's own FLOWBUS_* variables must not leak into these cases.
    for name in list(os.environ):
        if name.startswith("FLOWBUS_"):
            monkeypatch.delenv(name)


def test_default_heartbeat_interval_is_30_seconds() -> None:
    assert Settings().heartbeat.interval_seconds == 30.0


@pytest.mark.parametrize(("value", "seconds"), [("30", 30.0), ("2.5", 2.5), ("45s", 45.0), ("2m", 120.0)])
def test_flat_heartbeat_interval(monkeypatch: pytest.MonkeyPatch, value: str, seconds: float) -> None:
    monkeypatch.setenv("FLOWBUS_HEARTBEAT_INTERVAL", value)
    settings = Settings()
    assert settings.heartbeat.interval_seconds == seconds
    assert settings.heartbeat.agent_interval_seconds == 10.0  # the other heartbeat setting is untouched


def test_nested_heartbeat_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWBUS_HEARTBEAT__INTERVAL_SECONDS", "7")
    assert Settings().heartbeat.interval_seconds == 7.0


def test_nested_spelling_wins_over_the_flat_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWBUS_HEARTBEAT_INTERVAL", "5")
    monkeypatch.setenv("FLOWBUS_HEARTBEAT__INTERVAL_SECONDS", "7")
    assert Settings().heartbeat.interval_seconds == 7.0


def test_flat_interval_combines_with_other_nested_heartbeat_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWBUS_HEARTBEAT_INTERVAL", "5")
    monkeypatch.setenv("FLOWBUS_HEARTBEAT__AGENT_INTERVAL_SECONDS", "3")
    heartbeat = Settings().heartbeat
    assert (heartbeat.interval_seconds, heartbeat.agent_interval_seconds) == (5.0, 3.0)


def test_explicit_settings_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWBUS_HEARTBEAT_INTERVAL", "5")
    assert Settings(heartbeat=HeartbeatSettings(interval_seconds=0.5)).heartbeat.interval_seconds == 0.5


@pytest.mark.parametrize("value", ["0", "-1", "soon"])
def test_bad_flat_interval_is_refused(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("FLOWBUS_HEARTBEAT_INTERVAL", value)
    with pytest.raises(ValidationError, match="heartbeat_interval"):
        Settings()


def test_up_runs_the_hot_paths_in_processes_of_their_own_by_default() -> None:
    from flowbus_services.registry import SERVICE_MODULES
    from flowbus_services.supervisor import layout

    assert layout(list(SERVICE_MODULES), Settings().up.processes) == [
        ("run_creation",),
        ("state",),
        ("registration", "heartbeat", "scheduler", "gateway"),
    ]


def test_up_processes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from flowbus_services.registry import SERVICE_MODULES
    from flowbus_services.supervisor import layout

    monkeypatch.setenv("FLOWBUS_UP__PROCESSES", '{"run_creation": 2, "scheduler": 1}')
    groups = layout(list(SERVICE_MODULES), Settings().up.processes)
    shared = ("registration", "state", "heartbeat", "gateway")
    assert groups == [("run_creation",), ("run_creation",), ("scheduler",), shared]


def test_up_processes_may_leave_no_shared_process() -> None:
    from flowbus_services.supervisor import layout

    assert layout(["a", "b"], {"a": 1, "b": 2}) == [("a",), ("b",), ("b",)]
    assert layout(["a", "b"], {}) == [("a", "b")]


def test_up_processes_refuses_unknown_services() -> None:
    from flowbus_services.supervisor import layout

    with pytest.raises(ValueError, match="unknown services: stat"):
        layout(["registration", "state"], {"stat": 2})


def test_replies_wait_for_stored_events_unless_flowbus_up_runs_its_own_server() -> None:
    from flowbus_services.up import on_embedded_server

    assert Settings().nats.reply_after_events == "stored"
    embedded = on_embedded_server(Settings(), "nats://127.0.0.1:4999")
    assert (embedded.nats_url, embedded.nats.reply_after_events) == ("nats://127.0.0.1:4999", "sent")


def test_a_chosen_reply_point_is_kept_on_the_embedded_server(monkeypatch: pytest.MonkeyPatch) -> None:
    from flowbus_services.up import on_embedded_server

    monkeypatch.setenv("FLOWBUS_NATS__REPLY_AFTER_EVENTS", "stored")
    assert on_embedded_server(Settings(), "nats://127.0.0.1:4999").nats.reply_after_events == "stored"
    monkeypatch.setenv("FLOWBUS_NATS__REPLY_AFTER_EVENTS", "acked")
    with pytest.raises(ValidationError, match="reply_after_events"):
        Settings()


def test_the_embedded_nats_port_is_fixed_by_the_setting_and_refused_when_taken(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A restart by hand must find the server on the port its agents hold (docs/reliability.md)."""
    import socket

    from flowbus_services.up import choose_port, free_port

    port = free_port()
    monkeypatch.setenv("FLOWBUS_EMBEDDED_NATS__PORT", str(port))
    settings = Settings().embedded_nats
    assert choose_port(settings) == port
    assert "port" not in vars(settings.limits())  # not a limit of the account
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        with pytest.raises(RuntimeError, match=f"NATS port {port} .* is taken"):
            choose_port(settings)


def test_a_run_is_late_15_seconds_after_its_start_time_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().scheduler.late_after == 15.0
    monkeypatch.setenv("FLOWBUS_SCHEDULER__LATE_AFTER", "2m")
    assert Settings().scheduler.late_after == 120.0


def test_lease_ttl_defaults_to_6_seconds_and_reads_durations(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().lease.ttl_seconds == 6.0
    monkeypatch.setenv("FLOWBUS_LEASE__TTL_SECONDS", "10s")
    assert Settings().lease.ttl_seconds == 10.0


@pytest.mark.parametrize("value", ["0", "0.1", "-1", "soon"])
def test_a_lease_ttl_the_server_would_refuse_is_refused(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("FLOWBUS_LEASE__TTL_SECONDS", value)
    with pytest.raises(ValidationError):
        Settings()


def test_lazarus_defaults_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().lazarus.model_dump() == {
        "interval_seconds": 600.0,
        "stale_after_seconds": 600.0,
        "max_resurrections": 3,
    }
    monkeypatch.setenv("FLOWBUS_LAZARUS__INTERVAL_SECONDS", "30s")
    monkeypatch.setenv("FLOWBUS_LAZARUS__STALE_AFTER_SECONDS", "5m")
    monkeypatch.setenv("FLOWBUS_LAZARUS__MAX_RESURRECTIONS", "5")
    assert Settings().lazarus.model_dump() == {
        "interval_seconds": 30.0,
        "stale_after_seconds": 300.0,
        "max_resurrections": 5,
    }


def _home_settings(home: Path, wait: float = 15.0) -> Settings:
    return Settings(home=home, nats=NatsTuning(endpoint_wait_seconds=wait))


def _write(path: Path, data: dict[str, object]) -> None:
    path.write_text(json.dumps(data))


def test_the_url_is_the_setting_else_the_endpoint_file(tmp_path: Path) -> None:
    settings = _home_settings(tmp_path)
    _write(settings.endpoint_file, {"nats_url": "nats://127.0.0.1:5555", "pid": os.getpid()})
    assert settings.resolved_nats_url() == "nats://127.0.0.1:5555"
    explicit = Settings(home=tmp_path, nats_url="nats://10.0.0.1:4222,nats://10.0.0.2:4222")
    assert explicit.nats_servers() == ["nats://10.0.0.1:4222", "nats://10.0.0.2:4222"]


@pytest.mark.parametrize("endpoint", [None, "not json", '{"pid": 1}'])
def test_no_url_and_no_endpoint_file_is_an_error_not_a_guessed_port(tmp_path: Path, endpoint: str | None) -> None:
    settings = _home_settings(tmp_path)
    if endpoint is not None:
        settings.endpoint_file.write_text(endpoint)
    with pytest.raises(NoServerRunning) as raised:
        settings.resolved_nats_url()
    message = str(raised.value)
    assert message.startswith("no flowbus server is running")
    assert "`flowbus up`" in message
    assert "FLOWBUS_NATS_URL" in message
    assert str(settings.endpoint_file) in message


async def test_a_client_fails_at_once_when_no_flowbus_up_is_alive(tmp_path: Path) -> None:
    # An hour's wait allowed: waiting at all would outlast wait_for's 5 s and fail the test.
    settings = _home_settings(tmp_path, wait=3600)
    # A pid file left by a killed `flowbus up` names a process that is gone.
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], check=False, capture_output=True, text=True
    )
    _write(settings.up_pid_file, {"pid": int(gone.stdout)})
    with pytest.raises(NoServerRunning):
        await asyncio.wait_for(nats_servers(settings), 5)


async def test_a_client_waits_for_a_starting_flowbus_up(tmp_path: Path) -> None:
    settings = _home_settings(tmp_path)
    _write(settings.up_pid_file, {"pid": os.getpid()})  # alive: this process
    waiting = asyncio.create_task(nats_servers(settings))
    await asyncio.sleep(0)  # its first look found no endpoint file
    assert not waiting.done()
    _write(settings.endpoint_file, {"nats_url": "nats://127.0.0.1:5556", "pid": os.getpid()})
    assert await asyncio.wait_for(waiting, 5) == ["nats://127.0.0.1:5556"]


async def test_the_wait_for_a_starting_flowbus_up_is_bounded(tmp_path: Path) -> None:
    settings = _home_settings(tmp_path, wait=0.3)
    _write(settings.up_pid_file, {"pid": os.getpid()})
    with pytest.raises(NoServerRunning):
        await asyncio.wait_for(nats_servers(settings), 5)
