"""API keys end to end: the gateway with auth on, over real HTTP, NATS and databases.

Who gets in (401 otherwise), what each role may do (FORBIDDEN otherwise,
nothing changed), revocation on the very next request (on a second gateway
instance too), last use, secrets that never show, the key commands' refusals,
and the CLI commands as a user runs them.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from nats.aio.client import Client as NatsClient
from sqlalchemy.ext.asyncio import create_async_engine

from flowbus import subjects
from flowbus.client import AsyncClient
from flowbus.db.engine import Database
from flowbus.db.migrate import upgrade_async
from flowbus.db.tables import ApiKey
from flowbus.schemas.api_keys import ApiKeyOut, Role
from flowbus.schemas.common import Conflict, NotFound, ValidationFailed
from flowbus.settings import Settings
from flowbus_services.gateway.keys import KeyStore
from flowbus_services.registry import build_service_app
from flowbus_services.up import free_port
from tests.helpers.bus import bus_env
from tests.helpers.commands import send
from tests.helpers.gateway import GraphQL
from tests.helpers.processes import FLOWBUS, run
from tests.helpers.waiting import eventually

HELLO = "{ hello }"
LIST_KEYS = "{ api_key { id name role created last_used } }"
CREATE_KEY = "mutation($name: String!, $role: String!) { create_api_key(input: {name: $name, role: $role}) { id key } }"
DELETE_KEY = "mutation($name: String!) { delete_api_key(input: {name: $name}) { success error } }"
# Mutations of each permission; the role check runs before validation, so whether a
# field exists in this schema yet does not change a FORBIDDEN answer.
CREATE_RUN = 'mutation { create_flow_run(input: {flow_id: "00000000-0000-0000-0000-000000000000"}) { id } }'
CREATE_PROJECT = 'mutation { create_project(input: {name: "p"}) { id } }'
RUN_MUTATION = (
    "mutation { set_flow_run_states(input: {states: ["
    '{flow_run_id: "00000000-0000-0000-0000-000000000000", version: 1, state: "{}"}]}) { states { id } } }'
)


@pytest.fixture
def settings(settings: Settings, database_url: str) -> Settings:
    """The shared test settings with the gateway's keys on (``database_url`` named so
    that pytest still parametrizes the overridden fixture by database)."""
    return settings.model_copy(update={"gateway": settings.gateway.model_copy(update={"auth": "on"})})


async def new_key(client: AsyncClient, name: str, role: Role) -> str:
    return (await client.create_api_key(name, role)).key


def codes(response: httpx.Response) -> list[str]:
    return [e["extensions"]["code"] for e in response.json().get("errors", [])]


async def forbidden(gql: GraphQL, query: str, key: str) -> bool:
    response = await gql.post(query, key=key)
    assert response.status_code != 401, response.text
    return codes(response) == ["FORBIDDEN"]


async def listed(client: AsyncClient, name: str) -> ApiKeyOut | None:
    return next((k for k in await client.list_api_keys() if k.name == name), None)


async def test_no_key_a_malformed_header_or_a_wrong_key_get_401(
    gql: GraphQL, client: AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    good = await new_key(client, "good", Role.ADMIN)
    wrong = "fbk_" + "A" * 43  # the right shape, but no such key
    headers: list[dict[str, str]] = [
        {},
        {"Authorization": ""},
        {"Authorization": "Bearer"},
        {"Authorization": f"Basic {good}"},
        {"Authorization": good},
        {"Authorization": f"Bearer {good}x"},
        {"Authorization": f"Bearer {good[:-1]}"},
        {"Authorization": "Bearer not-a-flowbus-key"},
        {"Authorization": f"Bearer {wrong}"},
    ]
    with caplog.at_level(logging.WARNING, logger="flowbus_services.gateway.keys"):
        for header in headers:
            response = await gql.http.post(gql.url, json={"query": HELLO}, headers=header)
            assert response.status_code == 401, (header, response.text)
            assert codes(response) == ["UNAUTHENTICATED"], header
            assert "data" not in response.json()
    # Refusals are logged, never with the key.
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert refusals
    assert not any(good in line or good[4:20] in line or wrong in line for line in caplog.messages)
    # The same request with the key is served; health needs no key.
    assert (await gql.data(HELLO, key=good)) == {"hello": "👋"}
    base = gql.url.removesuffix("/graphql")
    assert (await gql.http.get(f"{base}/healthz")).status_code == 200
    assert (await gql.http.get(f"{base}/readyz")).status_code == 200


async def test_what_each_role_may_do(gql: GraphQL, client: AsyncClient) -> None:
    keys = {role: await new_key(client, f"key-{role.value}", role) for role in Role}

    read_only = keys[Role.READ_ONLY]
    assert (await gql.data(HELLO, key=read_only)) == {"hello": "👋"}
    for mutation in (CREATE_RUN, CREATE_PROJECT, RUN_MUTATION, CREATE_KEY, DELETE_KEY):
        assert await forbidden(gql, mutation, read_only), mutation
    assert await forbidden(gql, LIST_KEYS, read_only)

    runner = keys[Role.RUNNER]
    assert (await gql.data(HELLO, key=runner)) == {"hello": "👋"}
    assert not await forbidden(gql, RUN_MUTATION, runner)
    for query in (CREATE_PROJECT, CREATE_RUN, CREATE_KEY, DELETE_KEY, LIST_KEYS):
        assert await forbidden(gql, query, runner), query

    user = keys[Role.USER]
    assert not await forbidden(gql, CREATE_PROJECT, user)
    assert not await forbidden(gql, RUN_MUTATION, user)
    for query in (CREATE_KEY, DELETE_KEY, LIST_KEYS):
        assert await forbidden(gql, query, user), query

    # A refused request changed nothing: no key named "sneaky", and none deleted.
    response = await gql.post(
        'mutation { create_api_key(input: {name: "sneaky", role: "admin"}) { key } }', key=keys[Role.USER]
    )
    assert codes(response) == ["FORBIDDEN"]
    response = await gql.post('mutation { delete_api_key(input: {name: "key-admin"}) { success } }', key=runner)
    assert codes(response) == ["FORBIDDEN"]
    assert sorted(k.name for k in await client.list_api_keys()) == sorted(f"key-{r.value}" for r in Role)

    admin = keys[Role.ADMIN]
    created = (await gql.data(CREATE_KEY, {"name": "made-by-admin", "role": "runner"}, key=admin))["create_api_key"]
    assert created["key"].startswith("fbk_")
    assert (await gql.data(HELLO, key=created["key"])) == {"hello": "👋"}
    assert await forbidden(gql, CREATE_PROJECT, created["key"])  # it has the role it was given
    rows = (await gql.data(LIST_KEYS, key=admin))["api_key"]
    assert {r["name"]: r["role"] for r in rows} == {
        **{f"key-{r.value}": r.value for r in Role},
        "made-by-admin": "runner",
    }
    assert next(r for r in rows if r["name"] == "made-by-admin")["id"] == created["id"]
    assert (await gql.data(DELETE_KEY, {"name": "made-by-admin"}, key=admin)) == {
        "delete_api_key": {"success": True, "error": None}
    }
    assert (await gql.post(HELLO, key=created["key"])).status_code == 401


async def test_refusals_of_the_key_mutations_carry_stable_codes(gql: GraphQL, client: AsyncClient) -> None:
    admin = await new_key(client, "admin", Role.ADMIN)
    assert await gql.error_codes(CREATE_KEY, {"name": "admin", "role": "user"}, key=admin) == ["CONFLICT"]
    assert await gql.error_codes(CREATE_KEY, {"name": "x", "role": "root"}, key=admin) == ["VALIDATION_ERROR"]
    assert await gql.error_codes(CREATE_KEY, {"name": "has space", "role": "user"}, key=admin) == ["VALIDATION_ERROR"]
    assert await gql.error_codes(DELETE_KEY, {"name": "nobody"}, key=admin) == ["NOT_FOUND"]
    assert [k.name for k in await client.list_api_keys()] == ["admin"]


async def test_a_revoked_key_is_refused_on_its_very_next_request(
    gql: GraphQL, client: AsyncClient, stack: Settings
) -> None:
    # A second gateway instance on the same NATS and database: revocation must reach it too.
    other_settings = stack.model_copy(update={"gateway": stack.gateway.model_copy(update={"port": free_port()})})
    async with build_service_app("gateway", other_settings):
        other = GraphQL(f"http://127.0.0.1:{other_settings.gateway.port}/graphql", gql.http)
        for how in ("nats", "graphql"):
            admin = await new_key(client, f"admin-{how}", Role.ADMIN)
            doomed = await new_key(client, f"doomed-{how}", Role.USER)
            for _ in range(3):  # verified (and remembered) by both instances
                assert (await gql.data(HELLO, key=doomed)) == {"hello": "👋"}
                assert (await other.data(HELLO, key=doomed)) == {"hello": "👋"}
            if how == "nats":
                await client.delete_api_key(f"doomed-{how}")
            else:
                await gql.data(DELETE_KEY, {"name": f"doomed-{how}"}, key=admin)
            for endpoint in (gql, other):
                response = await endpoint.post(HELLO, key=doomed)
                assert response.status_code == 401, (how, endpoint.url, response.text)
                assert codes(response) == ["UNAUTHENTICATED"]
            assert (await other.data(HELLO, key=admin)) == {"hello": "👋"}


async def test_last_used_is_recorded_at_most_once_a_minute(gql: GraphQL, client: AsyncClient) -> None:
    key = await new_key(client, "used", Role.READ_ONLY)
    await new_key(client, "unused", Role.READ_ONLY)
    fresh = await listed(client, "used")
    assert fresh is not None
    assert fresh.last_used is None
    await gql.data(HELLO, key=key)

    async def last_used() -> ApiKeyOut | None:
        return await listed(client, "used")

    first = await eventually(last_used, "last_used recorded", until=lambda k: k is not None and k.last_used)
    assert first is not None
    assert first.last_used is not None
    assert first.created <= first.last_used
    for _ in range(5):
        await gql.data(HELLO, key=key)
    again = await listed(client, "used")
    assert again is not None
    assert again.last_used == first.last_used  # not rewritten within the minute
    untouched = await listed(client, "unused")
    assert untouched is not None
    assert untouched.last_used is None


async def test_only_the_hash_is_stored_and_no_listing_shows_a_secret(
    gql: GraphQL, client: AsyncClient, nc: NatsClient, stack: Settings
) -> None:
    created = await client.create_api_key("ci", "runner")
    admin = await new_key(client, "root", Role.ADMIN)
    assert created.key.startswith("fbk_")
    assert len(created.key) == 47
    digest = hashlib.sha256(created.key.encode()).hexdigest()

    engine = create_async_engine(stack.resolved_database_url())
    try:
        async with engine.connect() as conn:
            rows = (await conn.execute(sa.text("SELECT * FROM api_key"))).mappings().all()
    finally:
        await engine.dispose()
    stored = next(r for r in rows if r["name"] == "ci")
    assert stored["key_hash"] == digest
    assert not any(created.key in str(value) or created.key[4:] in str(value) for r in rows for value in r.values())

    secrets = (created.key, created.key[4:], digest)
    texts = [
        "".join(k.model_dump_json() for k in await client.list_api_keys()),
        str(await send(nc, subjects.GatewayCommands.LIST_API_KEYS, {})),
        (await gql.post(LIST_KEYS, key=admin)).text,
    ]
    for text in texts:
        assert "ci" in text
        assert not any(secret in text for secret in secrets), text
    # The schema has no field that could show one.
    response = await gql.post("{ api_key { key } }", key=admin)
    assert response.status_code == 400
    response = await gql.post("{ api_key { key_hash } }", key=admin)
    assert response.status_code == 400


async def test_the_key_commands_refuse_bad_input_with_stable_codes(client: AsyncClient, nc: NatsClient) -> None:
    await client.create_api_key("taken", Role.USER)
    with pytest.raises(Conflict):
        await client.create_api_key("taken", Role.ADMIN)
    with pytest.raises(NotFound):
        await client.delete_api_key("nobody")
    with pytest.raises(ValidationFailed):
        await client.create_api_key("bad", "superuser")
    # What the service itself says to a client that does not validate first.
    cases: list[tuple[str, dict[str, Any], str]] = [
        (subjects.GatewayCommands.CREATE_API_KEY, {"name": "x", "role": "superuser"}, "VALIDATION_ERROR"),
        (subjects.GatewayCommands.CREATE_API_KEY, {"name": "", "role": "user"}, "VALIDATION_ERROR"),
        (subjects.GatewayCommands.CREATE_API_KEY, {"name": "-rf", "role": "user"}, "VALIDATION_ERROR"),
        (subjects.GatewayCommands.CREATE_API_KEY, {"name": "a b", "role": "user"}, "VALIDATION_ERROR"),
        (subjects.GatewayCommands.CREATE_API_KEY, {"name": "x" * 101, "role": "user"}, "VALIDATION_ERROR"),
        (subjects.GatewayCommands.CREATE_API_KEY, {"name": "x", "role": "user", "key": "mine"}, "VALIDATION_ERROR"),
        (subjects.GatewayCommands.CREATE_API_KEY, {"name": "taken", "role": "user"}, "CONFLICT"),
        (subjects.GatewayCommands.DELETE_API_KEY, {"name": "nobody"}, "NOT_FOUND"),
        (subjects.GatewayCommands.DELETE_API_KEY, {}, "VALIDATION_ERROR"),
    ]
    for subject, body, code in cases:
        reply = await send(nc, subject, body)
        assert reply["ok"] is False, (body, reply)
        assert reply["error"]["code"] == code, (body, reply)
    assert [(k.name, k.role) for k in await client.list_api_keys()] == [("taken", Role.USER)]


async def test_events_of_created_and_deleted_keys_never_carry_the_key(client: AsyncClient, nc: NatsClient) -> None:
    seen: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()

    async def on_event(msg: Any) -> None:
        await seen.put((msg.subject, msg.data))

    sub = await nc.subscribe(subjects.API_KEY_EVENTS, cb=on_event)
    try:
        created = await client.create_api_key("evented", Role.RUNNER)
        await client.delete_api_key("evented")
        events = [await asyncio.wait_for(seen.get(), 10) for _ in range(2)]
    finally:
        await sub.unsubscribe()
    assert [subject for subject, _ in events] == [
        subjects.api_key_event(created.id, "created"),
        subjects.api_key_event(created.id, "deleted"),
    ]
    assert not any(created.key.encode() in data or created.key[4:].encode() in data for _, data in events)


async def cli(stack: Settings, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``flowbus ARGS`` in a process of its own, pointed at the test's NATS server
    (in a thread: the services answering it run on this event loop)."""
    env = bus_env(str(stack.nats_url))
    return await asyncio.to_thread(run, [FLOWBUS, *args], tmp_path / "cli-home", tmp_path, 120, env)


