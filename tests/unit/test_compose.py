"""docker-compose.yml and the Dockerfile, checked statically (no Docker engine runs here).

Each check is a property the deployment breaks without: every service has
a container, the containers agree on one NATS cluster and one database,
their variables are settings flowbus reads, the cluster is one cluster. No
check pins an image version or spells out a command: those may change.
"""

from __future__ import annotations

import os
import re
import shlex
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml
from pydantic import BaseModel

from flowbus.settings import Settings
from flowbus_services.registry import SERVICE_MODULES

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

Services = dict[str, dict[str, Any]]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(document, dict)
    return document


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> Services:
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
    """Command-line flags, ``-x``, ``--x``, ``--x=v`` or ``--x v``, by name without dashes."""
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


def dependencies(service: dict[str, Any]) -> dict[str, str]:
    """What the service waits for: each dependency and its condition."""
    depends = service.get("depends_on", [])
    if isinstance(depends, list):
        return {str(d): "service_started" for d in depends}
    return {str(name): str((spec or {}).get("condition", "service_started")) for name, spec in depends.items()}


def nats_nodes(services: Services) -> Services:
    return {name: s for name, s in services.items() if str(s.get("image", "")).split(":")[0] == "nats"}


def flowbus_containers(services: Services) -> dict[str, str]:
    """The flowbus service each container runs (``flowbus service run NAME``), by container."""
    found: dict[str, str] = {}
    for name, service in services.items():
        command = command_of(service)
        for i in range(len(command) - 2):
            if command[i : i + 2] == ["service", "run"]:
                found[name] = command[i + 2]
    return found


def database_service(services: Services) -> str:
    host = urlparse(env_of(next(iter(flowbus_services(services).values())))["FLOWBUS_DATABASE_URL"]).hostname
    assert host in services, f"the database URL names {host}, which is no service"
    return host


def flowbus_services(services: Services) -> Services:
    return {name: services[name] for name in flowbus_containers(services)}


def names_a_setting(variable: str) -> bool:
    """Whether Settings reads ``variable`` (``FLOWBUS_A__B`` is field ``b`` of the group ``a``)."""
    model: type[BaseModel] = Settings
    *groups, leaf = variable.removeprefix("FLOWBUS_").lower().split("__")
    for group in groups:
        field = model.model_fields.get(group)
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return False
        model = field.annotation
    return leaf in model.model_fields


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


# ---- NATS -----------------------------------------------------------------------


def test_three_nats_nodes_form_one_cluster_with_jetstream(compose: dict[str, Any], services: Services) -> None:
    nats = nats_nodes(services)
    assert len(nats) == 3, sorted(nats)

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
def test_every_flowbus_service_runs_in_its_own_container(services: Services, name: str) -> None:
    containers = [c for c, target in flowbus_containers(services).items() if target == name]
    assert len(containers) == 1, f"the {name} service runs in {len(containers)} containers: {containers}"
    service = services[containers[0]]

    build = service.get("build")
    assert build, f"{name} is not built from the Dockerfile"
    dockerfile = build.get("dockerfile", "Dockerfile") if isinstance(build, dict) else "Dockerfile"
    context = build.get("context", ".") if isinstance(build, dict) else build
    assert (ROOT / context / dockerfile).resolve() == DOCKERFILE

    # The command is the project's own script, in the virtualenv the image builds in its WORKDIR.
    command = command_of(service)
    workdir = PurePosixPath(dict(dockerfile_instructions())["WORKDIR"])
    assert workdir / command[0] == workdir / ".venv" / "bin" / "flowbus"
    assert "flowbus" in PYPROJECT["project"]["scripts"]

    # It listens where it can be reached, on the port its health check and the published ports use.
    flags = flags_of(command)
    assert flags.get("host") == "0.0.0.0", f"{name} listens on {flags.get('host')}, unreachable from outside"
    port = flags["port"]
    test = service["healthcheck"]["test"]
    probe = test if isinstance(test, str) else " ".join(test)
    assert f":{port}/readyz" in probe, f"{name}'s health check does not probe /readyz on port {port}"
    for published in service.get("ports", []):
        assert str(published).rsplit(":", 1)[-1] == port, f"{name} publishes {published}, not its port {port}"


def test_every_service_command_names_a_known_service(services: Services) -> None:
    started = []
    for name, target in flowbus_containers(services).items():
        assert target in SERVICE_MODULES, f"{name} runs unknown service {target!r}"
        started.append(target)
    assert sorted(started) == sorted(SERVICE_MODULES), "each service must run in exactly one container"


