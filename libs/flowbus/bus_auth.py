"""Who may do what on the bus: NATS roles, their permissions, and the credentials that carry them.

Every component connects to NATS with a credential of its own (an NKey: the
server keeps only the public key, the seed never leaves the client's file and
is used to sign the server's nonce). A credential has a name and one role;
the role's publish and subscribe permissions, written here and nowhere else,
go into the nats-server configuration that ``flowbus up`` writes
(``server_config``). docs/security.md describes the model.

Files, under ``Settings.auth_path()`` (``$FLOWBUS_HOME/auth``, folder 0700,
files 0600): ``<name>.json`` holds one credential (name, role, seed) and
``users.json`` the server's list of users (name, role, public key; no
secret). ``flowbus up`` creates one credential per role on its first start;
``flowbus auth add`` makes more and ``flowbus auth rotate`` replaces them.

Subjects: none of its own; it names which of ``flowbus.subjects``' subjects
and JetStream API subjects each role may use.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Final

import nkeys

from flowbus import subjects as s

USERS_FILE: Final = "users.json"
# A credential's name becomes its inbox prefix (``_INBOX_<name>``): one subject token.
NAME_PATTERN: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


class BusRole(StrEnum):
    """The NATS roles. Each component has a default one (``default_role``)."""

    SERVICE = "service"  # the services: serve commands, sole writer of events and run queues
    AGENT = "agent"  # agents and the runners they start
    USER = "user"  # people and CI: every command but the admin ones
    ADMIN = "admin"  # the operator: every command
    READ_ONLY = "read-only"  # queries and watching
    GATEWAY = "gateway"  # the HTTP gateway: checks its API keys' roles itself


class PermissionDenied(Exception):
    """The bus refuses this subject to the connection's role."""

    def __init__(self, subject: str, role: str) -> None:
        super().__init__(f"the {role!r} NATS credential may not publish to {subject}")
        self.subject = subject
        self.role = role


def inbox_prefix(name: str) -> str:
    return f"_INBOX_{name}"


# ---- permissions -------------------------------------------------------------------------------

_JS = "$JS.API"
_CREATE = f"{_JS}.CONSUMER.CREATE"

# Reading a run's states and logs as they come: consumers must be created with
# a name and one filter (the extended create subject carries the filter, and the
# server refuses a body whose filter differs), acknowledged by nobody.
_WATCH: Final = (
    f"{_CREATE}.{s.EVENTS_STREAM}.*.{s.PREFIX}.evt.flow_run.>",
    f"{_CREATE}.{s.LOGS_STREAM}.*.{s.PREFIX}.logs.*",
    f"{_JS}.STREAM.MSG.GET.{s.EVENTS_STREAM}",
    f"{_JS}.STREAM.MSG.GET.{s.LOGS_STREAM}",
)
_QUERIES: Final = tuple(
    subject
    for subject in s.COMMAND_SUBJECTS
    if subject.rsplit(".", 1)[1].startswith(("get_", "list_")) or subject == s.SchedulerCommands.STATUS
)
# Commands only the admin role (and the gateway, for its admin keys) may send.
_ADMIN_COMMANDS: Final = (
    s.RegistrationCommands.DELETE_PROJECT,
    s.GatewayCommands.CREATE_API_KEY,
    s.GatewayCommands.LIST_API_KEYS,
    s.GatewayCommands.DELETE_API_KEY,
)
# What a run's process needs: its states, logs, heartbeats, its own detail,
# and child flow runs (a flow may start and await another flow's run, seed
# "Creating flow runs"), as Prefect Cloud's RUNNER token allowed.
_RUN_WORK: Final = (
    s.StateCommands.SET_FLOW_RUN_STATE,
    s.StateCommands.SET_TASK_RUN_STATE,
    s.StateCommands.ENSURE_TASK_RUN,
    s.StateCommands.RENAME_RUN,
    s.RunCreationCommands.CREATE_FLOW_RUN,
    f"{s.PREFIX}.logs.*",
    f"{s.PREFIX}.hb.flow_run.*",
)


