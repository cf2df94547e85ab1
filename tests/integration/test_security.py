"""The bus refuses what a role may not do: each attack of the security review, performed and refused.

Against a real nats-server configured as ``flowbus up`` configures it (the
session's credentials, one per role; tests/conftest.py). A refused publish or
subscription is seen as the server's "Permissions Violation" error on the
attacker's connection, and its effect is checked to be absent.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client
from nats.errors import Error as NatsError

from flowbus import subjects
from flowbus.agent.local import LocalAgent
from flowbus.bus_auth import BusRole, matches, permissions
from flowbus.client import AsyncClient
from flowbus.schemas.common import Forbidden
from flowbus.schemas.runs import StateChanged
from flowbus.settings import Settings
from flowbus.states import StateType
from tests.helpers.agents import running_agents
from tests.helpers.builders import register, unique
from tests.helpers.bus import credential
from tests.helpers.runs import watch_until_finished
from tests.helpers.scripts import register_script, write_script
from tests.helpers.waiting import eventually

NOT_SERVICE = [role for role in BusRole if role is not BusRole.SERVICE]


class Attacker:
    """A raw connection with one role's credential, recording the server's refusals."""

    def __init__(self, role: BusRole) -> None:
        self.role = role
        self.errors: asyncio.Queue[str] = asyncio.Queue()
        self.nc: Client | None = None

    async def connect(self, url: str) -> Attacker:
        async def on_error(exc: Exception) -> None:
            await self.errors.put(str(exc))

        self.nc = await nats.connect(url, error_cb=on_error, **credential(self.role).connect_options())
        return self

    async def refused(self, kind: str, subject: str) -> None:
        """Wait for the server's violation of ``kind`` ("Publish" or "Subscription") naming ``subject``."""
        needle = f'permissions violation for {kind} to "{subject}"'.lower()
        while True:
            message = await asyncio.wait_for(self.errors.get(), timeout=10)
            if needle in message.lower():
                return

    async def publish_refused(self, subject: str, body: bytes = b"{}") -> None:
        assert self.nc is not None
        await self.nc.publish(subject, body, reply=self.nc.new_inbox())
        await self.refused("Publish", subject)

    async def subscribe_refused(self, subject: str) -> None:
        assert self.nc is not None
        await self.nc.subscribe(subject)
        await self.refused("Subscription", subject)


@pytest.fixture
async def attackers(nats_url: str) -> AsyncIterator[Callable[[BusRole], Awaitable[Attacker]]]:
    made: list[Attacker] = []

    async def make(role: BusRole) -> Attacker:
        attacker = await Attacker(role).connect(nats_url)
        made.append(attacker)
        return attacker

    yield make
    for attacker in made:
        if attacker.nc is not None and not attacker.nc.is_closed:
            await attacker.nc.close()


@pytest.fixture
def database_url(tmp_path: Any) -> str:
    """SQLite only: what is tested is the bus, not the database."""
    return f"sqlite+aiosqlite:///{tmp_path / 'flowbus.db'}"


async def test_an_anonymous_connection_is_refused(nats_url: str) -> None:
    async def quiet(exc: Exception) -> None:
        pass

    with pytest.raises(NatsError, match="Authorization Violation"):
        await nats.connect(nats_url, allow_reconnect=False, max_reconnect_attempts=0, error_cb=quiet)


async def test_a_seed_of_another_server_is_refused(nats_url: str, tmp_path: Any) -> None:
    from flowbus.bus_auth import new_credential

    async def quiet(exc: Exception) -> None:
        pass

    stranger = new_credential("service", BusRole.SERVICE)
    with pytest.raises(NatsError, match="Authorization Violation"):
        await nats.connect(nats_url, allow_reconnect=False, error_cb=quiet, **stranger.connect_options())


async def test_a_refused_credential_is_reported_at_once(nats_url: str, tmp_path: Path) -> None:
    """Not retried for ever: the error names the credential and the refusal."""
    from flowbus.bus_auth import new_credential, write_private
    from flowbus.runtime.nats import NatsUnavailable, connect

    path = tmp_path / "stale.json"
    write_private(path, new_credential("stale", BusRole.AGENT).dumps())
    with pytest.raises(NatsUnavailable, match="refused the 'agent' credential 'stale'"):
        await asyncio.wait_for(connect(Settings(nats_url=nats_url, nats_creds=path), "t", BusRole.AGENT), 30)


