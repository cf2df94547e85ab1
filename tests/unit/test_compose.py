"""docker-compose.yml and the Dockerfile, checked statically (no Docker engine runs here).

Each check is a property the deployment breaks without: every service has
a container, the containers agree on one NATS cluster and one database,
their variables are settings flowbus reads, the cluster is one cluster, and
it is closed (review finding F10): NATS takes only credentials, over TLS,
its routes are mutual TLS, PostgreSQL takes a password, and every published
port listens on 127.0.0.1. No check pins an image version or spells out a
command: those may change. The TLS init script is run for real (openssl),
as the certificates it makes are what the NATS configuration names.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import ssl
import stat
import subprocess
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from pydantic import BaseModel

from flowbus.bus_auth import BusRole
from flowbus.settings import Settings
from flowbus_services.registry import SERVICE_MODULES

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# What the operator exports before `docker compose up` (the file requires it).
HOST_ENV = {"POSTGRES_PASSWORD": "0123abcd"}
LOOPBACK = {"127.0.0.1", "::1", "[::1]"}

Services = dict[str, dict[str, Any]]

_VARIABLE = re.compile(r"\$(?:\$|\{(?P<braced>[^}]*)\}|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))")


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's variable substitution: ``$$``, ``$VAR``, ``${VAR}``, ``${VAR:-default}``,
    ``${VAR:?error}``. Stricter than compose: an unset variable with no default is an
    error (compose would put an empty string, and warn), which catches a "$" meant for
    a container that lacks its "$$"."""

    def substitute(match: re.Match[str]) -> str:
        if match[0] == "$$":
            return "$"
        expression = match["braced"] if match["braced"] is not None else match["bare"]
        name, operator, argument = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)(:?[-?]|)(.*)", expression, re.S).groups()  # type: ignore[union-attr]
        value = env.get(name)
        if value is None or (value == "" and operator.startswith(":")):
            if operator.endswith("-"):
                return argument
            raise KeyError(f"{name}: {argument}" if operator.endswith("?") else f"{name} is not set")
        return value

    return _VARIABLE.sub(substitute, text)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document = yaml.safe_load(interpolate(COMPOSE.read_text(), HOST_ENV))
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