@dataclass(frozen=True)
class Permissions:
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    publish_deny: tuple[str, ...] = ()
    allow_responses: bool = False

    def may_publish(self, subject: str) -> bool:
        return any(matches(p, subject) for p in self.publish) and not any(
            matches(p, subject) for p in self.publish_deny
        )


def permissions(role: BusRole, name: str) -> Permissions:
    """The permissions of credential ``name`` with ``role``."""
    inbox = f"{inbox_prefix(name)}.>"
    if role is BusRole.SERVICE:
        return Permissions(
            publish=(f"{s.PREFIX}.>", "$JS.>", "$KV.>", inbox),
            subscribe=(f"{s.PREFIX}.>", "$KV.>", inbox),
            allow_responses=True,
        )
    if role is BusRole.AGENT:
        runq = s.RUNQ_STREAM
        return Permissions(
            publish=(
                *_QUERIES,
                *_RUN_WORK,
                s.HeartbeatCommands.REGISTER_AGENT,
                f"{s.PREFIX}.hb.agent.*",
                *_WATCH,
                f"{_JS}.CONSUMER.INFO.{runq}.*",
                f"{_JS}.CONSUMER.CREATE.{runq}.>",
                f"{_JS}.CONSUMER.DURABLE.CREATE.{runq}.*",
                f"{_JS}.CONSUMER.MSG.NEXT.{runq}.*",
                f"$JS.ACK.{runq}.>",
            ),
            subscribe=(inbox, f"{s.PREFIX}.evt.flow_run.*.state"),
        )
    if role is BusRole.READ_ONLY:
        return Permissions(publish=(*_QUERIES, *_WATCH), subscribe=(inbox,))
    # user, admin and gateway: every command (minus the admin ones for users),
    # and what running a flow here (``run --execute``) and watching need.
    common = (f"{s.PREFIX}.cmd.>", *_RUN_WORK, *_WATCH)
    run_events = f"{s.PREFIX}.evt.flow_run.*.state"
    if role is BusRole.GATEWAY:
        # It serves its own commands (the API keys) and announces key revocations.
        return Permissions(
            # Its feeds acknowledge what they hand out (paced replays) and delete
            # their consumers when they end. NATS cannot scope a deletion to the
            # gateway's own consumers by name, so it may delete any of these two
            # streams': the services' durables there recreate themselves.
            publish=(
                *common,
                f"$JS.ACK.{s.EVENTS_STREAM}.>",
                f"$JS.ACK.{s.LOGS_STREAM}.>",
                f"{_JS}.CONSUMER.DELETE.{s.EVENTS_STREAM}.*",
                f"{_JS}.CONSUMER.DELETE.{s.LOGS_STREAM}.*",
                s.API_KEY_EVENTS,
                # Prefect 1.x agents poll through it: each poll is their heartbeat.
                f"{s.PREFIX}.hb.agent.*",
            ),
            subscribe=(inbox, run_events, f"{s.PREFIX}.cmd.{s.Service.GATEWAY}.>", s.API_KEY_EVENTS),
            allow_responses=True,
        )
    deny = (*_ADMIN_COMMANDS, s.HeartbeatCommands.REGISTER_AGENT) if role is BusRole.USER else ()
    return Permissions(publish=common, subscribe=(inbox, run_events), publish_deny=deny)


def matches(pattern: str, subject: str) -> bool:
    """NATS wildcard matching: ``*`` one token, ``>`` one or more trailing tokens."""
    p, t = pattern.split("."), subject.split(".")
    for i, token in enumerate(p):
        if token == ">":
            return len(t) > i
        if i >= len(t) or (token != "*" and token != t[i]):
            return False
    return len(p) == len(t)