@pytest.mark.parametrize(
    "subject",
    [
        subjects.RegistrationCommands.REGISTER_FLOW,
        subjects.RegistrationCommands.DELETE_PROJECT,
        subjects.RegistrationCommands.CREATE_PROJECT,
        subjects.RegistrationCommands.SET_FLOW_SETTINGS,
        subjects.RunCreationCommands.CREATE_FLOW_RUNS,
        subjects.StateCommands.DELETE_FLOW_RUN,
        subjects.GatewayCommands.CREATE_API_KEY,
    ],
)
async def test_an_agent_cannot_send_what_is_not_its_work(
    stack: Settings, attackers: Callable[[BusRole], Awaitable[Attacker]], subject: str
) -> None:
    agent = await attackers(BusRole.AGENT)
    await agent.publish_refused(subject)
    # Through the client, the refusal is immediate and clear (no wait for a reply that cannot come).
    async with AsyncClient(stack, role=BusRole.AGENT) as client:
        with pytest.raises(Forbidden, match="agent"):
            await client.create_project(unique("nope"))


async def test_a_refused_register_flow_changes_nothing(
    stack: Settings, client: AsyncClient, attackers: Callable[[BusRole], Awaitable[Attacker]]
) -> None:
    """The review's first attack: an anonymous new version of a user's flow pointing at another script."""
    project = unique("sec")
    flow = await register(client, project, "hello")
    agent = await attackers(BusRole.AGENT)
    evil = {"project": project, "flow": {"name": "hello", "storage": {"type": "script", "path": "/tmp/evil.py"}}}
    await agent.publish_refused(subjects.RegistrationCommands.REGISTER_FLOW, json.dumps(evil).encode())
    flows = await client.get_flows(project_name=project)
    assert [(f.id, f.storage.path) for f in flows] == [(flow.id, flow.storage.path)]


@pytest.mark.parametrize("role", NOT_SERVICE)
async def test_only_services_serve_commands(
    stack: Settings, client: AsyncClient, attackers: Callable[[BusRole], Awaitable[Attacker]], role: BusRole
) -> None:
    """F3: nobody but a service can answer get_flow_run (and swap the script an agent runs)."""
    attacker = await attackers(role)
    await attacker.subscribe_refused(subjects.StateCommands.GET_FLOW_RUN)
    await attacker.subscribe_refused("flowbus.cmd.>")
    await attacker.subscribe_refused(">")
    projects = await client.get_projects()  # the real services still answer
    assert isinstance(projects, list)


FORGED = [
    subjects.flow_run_event("run-1", subjects.FlowRunFact.STATE),
    subjects.flow_event("flow-1", "archived"),
    subjects.run_queue(["vm"]),
    subjects.SCHEDULER_WAKE,
]


@pytest.mark.parametrize("role", NOT_SERVICE)
async def test_no_role_but_service_publishes_events_or_run_queue_messages(
    nats_url: str, nc: Client, attackers: Callable[[BusRole], Awaitable[Attacker]], role: BusRole
) -> None:
    """F4: forged Cancelling, archived and RunQueued messages never reach anyone."""
    heard: list[str] = []

    async def listen(msg: Any) -> None:
        heard.append(msg.subject)

    sub = await nc.subscribe("flowbus.>", cb=listen)
    attacker = await attackers(role)
    for subject in FORGED:
        await attacker.publish_refused(subject)
    # A message the service role sends after the forgeries arrives; none of theirs did.
    await nc.publish("flowbus.hint.test.sentinel", b"")
    await nc.flush()
    while "flowbus.hint.test.sentinel" not in heard:
        await asyncio.sleep(0.01)
    await sub.unsubscribe()
    assert not set(heard) & set(FORGED)