def mounts_of(service: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """The service's mounts: (source, read-only) by target."""
    found: dict[str, tuple[str, bool]] = {}
    for mount in service.get("volumes", []):
        if isinstance(mount, dict):
            found[str(mount["target"])] = (str(mount.get("source", "")), bool(mount.get("read_only")))
        else:
            source, target, *options = str(mount).split(":")
            found[target] = (source, "ro" in ",".join(options).split(","))
    return found


def volume_holding(service: dict[str, Any], path: str) -> tuple[str, PurePosixPath, bool]:
    """The named volume ``path`` lies in, ``path`` inside that volume, and whether the mount is read-only."""
    for target, (source, read_only) in sorted(mounts_of(service).items(), key=lambda m: -len(m[0])):
        inside = PurePosixPath(path)
        if inside == PurePosixPath(target) or PurePosixPath(target) in inside.parents:
            return source, inside.relative_to(target), read_only
    raise AssertionError(f"{path} is on no volume of the service")


def published_ports(service: dict[str, Any]) -> list[tuple[str | None, str, str]]:
    """(host address or None for all interfaces, host port, container port) of each published port."""
    found: list[tuple[str | None, str, str]] = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            found.append((port.get("host_ip"), str(port.get("published", "")), str(port["target"])))
            continue
        text = str(port)
        address = None
        if text.startswith("["):  # [::1]:4222:4222
            address, text = text[1 : text.index("]")], text[text.index("]") + 2 :]
        parts = text.split(":")
        if len(parts) == 3:
            address, parts = parts[0], parts[1:]
        host, container = (parts[0], parts[1]) if len(parts) == 2 else ("", parts[0])
        found.append((address, host, container.split("/")[0]))
    return found


def config_text(compose: dict[str, Any], service: dict[str, Any], target: str) -> str:
    """The content of the compose config the service mounts at ``target``."""
    for config in service.get("configs", []):
        if isinstance(config, dict) and config.get("target") == target:
            return str(compose["configs"][config["source"]]["content"])
    raise AssertionError(f"no config is mounted at {target}")


class NatsConfReader:
    """nats-server's configuration syntax, the parts docker-compose.yml uses: ``key: value``,
    ``key = value``, ``key { ... }``, ``[ ... ]``, quoted and bare values, comments and
    ``include`` (collected under the key "include")."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.at = 0

    def skip(self, newlines: bool = True) -> None:
        while self.at < len(self.text):
            char = self.text[self.at]
            if char == "#" or self.text.startswith("//", self.at):
                end = self.text.find("\n", self.at)
                self.at = end if end >= 0 else len(self.text)
            elif char in " \t\r" or (newlines and char in "\n,;"):
                self.at += 1
            else:
                return

    def value(self) -> Any:
        self.skip(newlines=False)
        char = self.text[self.at]
        if char == "{":
            self.at += 1
            return self.mapping("}")
        if char == "[":
            self.at += 1
            return self.array()
        if char == '"':
            end = self.text.index('"', self.at + 1)
            quoted, self.at = self.text[self.at + 1 : end], end + 1
            return quoted
        end = self.at
        while end < len(self.text) and self.text[end] not in "\n,]}#;":
            end += 1
        raw, self.at = self.text[self.at : end].strip(), end
        booleans: dict[str, Any] = {"true": True, "false": False}
        return int(raw) if raw.isdigit() else booleans.get(raw, raw)

    def array(self) -> list[Any]:
        items: list[Any] = []
        while True:
            self.skip()
            if self.text[self.at] == "]":
                self.at += 1
                return items
            items.append(self.value())

    def mapping(self, closing: str) -> dict[str, Any]:
        found: dict[str, Any] = {}
        while True:
            self.skip()
            if self.at >= len(self.text) or self.text[self.at] == closing:
                self.at += 1
                return found
            key = re.match(r"[A-Za-z0-9_$.-]+", self.text[self.at :])
            assert key, f"unexpected {self.text[self.at : self.at + 20]!r} in the NATS configuration"
            self.at += key.end()
            self.skip(newlines=False)
            if key[0] == "include":
                found.setdefault("include", []).append(self.value())
                continue
            self.at += self.text[self.at] in ":="
            found[key[0]] = self.value()


def parse_nats_conf(text: str) -> dict[str, Any]:
    return NatsConfReader(text).mapping("")


def resolve_nats_variables(config: Any, env: dict[str, str]) -> Any:
    """``$NAME`` values as nats-server reads them: from the environment (here: the node's)."""
    if isinstance(config, dict):
        return {k: resolve_nats_variables(v, env) for k, v in config.items()}
    if isinstance(config, list):
        return [resolve_nats_variables(v, env) for v in config]
    if isinstance(config, str) and config.startswith("$"):
        assert config[1:] in env, f"the NATS configuration reads ${config[1:]}, which the node does not set"
        return env[config[1:]]
    return config


def nats_config(compose: dict[str, Any], node: dict[str, Any]) -> tuple[PurePosixPath, dict[str, Any]]:
    """Where the node's configuration file is and what it says for that node."""
    flags = flags_of(command_of(node))
    path = flags.get("c") or flags.get("config")
    assert path, "the NATS node is started without a configuration file (-c)"
    parsed = parse_nats_conf(config_text(compose, node, path))
    return PurePosixPath(path), resolve_nats_variables(parsed, env_of(node))


def auth_init(services: Services) -> tuple[str, dict[str, Any]]:
    """The one-shot service that writes the NATS credentials (``flowbus auth init``)."""
    found = [(n, s) for n, s in services.items() if command_of(s)[1:3] == ["auth", "init"]]
    assert len(found) == 1, f"one service must run `flowbus auth init`: {[n for n, _ in found]}"
    return found[0]


def writer_of(services: Services, volume: str) -> str:
    """The one service that mounts ``volume`` writable (an init service)."""
    writers = [n for n, s in services.items() for source, ro in mounts_of(s).values() if source == volume and not ro]
    assert len(writers) == 1, f"{volume} is written by {writers}"
    return writers[0]


# ---- NATS -----------------------------------------------------------------------


def test_three_nats_nodes_form_one_cluster_with_jetstream(compose: dict[str, Any], services: Services) -> None:
    nats = nats_nodes(services)
    assert len(nats) == 3, sorted(nats)

    configs = {name: nats_config(compose, s)[1] for name, s in nats.items()}
    for name, config in configs.items():
        assert "jetstream" in config, f"{name} runs without JetStream"
        assert config.get("cluster", {}).get("listen"), f"{name} has no cluster listen address"
    assert len({c["cluster"]["name"] for c in configs.values()}) == 1, "the nodes name different clusters"
    server_names = [c.get("server_name") for c in configs.values()]
    assert all(server_names), "JetStream in a cluster needs a server name on each node"
    assert len(set(server_names)) == 3, server_names

    # The routes connect every node to the others (a route to itself a node ignores).
    linked: set[frozenset[str]] = set()
    for name, config in configs.items():
        for route in config["cluster"].get("routes", []):
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

    # JetStream keeps its data in a named volume of its own on each node, within a bound.
    declared = set((compose.get("volumes") or {}).keys())
    volumes_used: list[str] = []
    for name, s in nats.items():
        jetstream = configs[name]["jetstream"]
        assert jetstream.get("max_file_store"), f"{name}'s JetStream may fill the disk"
        volume, inside, read_only = volume_holding(s, jetstream["store_dir"])
        assert volume in declared, f"{name}: JetStream is not on a named volume"
        assert inside == PurePosixPath("."), f"{name}: JetStream is not at the root of its volume"
        assert not read_only
        volumes_used.append(volume)
    assert len(set(volumes_used)) == 3, volumes_used


def nats_size(value: int | str) -> int:
    """A size as nats-server reads it: ``8MB`` is 8 MiB, ``8M`` 8,000,000."""
    if isinstance(value, int):
        return value
    match = re.fullmatch(r"(\d+)\s*([kmgt]?)(i?b?)", value.strip().lower())
    assert match, f"not a size: {value}"
    power = "kmgt".index(match[2]) + 1 if match[2] else 0
    base = 1024 if match[3] else 1000
    return int(match[1]) * int(base**power)


def test_nats_nodes_hold_what_the_account_reserves(compose: dict[str, Any], services: Services) -> None:
    """The users' account reserves flowbus's limits (``auth init`` writes them); a server
    with less storage refuses to start JetStream. Commands up to the services' own limit
    must reach a service, which answers VALIDATION_ERROR for bigger ones."""
    limits = Settings().embedded_nats.limits()
    for name, node in nats_nodes(services).items():
        _, config = nats_config(compose, node)
        jetstream = config["jetstream"]
        assert nats_size(jetstream["max_file_store"]) >= limits.max_file_store, name
        assert nats_size(jetstream.get("max_memory_store", 0)) >= limits.max_memory_store, name
        assert nats_size(config.get("max_payload", 1024**2)) > Settings().nats.max_command_bytes, name


def test_nats_takes_only_the_credentials_auth_init_writes(compose: dict[str, Any], services: Services) -> None:
    init_name, init = auth_init(services)
    include = flags_of(command_of(init)).get("nats-include")
    assert include, f"{init_name} writes no nats-server include file (--nats-include)"
    auth_volume, include_inside, _ = volume_holding(init, include)
    for name, node in nats_nodes(services).items():
        path, config = nats_config(compose, node)
        # nats-server reads an include path relative to the including file's folder, even a leading "/".
        includes = [PurePosixPath(os.path.normpath(f"{path.parent}/{i}")) for i in config.get("include", [])]
        assert any(volume_holding(node, str(i))[:2] == (auth_volume, include_inside) for i in includes), (
            f"{name} does not include the users {init_name} writes ({includes})"
        )
        assert "no_auth_user" not in config, f"{name} lets clients without a credential in"
        assert "authorization" not in config, f"{name} has users outside the flowbus account"
        assert dependencies(node).get(init_name) == "service_completed_successfully", f"{name} may start first"


def test_nats_clients_and_routes_use_tls(compose: dict[str, Any], services: Services) -> None:
    for name, node in nats_nodes(services).items():
        _, config = nats_config(compose, node)
        client_tls = config.get("tls", {})
        assert client_tls.get("cert_file"), f"{name}'s clients connect without TLS"
        assert client_tls.get("key_file"), f"{name}'s clients connect without TLS"
        assert config.get("allow_non_tls") is not True
        # Routes: mutual TLS, the only way nats-server authenticates them (and encrypts).
        route_tls = config["cluster"].get("tls", {})
        for key in ("cert_file", "key_file", "ca_file"):
            assert route_tls.get(key), f"{name}'s routes have no TLS {key}"
        assert route_tls.get("verify") is True, f"{name} accepts routes without a certificate"


def test_the_nats_certificates_are_made_for_each_node(
    compose: dict[str, Any], services: Services, tmp_path: Path
) -> None:
    """Run the TLS init's script with openssl, as its container would, and check what
    it makes against what the nodes' configuration names."""
    if shutil.which("openssl") is None:
        pytest.skip("no openssl here")
    nats = nats_nodes(services)
    node_tls = {name: nats_config(compose, node)[1] for name, node in nats.items()}
    ca_path = next(iter(node_tls.values()))["cluster"]["tls"]["ca_file"]
    tls_volume, _, _ = volume_holding(next(iter(nats.values())), ca_path)
    init = services[writer_of(services, tls_volume)]
    for name, node in nats.items():
        assert dependencies(node).get(writer_of(services, tls_volume)) == "service_completed_successfully", name

    # The script as its container runs it, its volumes replaced by folders here.
    entrypoint = init.get("entrypoint")
    script_path = str(entrypoint[-1] if isinstance(entrypoint, list) else shlex.split(str(entrypoint))[-1])
    script = config_text(compose, init, script_path)
    folders: dict[str, Path] = {}
    for target, (source, read_only) in mounts_of(init).items():
        assert not read_only
        folders[source] = tmp_path / source
        folders[source].mkdir()
        script = re.sub(rf"(?<![\w/.]){re.escape(target)}(?![\w.-])", str(folders[source]), script)
    assert tls_volume in folders
    for _ in range(2):  # the second run keeps the first's certificates
        made = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=60, check=False)
        assert made.returncode == 0, made.stderr

    def here(path: str) -> Path:
        volume, inside, _ = volume_holding(next(iter(nats.values())), path)
        assert volume == tls_volume, f"{path} is not in the volume the TLS init writes"
        return folders[volume] / inside

    ca = here(ca_path)
    for name, config in node_tls.items():
        for tls in (config["tls"], config["cluster"]["tls"]):
            cert, key = here(tls["cert_file"]), here(tls["key_file"])
            assert stat.S_IMODE(key.stat().st_mode) & 0o077 == 0, f"{key.name} is readable by others"
            context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
            context.load_cert_chain(cert, key)  # the key is the certificate's
            certificate = x509.load_pem_x509_certificate(cert.read_bytes())
            names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            assert name in names.get_values_for_type(x509.DNSName), f"{cert.name} is not for {name}"
            usages = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
            # A route's dialling side presents it as a client certificate.
            assert {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH} <= set(usages)
            verified = subprocess.run(
                ["openssl", "verify", "-CAfile", str(ca), str(cert)], capture_output=True, text=True, check=False
            )
            assert verified.returncode == 0, verified.stderr
    # A host CLI connects to the published node by address.
    published = next(n for n, s in nats.items() if published_ports(s))
    published_cert = x509.load_pem_x509_certificate(here(node_tls[published]["tls"]["cert_file"]).read_bytes())
    sans = published_cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "127.0.0.1" in {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}
    # The CA's key is nowhere a node or a service can read it.
    assert not list(folders[tls_volume].glob("*ca*key*")), "the CA's key is in the volume the nodes mount"
    others = [n for n, s in services.items() if n != writer_of(services, tls_volume)]
    for volume in set(folders) - {tls_volume}:
        assert not [n for n in others if volume in {src for src, _ in mounts_of(services[n]).values()}]


def test_nats_monitoring_and_client_ports_are_not_public(services: Services) -> None:
    for name, node in nats_nodes(services).items():
        for address, _, container in published_ports(node):
            assert address in LOOPBACK, f"{name} publishes {container} on every interface"


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
    assert url.password == env.get("POSTGRES_PASSWORD") == HOST_ENV["POSTGRES_PASSWORD"]


def test_the_database_takes_a_password_the_operator_must_set(services: Services) -> None:
    database = database_service(services)
    env = env_of(services[database])
    assert "trust" not in env.get("POSTGRES_HOST_AUTH_METHOD", "")
    assert "trust" not in env.get("POSTGRES_INITDB_ARGS", "")
    # No default password: without one, compose refuses to start, naming the variable.
    with pytest.raises(KeyError, match="POSTGRES_PASSWORD"):
        interpolate(COMPOSE.read_text(), {})
    raw = yaml.safe_load(COMPOSE.read_text())["services"]
    required = re.compile(r"\$\{POSTGRES_PASSWORD:?\?[^}]*\}")
    assert required.fullmatch(env_of(raw[database])["POSTGRES_PASSWORD"]), "the database has a default password"
    for name in flowbus_containers(services):
        url = env_of(raw[name])["FLOWBUS_DATABASE_URL"]
        assert required.search(url), f"{name}'s database URL has a default password"


# ---- closed by default (review finding F10) --------------------------------------------


def test_every_published_port_listens_on_loopback_only(services: Services) -> None:
    for name, service in services.items():
        for address, host, container in published_ports(service):
            assert address in LOOPBACK, f"{name} publishes {container} on every interface"
            assert host, f"{name} publishes {container} on a random port"


def test_every_service_has_its_credential_and_the_ca(services: Services) -> None:
    init_name, init = auth_init(services)
    auth_dir = env_of(init)["FLOWBUS_AUTH_DIR"]
    auth_volume, at_root, _ = volume_holding(init, auth_dir)
    assert at_root == PurePosixPath(".")
    tls_ca = {env_of(s).get("FLOWBUS_NATS_TLS__CA_FILE") for s in flowbus_services(services).values()}
    assert len(tls_ca) == 1, f"the services disagree on the CA: {tls_ca}"
    assert None not in tls_ca, "the services do not know the CA of the NATS certificates"
    for name, target in flowbus_containers(services).items():
        service, env = services[name], env_of(services[name])
        credential = PurePosixPath(env.get("FLOWBUS_NATS_CREDS", ""))
        expected = BusRole.GATEWAY if target == "gateway" else BusRole.SERVICE
        assert credential.name == f"{expected.value}.json", f"{name} connects as {credential.name}, not {expected}"
        volume, inside, read_only = volume_holding(service, str(credential))
        assert volume == auth_volume, f"{name}: {credential} is not in the volume {init_name} writes"
        assert inside == PurePosixPath(credential.name), f"{name}: {credential} is not in the auth folder"
        assert read_only, f"{name} may change the credentials"
        ca_volume, _, ca_read_only = volume_holding(service, env["FLOWBUS_NATS_TLS__CA_FILE"])
        assert ca_volume != auth_volume
        assert ca_read_only
        assert dependencies(service).get(init_name) == "service_completed_successfully", f"{name} may start first"
        assert dependencies(service).get(writer_of(services, ca_volume)) == "service_completed_successfully"
        servers = env["FLOWBUS_NATS_URL"].split(",")
        assert all(urlparse(url).scheme == "tls" for url in servers), f"{name} connects without TLS: {servers}"


def test_the_auth_volume_is_writable_by_the_init(services: Services) -> None:
    """A named volume takes the owner of the image's folder it is mounted on: the image
    must make that folder its user's, or the init (not root) cannot write there."""
    _, init = auth_init(services)
    auth_dir = env_of(init)["FLOWBUS_AUTH_DIR"]
    instructions = dockerfile_instructions()
    user = [args for op, args in instructions if op == "USER"][-1]
    runs = " ".join(args for op, args in instructions if op == "RUN")
    assert re.search(rf"install -d -o {user} -g {user} -m 0?700 {re.escape(auth_dir)}(\s|$)", runs), runs


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
