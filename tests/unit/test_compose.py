"""docker-compose.yml and the Dockerfile, checked statically (no Docker engine runs here)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

from flowbus.settings import Settings
from flowbus_services.registry import SERVICE_MODULES

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"

NATS_URL = "nats://nats-1:4222,nats://nats-2:4222,nats://nats-3:4222"
DATABASE_URL = "postgresql+asyncpg://postgres@postgres:5432/flowbus"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(document, dict)
    return document


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    services = compose["services"]
    assert isinstance(services, dict)
    return services


def command_of(service: dict[str, Any]) -> list[str]:
    command = service.get("command", [])
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {}) or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): str(v) for k, v in env.items()}


def flags_of(command: list[str]) -> dict[str, str]:
    """nats-server flags, ``-x``, ``--x``, ``--x=v`` or ``--x v``, by name without dashes."""
    flags: dict[str, str] = {}
    i = 0
    while i < len(command):
        arg = command[i]
        if arg.startswith("-"):
            name, eq, value = arg.lstrip("-").partition("=")
            if not eq and i + 1 < len(command) and not command[i + 1].startswith("-"):
                value = command[i + 1]
                i += 1
            flags[name] = value
        i += 1
    return flags


def image_of(service: dict[str, Any]) -> str:
    return str(service.get("image", ""))


def by_image(services: dict[str, dict[str, Any]], prefix: str) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in services.items() if image_of(s).startswith(prefix)}


def dependencies(service: dict[str, Any]) -> list[str]:
    depends = service.get("depends_on", [])
    return list(depends) if isinstance(depends, dict | list) else []


# ---- NATS -----------------------------------------------------------------------


def test_three_nats_nodes_form_one_cluster_with_jetstream(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    nats = by_image(services, "nats:")
    assert len(nats) == 3, sorted(nats)
    assert {image_of(s) for s in nats.values()} == {"nats:2.10"}

    flags = {name: flags_of(command_of(s)) for name, s in nats.items()}
    for name, f in flags.items():
        assert {"js", "jetstream"} & f.keys(), f"{name} runs without JetStream"
        assert "cluster" in f, f"{name} has no cluster listen address"
    assert len({f["cluster_name"] for f in flags.values()}) == 1, "the nodes name different clusters"
    server_names = [f.get("name") or f.get("server_name") for f in flags.values()]
    assert all(server_names), "JetStream in a cluster needs a server name on each node"
    assert len(set(server_names)) == 3, server_names

    # The routes connect every node to the others.
    linked: set[frozenset[str]] = set()
    for name, f in flags.items():
        for route in f.get("routes", "").split(","):
            host = urlparse(route).hostname
            assert host in nats, f"{name} routes to {route}, which is no NATS node"
            if host != name:
                linked.add(frozenset((name, host)))
    nodes = sorted(nats)
    reachable = {nodes[0]}
    while True:
        more = {n for pair in linked if pair & reachable for n in pair} - reachable
        if not more:
            break
        reachable |= more
    assert reachable == set(nodes), f"the routes do not connect every node: {sorted(linked, key=sorted)}"

    # JetStream keeps its data in a named volume of its own on each node.
    declared = set((compose.get("volumes") or {}).keys())
    volumes_used: list[str] = []
    for name, s in nats.items():
        store_dir = flags[name].get("store_dir") or flags[name].get("sd")
        assert store_dir, f"{name} has no JetStream store_dir"
        mounts = {str(v).split(":")[1]: str(v).split(":")[0] for v in s.get("volumes", [])}
        assert store_dir in mounts, f"{name} stores JetStream in {store_dir}, which is no volume"
        assert mounts[store_dir] in declared, f"{name}: {mounts[store_dir]} is not a named volume"
        volumes_used.append(mounts[store_dir])
    assert len(set(volumes_used)) == 3, volumes_used


# ---- flowbus services -------------------------------------------------------------


@pytest.mark.parametrize("name", list(SERVICE_MODULES))
def test_every_flowbus_service_runs_in_its_own_container(services: dict[str, dict[str, Any]], name: str) -> None:
    assert name in services, f"no container for the {name} service"
    service = services[name]
    assert command_of(service) == [
        ".venv/bin/flowbus",
        "service",
        "run",
        name,
        "--host",
        "0.0.0.0",
        "--port",
        "8000",
    ]
    assert service.get("build"), f"{name} is not built from the Dockerfile"
    build = service["build"]
    dockerfile = build.get("dockerfile", "Dockerfile") if isinstance(build, dict) else "Dockerfile"
    context = build.get("context", ".") if isinstance(build, dict) else build
    assert (ROOT / context / dockerfile).resolve() == DOCKERFILE

    env = env_of(service)
    assert env["FLOWBUS_NATS_URL"] == NATS_URL
    assert env["FLOWBUS_DATABASE_URL"] == DATABASE_URL
    assert env["FLOWBUS_NATS__STREAM_REPLICAS"] == "3"
    collector = urlparse(env["OTEL_EXPORTER_OTLP_ENDPOINT"]).hostname
    assert collector in services, f"{name} sends traces to {collector}, which is no service"

    test = service["healthcheck"]["test"]
    assert "/readyz" in (test if isinstance(test, str) else " ".join(test)), f"{name} is not checked on /readyz"


def test_service_environment_is_what_settings_reads(
    services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in env_of(services["state"]).items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.nats_url == NATS_URL
    assert settings.database_url == DATABASE_URL
    assert settings.nats.stream_replicas == 3


def test_service_urls_name_compose_services(services: dict[str, dict[str, Any]]) -> None:
    nats_hosts = {urlparse(url).hostname for url in NATS_URL.split(",")}
    assert nats_hosts == set(by_image(services, "nats:"))
    assert urlparse(DATABASE_URL).hostname in services


def test_every_service_command_names_a_known_service(services: dict[str, dict[str, Any]]) -> None:
    started = []
    for name, service in services.items():
        command = command_of(service)
        if "service" in command and "run" in command:
            target = command[command.index("run") + 1]
            assert target in SERVICE_MODULES, f"{name} runs unknown service {target!r}"
            started.append(target)
    assert sorted(started) == sorted(SERVICE_MODULES), "each service must run in exactly one container"


# ---- the rest of the stack ----------------------------------------------------------


def test_postgres_is_present(services: dict[str, dict[str, Any]]) -> None:
    postgres = services["postgres"]
    assert image_of(postgres) == "postgres:16"
    env = env_of(postgres)
    assert env["POSTGRES_HOST_AUTH_METHOD"] == "trust"
    assert env["POSTGRES_DB"] == "flowbus"
    assert "healthcheck" in postgres


def test_collector_and_trace_viewer_are_present(compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    collectors = by_image(services, "otel/opentelemetry-collector")
    viewers = by_image(services, "jaegertracing/all-in-one")
    assert len(collectors) == 1
    assert len(viewers) == 1
    (collector_name, collector), (viewer_name, _viewer) = next(iter(collectors.items())), next(iter(viewers.items()))

    for name in SERVICE_MODULES:
        endpoint = env_of(services[name])["OTEL_EXPORTER_OTLP_ENDPOINT"]
        assert urlparse(endpoint).hostname == collector_name

    # The collector's pipeline receives OTLP and exports traces to the viewer.
    configs = compose.get("configs") or {}
    sources = [c["source"] if isinstance(c, dict) else c for c in collector.get("configs", [])]
    assert sources, "the collector has no configuration"
    config = yaml.safe_load(configs[sources[0]]["content"])
    pipeline = config["service"]["pipelines"]["traces"]
    assert "otlp" in pipeline["receivers"]
    endpoints = [config["exporters"][e].get("endpoint", "") for e in pipeline["exporters"]]
    assert any(e.split(":")[0] == viewer_name for e in endpoints), endpoints


def test_every_depends_on_target_exists(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for target in dependencies(service):
            assert target in services, f"{name} depends on {target}, which is not defined"


def test_named_volumes_and_configs_are_declared(compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    volumes = set((compose.get("volumes") or {}).keys())
    configs = set((compose.get("configs") or {}).keys())
    for name, service in services.items():
        for mount in service.get("volumes", []):
            source = str(mount).split(":")[0]
            if not source.startswith((".", "/", "~")):
                assert source in volumes, f"{name} mounts undeclared volume {source}"
        for config in service.get("configs", []):
            source = config["source"] if isinstance(config, dict) else config
            assert source in configs, f"{name} uses undeclared config {source}"


def test_dockerfile_builds_the_services() -> None:
    text = DOCKERFILE.read_text()
    assert "FROM python:3.11-slim" in text
    assert "uv==0.13.9" in text
    assert "uv sync --frozen --no-dev" in text
    assert "COPY libs" in text
    assert "COPY flowbus_services" in text