JS_ADMIN = [
    f"$JS.API.STREAM.DELETE.{subjects.LOGS_STREAM}",
    f"$JS.API.STREAM.PURGE.{subjects.LOGS_STREAM}",
    f"$JS.API.STREAM.UPDATE.{subjects.EVENTS_STREAM}",  # sealing is an update
    "$JS.API.STREAM.CREATE.ATTACKER",
    f"$JS.API.CONSUMER.DELETE.{subjects.LOGS_STREAM}.{subjects.LOGS_DURABLE}",
    f"$JS.API.STREAM.MSG.DELETE.{subjects.EVENTS_STREAM}",
]


@pytest.mark.parametrize("role", NOT_SERVICE)
async def test_no_role_but_service_administers_jetstream(
    stack: Settings, nc: Client, attackers: Callable[[BusRole], Awaitable[Attacker]], role: BusRole
) -> None:
    """F5: purge, delete, seal and consumer deletion are refused; the streams are intact."""
    attacker = await attackers(role)
    for subject in JS_ADMIN:
        if role is BusRole.GATEWAY and subject.startswith("$JS.API.CONSUMER.DELETE."):
            continue  # its feeds delete their consumers (docs/security.md); the durables recreate themselves
        await attacker.publish_refused(subject, json.dumps({"config": {"sealed": True}}).encode())
    js = nc.jetstream()
    info = await js.stream_info(subjects.EVENTS_STREAM)
    assert not info.config.sealed
    await js.consumer_info(subjects.LOGS_STREAM, subjects.LOGS_DURABLE)
    await js.stream_info(subjects.LOGS_STREAM)


@pytest.mark.parametrize("role", NOT_SERVICE)
async def test_no_role_reads_another_roles_inbox(
    nats_url: str, attackers: Callable[[BusRole], Awaitable[Attacker]], role: BusRole
) -> None:
    """Replies (which carry run details) go to the requester's own inbox prefix only."""
    attacker = await attackers(role)
    await attacker.subscribe_refused("_INBOX.>")
    other = BusRole.SERVICE if role is not BusRole.SERVICE else BusRole.AGENT
    await attacker.subscribe_refused(f"_INBOX_{other.value}.>")
    await attacker.subscribe_refused("*.>")


@pytest.mark.parametrize(
    "subject",
    [
        subjects.RegistrationCommands.CREATE_PROJECT,
        subjects.RunCreationCommands.CREATE_FLOW_RUN,
        subjects.StateCommands.SET_FLOW_RUN_STATE,
        subjects.logs("run-1"),
        subjects.flow_run_heartbeat("run-1"),
    ],
)
async def test_read_only_cannot_write(attackers: Callable[[BusRole], Awaitable[Attacker]], subject: str) -> None:
    reader = await attackers(BusRole.READ_ONLY)
    await reader.publish_refused(subject)


async def test_a_user_cannot_delete_a_project_but_an_admin_can(stack: Settings, client: AsyncClient) -> None:
    name = unique("keep")
    await client.create_project(name)
    async with AsyncClient(stack, role=BusRole.USER) as user:
        with pytest.raises(Forbidden):
            await user.delete_project(name)
        assert await user.get_project(name)
    await client.delete_project(name)  # the test client is the admin


async def test_a_watcher_creates_only_consumers_filtered_to_a_run(
    stack: Settings, client: AsyncClient, attackers: Callable[[BusRole], Awaitable[Attacker]]
) -> None:
    reader = await attackers(BusRole.READ_ONLY)
    # The whole stream, in both of JetStream's forms: refused.
    await reader.publish_refused(f"$JS.API.CONSUMER.CREATE.{subjects.EVENTS_STREAM}")
    await reader.publish_refused(f"$JS.API.CONSUMER.CREATE.{subjects.EVENTS_STREAM}.x.flowbus.evt.>")
    # A run's subject in the name, the whole stream in the body: the server refuses the body.
    assert reader.nc is not None
    narrow = f"$JS.API.CONSUMER.CREATE.{subjects.EVENTS_STREAM}.w1.flowbus.evt.flow_run.r1.>"
    body = {"stream_name": subjects.EVENTS_STREAM, "config": {"name": "w1", "filter_subject": "flowbus.evt.>"}}
    answer = json.loads((await reader.nc.request(narrow, json.dumps(body).encode(), timeout=5)).data)
    assert answer["error"]["err_code"] == 10131
    # What the CLI does for `flowbus watch` works with the read-only credential.
    project = unique("watch")
    flow = await register(client, project, "watched")
    run_id = await client.create_flow_run(flow.id)
    async with AsyncClient(stack, role=BusRole.READ_ONLY) as viewer:
        history = await viewer.get_flow_run_history(run_id)
        assert history
        with pytest.raises(Forbidden):
            await viewer.create_flow_run(flow.id)


