"""flowbus.links: the web UI's page URLs, from FLOWBUS_UI_URL or the running `flowbus up`'s
endpoint file; with neither, no link at all (and no "Flow URL" line)."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from flowbus.links import flow_run_url, flow_url
from flowbus.schemas.flows import FlowOut, FlowSettings, RunConfigSpec, StorageSpec
from flowbus.sdk.flow import describe_registration
from flowbus.settings import Settings

FLOW_ID = "6b1f3c0e-8d2a-4f7b-9c61-0a1e2d3c4b5a"
RUN_ID = "0f4e2b7c-3a91-4d58-b6e0-7c2d1a9f8e34"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # The developer's own FLOWBUS_* variables (and ~/.flowbus) must not leak into these cases.
    for name in list(os.environ):
        if name.startswith("FLOWBUS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("FLOWBUS_HOME", str(tmp_path / "home"))


def write_endpoint(graphql_url: str, nats_url: str = "nats://127.0.0.1:4322") -> None:
    home = Settings().home
    home.mkdir(parents=True, exist_ok=True)
    (home / "endpoint.json").write_text(json.dumps({"nats_url": nats_url, "graphql_url": graphql_url, "pid": 1}))


def test_no_url_set_and_no_server_up_gives_no_link() -> None:
    settings = Settings()
    assert settings.resolved_ui_url() is None
    assert flow_url(settings, FLOW_ID) is None
    assert flow_run_url(settings, RUN_ID) is None


def test_the_running_gateway_is_the_ui_when_no_url_is_set() -> None:
    write_endpoint("http://127.0.0.1:4201/graphql")
    settings = Settings()
    assert settings.resolved_ui_url() == "http://127.0.0.1:4201"
    assert flow_url(settings, FLOW_ID) == f"http://127.0.0.1:4201/flow/{FLOW_ID}"
    assert flow_run_url(settings, RUN_ID) == f"http://127.0.0.1:4201/flow-run/{RUN_ID}"


@pytest.mark.parametrize(
    ("graphql_url", "base"),
    [
        ("http://[::1]:4200/graphql", "http://[::1]:4200"),
        # A gateway bound to every address: the endpoint file is this machine's, its loopback reaches it.
        ("http://0.0.0.0:4200/graphql", "http://127.0.0.1:4200"),
        ("http://[::]:4200/graphql", "http://[::1]:4200"),
        ("https://flows.example.com/orchestrator/graphql/", "https://flows.example.com/orchestrator"),
    ],
)
def test_the_graphql_path_is_taken_off(graphql_url: str, base: str) -> None:
    write_endpoint(graphql_url)
    assert Settings().resolved_ui_url() == base


def test_flowbus_ui_url_wins_over_the_endpoint_file(monkeypatch: pytest.MonkeyPatch) -> None:
    write_endpoint("http://127.0.0.1:4201/graphql")
    monkeypatch.setenv("FLOWBUS_UI_URL", "https://ui.example.com/flowbus/")
    settings = Settings()
    assert settings.resolved_ui_url() == "https://ui.example.com/flowbus"
    assert flow_url(settings, FLOW_ID) == f"https://ui.example.com/flowbus/flow/{FLOW_ID}"


def test_the_endpoint_file_serves_the_same_nats_server_named_by_flowbus_nats_url(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    write_endpoint("http://127.0.0.1:4201/graphql", nats_url="nats://127.0.0.1:4322")
    monkeypatch.setenv("FLOWBUS_NATS_URL", "nats://someone:secret@127.0.0.1:4322")
    assert Settings().resolved_ui_url() == "http://127.0.0.1:4201"


def test_no_link_to_the_local_gateway_when_flowbus_nats_url_names_another_server(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    write_endpoint("http://127.0.0.1:4201/graphql", nats_url="nats://127.0.0.1:4322")
    monkeypatch.setenv("FLOWBUS_NATS_URL", "nats://nats.example.com:4222")
    assert Settings().resolved_ui_url() is None


@pytest.mark.parametrize("content", ["not json", '{"nats_url": "nats://127.0.0.1:4322"}', '{"graphql_url": "x"}'])
def test_an_unreadable_endpoint_file_gives_no_link(content: str) -> None:
    home = Settings().home
    home.mkdir(parents=True)
    (home / "endpoint.json").write_text(content)
    assert Settings().resolved_ui_url() is None


def registered() -> FlowOut:
    return FlowOut(
        id=FLOW_ID,
        project_id=RUN_ID,
        project_name="tutorial",
        flow_group_id=RUN_ID,
        name="hello-flow",
        version=1,
        description=None,
        archived=False,
        labels=["my-hostname"],
        parameters=[],
        tasks=[],
        edges=[],
        storage=StorageSpec(type="module", module="hello_flow"),
        run_config=RunConfigSpec(labels=["my-hostname"]),
        schedule=None,
        is_schedule_active=False,
        core_version="0",
        settings=FlowSettings(heartbeat_enabled=True, lazarus_enabled=True, version_locking_enabled=False),
        default_parameters={},
        created=datetime.now(UTC),
    )


def test_flow_register_prints_the_flow_url_last_when_there_is_one() -> None:
    with_url = describe_registration(registered(), f"http://127.0.0.1:4200/flow/{FLOW_ID}").splitlines()
    assert with_url[-1] == f"Flow URL: http://127.0.0.1:4200/flow/{FLOW_ID}"
    without = describe_registration(registered(), None).splitlines()
    assert without == with_url[:-1]
    assert not any("URL" in line for line in without)