def test_every_flowbus_variable_is_a_setting(services: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, service in flowbus_services(services).items():
        env = env_of(service)
        unread = [v for v in env if v.startswith("FLOWBUS_") and not names_a_setting(v)]
        assert not unread, f"{name} sets variables no setting reads: {unread}"
        with monkeypatch.context() as patched:
            for variable in [v for v in os.environ if v.startswith("FLOWBUS_")]:
                patched.delenv(variable)  # the developer's own
            for key, value in env.items():
                patched.setenv(key, value)
            settings = Settings()  # the values are valid too
        assert settings.nats_url == env["FLOWBUS_NATS_URL"]
        assert settings.database_url == env["FLOWBUS_DATABASE_URL"]


def test_services_share_the_nats_cluster_and_the_database(services: Services) -> None:
    envs = {name: env_of(s) for name, s in flowbus_services(services).items()}
    for variable in ("FLOWBUS_NATS_URL", "FLOWBUS_DATABASE_URL", "FLOWBUS_NATS__STREAM_REPLICAS"):
        assert len({env.get(variable) for env in envs.values()}) == 1, f"the services disagree on {variable}"
    env = next(iter(envs.values()))
    nodes = nats_nodes(services)
    assert {urlparse(url).hostname for url in env["FLOWBUS_NATS_URL"].split(",")} == set(nodes)
    assert urlparse(env["FLOWBUS_DATABASE_URL"]).scheme == "postgresql+asyncpg"
    # A stream needs a node for each replica, and survives losing a node only with two or more.
    assert 1 < int(env["FLOWBUS_NATS__STREAM_REPLICAS"]) <= len(nodes)


def test_services_wait_for_nats_and_a_healthy_database(services: Services) -> None:
    database = database_service(services)
    assert "healthcheck" in services[database], "service_healthy needs a health check on the database"
    for name, service in flowbus_services(services).items():
        waits_for = dependencies(service)
        assert set(nats_nodes(services)) <= set(waits_for), f"{name} may start before the NATS nodes"
        assert waits_for.get(database) == "service_healthy", f"{name} may start before the database accepts it"


def test_the_database_accepts_the_services_url(services: Services) -> None:
    database = database_service(services)
    url = urlparse(env_of(next(iter(flowbus_services(services).values())))["FLOWBUS_DATABASE_URL"])
    env = env_of(services[database])
    assert url.path.lstrip("/") == env.get("POSTGRES_DB", env.get("POSTGRES_USER", "postgres"))
    assert url.username == env.get("POSTGRES_USER", "postgres")
    if url.password is None:
        assert env.get("POSTGRES_HOST_AUTH_METHOD") == "trust", "a URL without a password needs trust auth"
    else:
        assert url.password == env.get("POSTGRES_PASSWORD")


# ---- the rest of the stack ----------------------------------------------------------


def test_traces_go_through_the_collector_to_a_viewer(compose: dict[str, Any], services: Services) -> None:
    collectors = {
        urlparse(env_of(s)["OTEL_EXPORTER_OTLP_ENDPOINT"]).hostname for s in flowbus_services(services).values()
    }
    assert len(collectors) == 1, f"the services send traces to different places: {collectors}"
    collector_name = collectors.pop()
    assert collector_name in services, f"the services send traces to {collector_name}, which is no service"
    collector = services[collector_name]

    # The collector's pipeline receives OTLP and exports traces to another service.
    configs = compose.get("configs") or {}
    sources = [c["source"] if isinstance(c, dict) else c for c in collector.get("configs", [])]
    assert sources, "the collector has no configuration"
    config = yaml.safe_load(configs[sources[0]]["content"])
    pipeline = config["service"]["pipelines"]["traces"]
    assert "otlp" in pipeline["receivers"]
    endpoints = [config["exporters"][e].get("endpoint", "") for e in pipeline["exporters"]]
    viewers = {e.split(":")[0] for e in endpoints} & set(services)
    assert viewers, f"the collector exports traces to no service: {endpoints}"


def test_every_depends_on_target_exists(services: Services) -> None:
    for name, service in services.items():
        for target in dependencies(service):
            assert target in services, f"{name} depends on {target}, which is not defined"


def test_named_volumes_and_configs_are_declared(compose: dict[str, Any], services: Services) -> None:
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


def test_dockerfile_builds_what_the_project_builds() -> None:
    instructions = dockerfile_instructions()
    text = " ".join(f"{op} {args}" for op, args in instructions)
    # The Python the project requires.
    base = next(args for op, args in instructions if op == "FROM")
    python = re.fullmatch(r"python:(\d+)\.(\d+)\S*", base)
    assert python, f"the image is not built on an official Python image: {base}"
    required = re.fullmatch(r">=(\d+)\.(\d+)", PYPROJECT["project"]["requires-python"])
    assert required
    assert (int(python[1]), int(python[2])) >= (int(required[1]), int(required[2]))
    # The uv the Makefile pins, installing exactly the lockfile.
    makefile_uv = re.search(r"^UV_VERSION := (\S+)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert makefile_uv
    assert f"uv=={makefile_uv[1]}" in text, "the image installs another uv than the Makefile"
    assert "uv sync --frozen --no-dev" in text
    # Every top-level folder the wheel packages is copied into the image.
    for package in PYPROJECT["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]:
        folder = package.split("/")[0]
        assert any(op == "COPY" and args.split()[0] == folder for op, args in instructions), f"{folder} not copied"
