"""NATS connections and the JetStream streams every component relies on.

Streams: EVENTS (``flowbus.evt.>``), LOGS (``flowbus.logs.>``) and RUNQ
(``flowbus.runq.>``), and the KV bucket of the leases (``flowbus_leases``,
runtime/lease.py). Creation is idempotent: whichever component starts
first declares them, later ones find them; a changed setting updates them. On a cluster that is still
forming (too few servers to place the replicas), creation waits for it.
Without ``FLOWBUS_NATS_URL`` the URL is the endpoint file's, waited for while
a `flowbus up` is starting (``nats_servers``; docs/architecture.md, "Clients").
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

import nats
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, KeyValueConfig, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError
from nats.js.kv import KeyValue

from flowbus import subjects
from flowbus.bus_auth import BusRole, Credential
from flowbus.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")


AUTHORIZATION_VIOLATION = "authorization violation"


class NatsUnavailable(ConnectionError):
    """No NATS server answered at the configured URL."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot reach the flowbus NATS server at {url}: {reason}")
        self.url = url


class NatsUnreachable(NatsUnavailable):
    """Nothing accepted a connection at the URL (refused, or timed out): a server
    that is down, perhaps restarting. A refused credential is not this."""


class NoServerRunning(NatsUnavailable):
    """No ``FLOWBUS_NATS_URL`` and no endpoint file: no `flowbus up` to connect to."""

    def __init__(self, endpoint_file: Path) -> None:
        ConnectionError.__init__(
            self,
            f"no flowbus server is running: FLOWBUS_NATS_URL is not set and {endpoint_file}"
            " does not exist (start one with `flowbus up`, or set FLOWBUS_NATS_URL to a running one)",
        )
        self.url = ""


# How often a client looks for the endpoint file of a starting `flowbus up`.
ENDPOINT_POLL_SECONDS = 0.1


def known_servers(settings: Settings) -> list[str] | None:
    """``settings.nats_servers()``, or None while no server is known (nothing waited for)."""
    try:
        return settings.nats_servers()
    except NoServerRunning:
        return None