def test_each_roles_permissions_are_what_docs_security_md_says() -> None:
    """A table test of the permission model itself (the server tests above exercise it)."""

    def may(role: BusRole, subject: str) -> bool:
        return permissions(role, role.value).may_publish(subject)

    for role in NOT_SERVICE:
        assert not may(role, "flowbus.evt.flow_run.x.state")
        assert not may(role, "flowbus.runq.abc")
        assert not may(role, f"$JS.API.STREAM.DELETE.{subjects.EVENTS_STREAM}")
    assert may(BusRole.AGENT, subjects.StateCommands.SET_FLOW_RUN_STATE)
    assert may(BusRole.AGENT, subjects.RunCreationCommands.CREATE_FLOW_RUN)  # child flow runs
    assert not may(BusRole.AGENT, subjects.RegistrationCommands.REGISTER_FLOW)
    assert may(BusRole.USER, subjects.RegistrationCommands.REGISTER_FLOW)
    assert not may(BusRole.USER, subjects.RegistrationCommands.DELETE_PROJECT)
    assert may(BusRole.ADMIN, subjects.RegistrationCommands.DELETE_PROJECT)
    assert may(BusRole.GATEWAY, subjects.GatewayCommands.CREATE_API_KEY)
    assert not may(BusRole.READ_ONLY, subjects.StateCommands.SET_FLOW_RUN_STATE)
    assert may(BusRole.READ_ONLY, subjects.StateCommands.GET_FLOW_RUN)
    assert matches("a.*.c", "a.b.c")
    assert not matches("a.*", "a.b.c")
    assert matches("a.>", "a.b.c")
    assert not matches("a.>", "a")


GATED = """
import time
from pathlib import Path
import flowbus
from flowbus import Flow, task

@task
def wait_for_release():
    flowbus.context.get("logger").info("waiting")
    while not Path({release!r}).exists():
        time.sleep(0.02)

with Flow({name!r}) as flow:
    wait_for_release()
"""


async def test_a_running_flow_survives_a_forged_cancel_from_an_agent_credential(
    stack: Settings, client: AsyncClient, attackers: Callable[[BusRole], Awaitable[Attacker]], tmp_path: Path
) -> None:
    """The review's forged `StateChanged{Cancelling}`: it once made the agent kill a Running flow."""
    name, label, release = unique("survivor"), unique("sec"), tmp_path / "release"
    script = write_script(tmp_path / "survivor.py", GATED.format(release=str(release), name=name))
    flow_id = await register_script(client, script, name, unique("sec"), labels=[label])
    async with running_agents(LocalAgent(stack, labels=[label], hostname_label=False)):
        run_id = await client.create_flow_run(flow_id, labels=[label])
        await eventually(
            lambda: client.get_flow_run(run_id),
            "the run is running",
            until=lambda d: d.run.state.type is StateType.RUNNING,
        )
        detail = await client.get_flow_run(run_id)
        forged = StateChanged(
            flow_run_id=run_id,
            version=detail.run.version + 1,
            state=detail.run.state.model_copy(update={"type": StateType.CANCELLING}),
        )
        agent = await attackers(BusRole.AGENT)
        await agent.publish_refused(
            subjects.flow_run_event(run_id, subjects.FlowRunFact.STATE), forged.model_dump_json().encode()
        )
        release.touch()
        finished = await watch_until_finished(client, run_id)
    assert finished.types[-1] is StateType.SUCCESS
    assert StateType.CANCELLING not in finished.types