async def test_the_key_commands_of_the_cli(gql: GraphQL, stack: Settings, tmp_path: Path) -> None:
    created = await cli(stack, tmp_path, "create", "api-key", "deploy-bot", "--role", "runner")
    assert created.returncode == 0, created.stdout + created.stderr
    key = created.stdout.strip()
    assert key.startswith("fbk_")
    assert "\n" not in key
    assert "shown only once" in created.stderr
    assert (await gql.data(HELLO, key=key)) == {"hello": "👋"}

    listing = await cli(stack, tmp_path, "get", "api-keys")
    assert listing.returncode == 0, listing.stderr
    header, row = listing.stdout.splitlines()
    assert header.split() == ["NAME", "ROLE", "CREATED", "LAST", "USED"]
    assert row.split()[:2] == ["deploy-bot", "runner"]
    assert key not in listing.stdout
    assert key[4:] not in listing.stdout
    assert hashlib.sha256(key.encode()).hexdigest() not in listing.stdout

    again = await cli(stack, tmp_path, "create", "api-key", "deploy-bot", "--role", "admin")
    assert again.returncode == 1
    assert "CONFLICT" in again.stderr
    assert "fbk_" not in again.stdout
    bad_role = await cli(stack, tmp_path, "create", "api-key", "x", "--role", "root")
    assert bad_role.returncode == 2
    assert "root" in bad_role.stderr

    deleted = await cli(stack, tmp_path, "delete", "api-key", "deploy-bot")
    assert deleted.returncode == 0, deleted.stderr
    assert "deploy-bot" in deleted.stdout
    assert (await gql.post(HELLO, key=key)).status_code == 401
    gone = await cli(stack, tmp_path, "delete", "api-key", "deploy-bot")
    assert gone.returncode == 1
    assert "NOT_FOUND" in gone.stderr
    empty = await cli(stack, tmp_path, "get", "api-keys")
    assert empty.stdout.strip() == "No API keys."


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLOWBUS_API_KEY", raising=False)
    monkeypatch.delenv("FLOWBUS_HOME", raising=False)