# ---- credentials -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Credential:
    name: str
    role: BusRole
    seed: str

    @property
    def public_key(self) -> str:
        kp = nkeys.from_seed(bytearray(self.seed.encode()))
        try:
            return str(kp.public_key.decode())
        finally:
            kp.wipe()

    @property
    def inbox_prefix(self) -> str:
        return inbox_prefix(self.name)

    def connect_options(self) -> dict[str, Any]:
        """nats-py ``connect`` keyword arguments: sign the server's nonce with the seed, use our inboxes."""
        return {"nkeys_seed_str": self.seed, "inbox_prefix": self.inbox_prefix}

    def dumps(self) -> str:
        return json.dumps({"name": self.name, "role": self.role.value, "seed": self.seed}, indent=2) + "\n"

    @classmethod
    def load(cls, path: Path) -> Credential:
        try:
            data = json.loads(path.read_text())
            return cls(name=str(data["name"]), role=BusRole(data["role"]), seed=str(data["seed"]))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path} is not a flowbus NATS credential: {exc}") from None


def new_credential(name: str, role: BusRole) -> Credential:
    if not NAME_PATTERN.match(name):
        raise ValueError(
            f"A credential name is 1-64 letters, digits, '_' or '-' (starting with one of the first two), got {name!r}."
        )
    seed = nkeys.encode_seed(secrets.token_bytes(32), nkeys.PREFIX_BYTE_USER)
    return Credential(name=name, role=role, seed=seed.decode())


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only (0600), never briefly readable by others."""
    write_atomically(path, text, 0o600)


def write_atomically(path: Path, text: str, mode: int) -> None:
    """Replace ``path`` with ``text`` at once (readers see the old file or the new one), with ``mode``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, mode)  # O_CREAT's mode does not apply to a file left over by a crash
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def private_dir(path: Path) -> Path:
    """``path`` as a folder only its owner can enter (0700), created when missing."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


@dataclass(frozen=True)
class User:
    """One entry of the server's user list: no secret."""

    name: str
    role: BusRole
    public_key: str
    # Replaced by ``rotate``: still accepted until the next ``flowbus up``
    # start, so running processes keep working until they restart.
    retired: bool = False