async def nats_servers(settings: Settings) -> list[str]:
    """``settings.nats_servers()``; while the endpoint file is missing and a
    `flowbus up` of the home is alive (starting, or restarting in place), it is
    waited for up to ``nats.endpoint_wait_seconds``. Raises ``NoServerRunning``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settings.nats.endpoint_wait_seconds
    while True:
        try:
            return settings.nats_servers()
        except NoServerRunning:
            if loop.time() >= deadline or not settings.server_starting():
                raise
        await asyncio.sleep(ENDPOINT_POLL_SECONDS)


async def _quiet_error(exc: Exception) -> None:
    # nats-py prints every failed (re)connect with a traceback by default.
    log.debug("nats: %s", exc)


async def _probe(url: str, timeout: float) -> None:
    """Fail fast when nothing listens: nats-py would retry the first connect forever."""
    parsed = urlparse(url)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 4222
    try:
        _reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError) as exc:
        raise NatsUnreachable(
            url, "connection refused" if isinstance(exc, ConnectionRefusedError) else str(exc) or "timed out"
        ) from None
    writer.close()


def redacted(url: str) -> str:
    """``url`` with its password (or a NATS URL's token) hidden, for messages and banners."""
    parsed = urlparse(url)
    host = (parsed.hostname or "") + (f":{parsed.port}" if parsed.port else "")
    if parsed.password is not None:
        return parsed._replace(netloc=f"{parsed.username}:***@{host}").geturl()
    if parsed.username and parsed.scheme in ("nats", "tls", "ws", "wss"):
        return parsed._replace(netloc=f"***@{host}").geturl()
    return url


def without_userinfo(url: str) -> str:
    """``url`` with no user, password or token: what may be written to files others read."""
    parsed = urlparse(url)
    if parsed.username is None and parsed.password is None:
        return url
    host = parsed.hostname or ""
    return parsed._replace(netloc=host + (f":{parsed.port}" if parsed.port else "")).geturl()


def credential_options(credential: Credential | None) -> dict[str, Any]:
    return credential.connect_options() if credential is not None else {}


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """TLS to NATS: for ``tls://`` URLs or when a CA or client certificate is set
    (``FLOWBUS_NATS_TLS__*``); None for plain connections."""
    tls = settings.nats_tls
    wanted = any(url.startswith("tls://") for url in known_servers(settings) or [])
    if not (wanted or tls.ca_file or tls.cert_file):
        return None
    context = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
    if tls.cert_file is not None:
        context.load_cert_chain(str(tls.cert_file), str(tls.key_file) if tls.key_file else None)
    return context


async def connect(settings: Settings, name: str, role: BusRole, credential: Credential | None = None) -> NatsClient:
    """Connect with ``credential`` (else ``role``'s, see ``Settings.nats_credential``),
    failing fast with the URL in the message; reconnect for ever once connected."""
    servers = await nats_servers(settings)
    url = ",".join(redacted(server) for server in servers)
    if credential is None:
        credential = settings.nats_credential(role)
    # One reachable member of a cluster is enough to start.
    failures: list[NatsUnavailable] = []
    for server in servers:
        try:
            await _probe(redacted(server), settings.nats.connect_timeout)
            break
        except NatsUnavailable as exc:
            failures.append(exc)
    else:
        raise failures[0] if len(failures) == 1 else NatsUnreachable(url, "no server of the cluster answered")
    # nats-py retries a first connect that fails for ever: a credential the
    # server refuses, or a TLS handshake that fails, is reported at once.
    who = f"the {credential.role.value!r} credential {credential.name!r}" if credential else "a client without one"
    refusals: list[str] = []
    refused = asyncio.Event()

    async def on_error(exc: Exception) -> None:
        if AUTHORIZATION_VIOLATION in str(exc).lower():
            refusals.append(f"the server refused {who} (Authorization Violation): see docs/security.md")
        elif isinstance(exc, ssl.SSLError):
            refusals.append(f"TLS failed: {exc} (the FLOWBUS_NATS_TLS__* settings: see docs/security.md)")
        if refusals:
            refused.set()
        await _quiet_error(exc)

    attempt = asyncio.ensure_future(
        nats.connect(
            servers,
            name=name,
            connect_timeout=settings.nats.connect_timeout,
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            error_cb=on_error,
            tls=tls_context(settings),
            **credential_options(credential),
        )
    )
    refusal = asyncio.ensure_future(refused.wait())
    try:
        await asyncio.wait({attempt, refusal}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        refusal.cancel()
    if not attempt.done():
        attempt.cancel()
        raise NatsUnavailable(url, refusals[0])
    try:
        return attempt.result()
    except Exception as exc:  # nats-py raises several unrelated types here
        raise NatsUnavailable(url, str(exc) or type(exc).__name__) from exc


def stream_configs(settings: Settings) -> list[StreamConfig]:
    """The three streams, each bounded by age, bytes, message size and consumers
    (docs/architecture.md, "Limits"). No message of a stream can be deleted,
    nor the stream purged, through the JetStream API: only its limits remove
    messages."""
    tuning = settings.nats
    common = {
        "storage": StorageType.FILE,
        "num_replicas": tuning.stream_replicas,
        "duplicate_window": tuning.duplicate_window_seconds,
        "discard": DiscardPolicy.OLD,
        "retention": RetentionPolicy.LIMITS,
        "max_consumers": tuning.stream_max_consumers,
        "deny_delete": True,
        "deny_purge": True,
    }
    return [
        StreamConfig(
            name=subjects.EVENTS_STREAM,
            subjects=[subjects.EVENTS_ALL],
            max_age=tuning.events_max_age_seconds,
            max_bytes=tuning.events_max_bytes,
            max_msg_size=tuning.events_max_msg_bytes,
            **common,  # type: ignore[arg-type]
        ),
        StreamConfig(
            name=subjects.LOGS_STREAM,
            subjects=[subjects.LOGS_ALL],
            max_age=tuning.logs_max_age_seconds,
            max_bytes=tuning.logs_max_bytes,
            max_msg_size=tuning.logs_max_msg_bytes,
            **common,  # type: ignore[arg-type]
        ),
        StreamConfig(
            name=subjects.RUNQ_STREAM,
            subjects=[subjects.RUNQ_ALL],
            max_age=tuning.runq_max_age_seconds,
            max_bytes=tuning.runq_max_bytes,
            max_msg_size=tuning.runq_max_msg_bytes,
            **common,  # type: ignore[arg-type]
        ),
    ]


# JetStream's answer while a cluster is still forming: too few servers have
# joined to place every replica. Services starting with the cluster wait.
NO_SUITABLE_PEERS = 10005
STREAM_PLACEMENT_WAIT_SECONDS = 30.0


# nats-py's duplicate window for a bucket, cut to its max_age when shorter (the server requires it).
KV_DUPLICATE_WINDOW_SECONDS = 120.0
# JetStream's answer to creating a stream that exists with another configuration.
STREAM_NAME_IN_USE = 10058


async def _placed(create: Callable[[], Awaitable[T]], what: str) -> T:
    """``create()``, waiting while a forming cluster cannot place the replicas yet."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + STREAM_PLACEMENT_WAIT_SECONDS
    while True:
        try:
            return await create()
        except BadRequestError as exc:
            if exc.err_code != NO_SUITABLE_PEERS or loop.time() >= give_up:
                raise
            log.info("%s waits for the cluster to place its replicas", what)
            await asyncio.sleep(0.25)


async def ensure_streams(js: JetStreamContext, settings: Settings) -> None:
    """Declare the streams and the leases bucket."""
    for config in stream_configs(settings):
        await _placed(partial(_ensure_stream, js, config), f"stream {config.name}")
    await ensure_lease_bucket(js, settings)


async def _ensure_stream(js: JetStreamContext, config: StreamConfig) -> None:
    try:
        await js.add_stream(config)
    except BadRequestError as exc:
        if exc.err_code == NO_SUITABLE_PEERS:
            raise
        # Exists with a different config (a changed setting): adopt the new one.
        await js.update_stream(config)


def lease_bucket_config(settings: Settings) -> KeyValueConfig:
    """The leases bucket: one revision per key, expiring ``lease.ttl_seconds``
    after its last write by the server's clock (nats-py caps the duplicate
    window at that max_age, as the server requires)."""
    return KeyValueConfig(
        bucket=subjects.LEASES_BUCKET,
        history=1,
        ttl=settings.lease.ttl_seconds,
        storage=StorageType.FILE,
        replicas=settings.nats.stream_replicas,
        max_bytes=settings.nats.leases_max_bytes,
    )


async def ensure_lease_bucket(js: JetStreamContext, settings: Settings) -> KeyValue:
    """Create the leases bucket, or adopt a changed TTL, size or replica count in an existing one."""
    config = lease_bucket_config(settings)
    try:
        return await _placed(partial(js.create_key_value, config), f"bucket {config.bucket}")
    except BadRequestError as exc:
        if exc.err_code != STREAM_NAME_IN_USE:
            raise
    # nats-py has no update for a bucket: change its stream the way creation would have set it.
    stream = f"KV_{config.bucket}"
    current = (await js.stream_info(stream)).config
    assert config.ttl is not None
    await js.update_stream(
        current.evolve(
            max_age=config.ttl,
            duplicate_window=min(KV_DUPLICATE_WINDOW_SECONDS, config.ttl),
            max_msgs_per_subject=config.history,
            num_replicas=config.replicas,
            max_bytes=config.max_bytes,
        )
    )
    return await js.key_value(config.bucket)


async def last_sequence(js: JetStreamContext, stream: str, subject: str) -> int:
    """Stream sequence of the newest message on ``subject`` (0 when there is none)."""
    try:
        return (await js.get_last_msg(stream, subject)).seq or 0
    except NotFoundError:
        return 0