@pytest.mark.usefixtures("clean_env")
def test_settings_find_the_key_in_the_environment_else_in_the_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(home=tmp_path)
    assert settings.gateway_api_key() is None
    settings.api_key_file.write_text("fbk_from_file\n")
    assert settings.gateway_api_key() == "fbk_from_file"
    monkeypatch.setenv("FLOWBUS_API_KEY", "fbk_from_env")
    from_env = Settings(home=tmp_path)
    assert from_env.gateway_api_key() == "fbk_from_env"
    assert "fbk_from_env" not in repr(from_env)


class FakeNats:
    """What the key store sees of its NATS connection: connected or not, reconnections, a subscription."""

    def __init__(self) -> None:
        self.is_connected = True
        self.stats = {"reconnects": 0}

    async def subscribe(self, subject: str, cb: Any) -> Any:
        class Subscription:
            async def unsubscribe(self) -> None:
                return None

        return Subscription()


async def test_the_cache_is_trusted_only_while_no_deletion_event_can_be_missed(database_url: str) -> None:
    await upgrade_async(database_url)
    db = Database(database_url)
    store = KeyStore(db)
    nats = FakeNats()
    await store.listen(nats)  # type: ignore[arg-type]
    key = "fbk_" + "k" * 43

    async def add() -> None:
        row = {"id": "k1", "name": "k", "role": "runner", "key_hash": hashlib.sha256(key.encode()).hexdigest()}
        async with db.write_connection() as conn:
            await conn.execute(sa.insert(ApiKey.__table__), row | {"created": datetime.now(UTC)})  # type: ignore[attr-defined]

    try:
        await add()
        principal = await store.verify(key)
        assert principal is not None
        assert (principal.name, principal.role, principal.key_id) == ("k", Role.RUNNER, "k1")
        # Deleted behind the store's back (no event): the cache still answers...
        async with db.write_connection() as conn:
            await conn.execute(sa.delete(ApiKey.__table__))  # type: ignore[attr-defined]
        assert await store.verify(key) == principal
        # ...until the connection that would carry the event is down, or came back.
        nats.is_connected = False
        assert await store.verify(key) is None
        nats.is_connected = True
        await add()
        assert await store.verify(key) == principal
        async with db.write_connection() as conn:
            await conn.execute(sa.delete(ApiKey.__table__))  # type: ignore[attr-defined]
        nats.stats["reconnects"] += 1
        assert await store.verify(key) is None
        # What the deletion event does: the key is gone from the cache at once.
        await add()
        assert await store.verify(key) == principal
        async with db.write_connection() as conn:
            await conn.execute(sa.delete(ApiKey.__table__))  # type: ignore[attr-defined]
        assert await store.verify(key) == principal
        store.forget("k1")
        assert await store.verify(key) is None
    finally:
        await store.close()
        await db.dispose()


async def test_viewer_tells_each_key_its_name_role_and_permissions(gql: GraphQL, client: AsyncClient) -> None:
    expected = {
        Role.ADMIN: ["read", "run", "write", "admin"],
        Role.USER: ["read", "run", "write"],
        Role.RUNNER: ["read", "run"],
        Role.READ_ONLY: ["read"],
    }
    for role, permissions in expected.items():
        key = await new_key(client, f"who-{role.value}", role)
        answer = await gql.data("{ viewer { name role permissions } api { agent_online_seconds } }", key=key)
        assert answer["viewer"] == {"name": f"who-{role.value}", "role": role.value, "permissions": permissions}
        assert answer["api"]["agent_online_seconds"] > 0
    response = await gql.http.post(gql.url, json={"query": "{ viewer { name } }"})
    assert response.status_code == 401
    assert codes(response) == ["UNAUTHENTICATED"]