class AuthStore:
    """The credentials of one flowbus installation (``$FLOWBUS_HOME/auth``)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def credential_file(self, name: str) -> Path:
        return self.path / f"{name}.json"

    def users(self) -> list[User]:
        try:
            data = json.loads((self.path / USERS_FILE).read_text())
        except FileNotFoundError:
            return []
        return [
            User(name=u["name"], role=BusRole(u["role"]), public_key=u["public_key"], retired=bool(u.get("retired")))
            for u in data["users"]
        ]

    def _save(self, users: Iterable[User]) -> None:
        private_dir(self.path)
        body = {
            "users": [
                {"name": u.name, "role": u.role.value, "public_key": u.public_key, "retired": u.retired} for u in users
            ]
        }
        write_private(self.path / USERS_FILE, json.dumps(body, indent=2) + "\n")

    def add(self, name: str, role: BusRole) -> Credential:
        """A new credential: its file written (0600), its public key added to the users."""
        users = self.users()
        if any(u.name == name and not u.retired for u in users):
            raise FileExistsError(f"a NATS credential named {name!r} exists already")
        credential = new_credential(name, role)
        private_dir(self.path)
        write_private(self.credential_file(name), credential.dumps())
        self._save([*users, User(name, role, credential.public_key)])
        return credential

    def ensure_defaults(self) -> list[Credential]:
        """One credential per role named after it (the components' defaults); existing ones are kept."""
        made = []
        active = {u.name for u in self.users() if not u.retired}
        for role in BusRole:
            if role.value not in active or not self.credential_file(role.value).exists():
                if role.value in active:  # the file was removed: its key is useless now
                    self._save([u for u in self.users() if u.name != role.value])
                made.append(self.add(role.value, role))
        return made

    def rotate(self, names: Iterable[str] | None = None) -> list[Credential]:
        """New seeds for ``names`` (default: every credential); the old keys stay accepted
        (retired) until ``drop_retired``, which ``flowbus up`` calls on its next start."""
        users = self.users()
        chosen = set(names) if names is not None else {u.name for u in users if not u.retired}
        unknown = chosen - {u.name for u in users if not u.retired}
        if unknown:
            raise KeyError(f"no NATS credential named {', '.join(sorted(unknown))}")
        kept: list[User] = []
        fresh: list[Credential] = []
        for user in users:
            if user.name in chosen and not user.retired:
                credential = new_credential(user.name, user.role)
                write_private(self.credential_file(user.name), credential.dumps())
                fresh.append(credential)
                kept += [
                    User(user.name, user.role, user.public_key, retired=True),
                    User(user.name, user.role, credential.public_key),
                ]
            else:
                kept.append(user)
        self._save(kept)
        return fresh

    def remove(self, name: str) -> None:
        users = self.users()
        if not any(u.name == name for u in users):
            raise KeyError(f"no NATS credential named {name}")
        self._save([u for u in users if u.name != name])
        self.credential_file(name).unlink(missing_ok=True)

    def drop_retired(self) -> None:
        users = self.users()
        if any(u.retired for u in users):
            self._save([u for u in users if not u.retired])


# ---- the server's side -------------------------------------------------------------------------

ACCOUNT: Final = "FLOWBUS"


@dataclass(frozen=True)
class ServerLimits:
    """What the account and the server allow at most (nats-server's own defaults are unlimited)."""

    max_file_store: int
    max_memory_store: int
    max_connections: int
    max_subscriptions: int
    max_streams: int
    max_consumers: int
    max_payload: int


def _server_users(users: Iterable[User]) -> list[dict[str, Any]]:
    entries = []
    for user in users:
        p = permissions(user.role, user.name)
        perms: dict[str, Any] = {"publish": {"allow": list(p.publish)}, "subscribe": {"allow": list(p.subscribe)}}
        if p.publish_deny:
            perms["publish"]["deny"] = list(p.publish_deny)
        if p.allow_responses:
            perms["allow_responses"] = True
        entries.append({"nkey": user.public_key, "permissions": perms})
    return entries


def authorization_config(users: Iterable[User], limits: ServerLimits) -> dict[str, Any]:
    """The ``accounts`` block of the nats-server config: one account, its users and JetStream limits."""
    return {
        ACCOUNT: {
            "users": _server_users(users),
            "jetstream": {
                "max_file": limits.max_file_store,
                "max_mem": limits.max_memory_store,
                "max_streams": limits.max_streams,
                "max_consumers": limits.max_consumers,
            },
            "limits": {"max_subscriptions": limits.max_subscriptions},
        }
    }


def accounts_include(users: Iterable[User], limits: ServerLimits) -> str:
    """A nats-server include file holding the ``accounts`` block, for a server configured
    elsewhere (docker-compose.yml's nodes ``include`` it). No secret: public keys only."""
    return "accounts: " + json.dumps(authorization_config(users, limits), indent=2) + "\n"


def server_config(store_dir: Path, users: Iterable[User] | None, limits: ServerLimits) -> str:
    """A nats-server configuration (JSON is valid nats-server syntax, and quotes every value safely).

    ``users`` None: no authorization at all (a server that only tests of the
    refusal itself start)."""
    config: dict[str, Any] = {
        "max_payload": limits.max_payload,
        "max_connections": limits.max_connections,
        "jetstream": {
            "store_dir": str(store_dir),
            "max_file_store": limits.max_file_store,
            "max_memory_store": limits.max_memory_store,
        },
    }
    if users is not None:
        config["accounts"] = authorization_config(users, limits)
    return json.dumps(config, indent=2) + "\n"


def write_server_config(path: Path, store_dir: Path, users: Iterable[User] | None, limits: ServerLimits) -> None:
    write_private(path, server_config(store_dir, users, limits))


def update_server_users(config: Path, users: Iterable[User]) -> None:
    """Replace the users in a config ``server_config`` wrote, keeping its limits (before a reload)."""
    data = json.loads(config.read_text())
    data["accounts"][ACCOUNT]["users"] = _server_users(users)
    write_private(config, json.dumps(data, indent=2) + "\n")


def default_role_file(auth_dir: Path, role: BusRole) -> Path:
    return auth_dir / f"{role.value}.json"
