"""Settings of every flowbus component, read once from the environment.

All variables carry the ``FLOWBUS_`` prefix; nested groups use ``__``
(``FLOWBUS_SCHEDULER__RELEASE_INTERVAL=0.2``). Three are flat because users
type them: ``FLOWBUS_NATS_URL``, ``FLOWBUS_DATABASE_URL`` and
``FLOWBUS_HEARTBEAT_INTERVAL`` (the flow-run heartbeat interval, ``30`` or
``30s``; the nested ``FLOWBUS_HEARTBEAT__INTERVAL_SECONDS`` wins when both
are set). When the NATS
URL is not set, clients read the endpoint file that ``flowbus up`` writes in
``$FLOWBUS_HOME``, so a second shell finds the running server with no setup
(and, without ``FLOWBUS_UI_URL``, the web UI its printed links point at);
with neither, there is no server to guess: see ``resolved_nats_url``.
"""

from __future__ import annotations

import json
import os
import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, BeforeValidator, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from flowbus.bus_auth import BusRole, Credential, ServerLimits, default_role_file

ENDPOINT_FILE = "endpoint.json"
# `flowbus up` holds its pid here from its start to its exit: a home whose
# endpoint file is missing while this names a live process has a server starting (or stopping).
UP_PID_FILE = "up.pid"
API_KEY_FILE = "api-key"  # the admin key `flowbus up` makes on its first start (mode 0600)
# The port `flowbus up` takes when it is free: not 4222, which a system NATS may own.
# Clients never assume it: they take FLOWBUS_NATS_URL or the endpoint file.
DEFAULT_EMBEDDED_NATS_PORT = 4322
# AgentSettings.flow_roots as a JSON list: how the agent hands its roots to the runner it starts.
FLOW_ROOTS_ENV = "FLOWBUS_AGENT__FLOW_ROOTS"

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: str | float) -> timedelta:
    """``90``, ``90s``, ``30m``, ``24h``, ``1d`` (a bare number is seconds) as a timedelta."""
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(value.lower())
        if match is None:
            raise ValueError(f"not a duration: {value!r} (give a number of seconds or e.g. 90s, 30m, 24h, 1d)")
        seconds = float(match[1]) * _UNIT_SECONDS[match[2]]
    if seconds < 0:
        raise ValueError(f"a duration cannot be negative: {value!r}")
    return timedelta(seconds=seconds)


def _seconds(value: object) -> object:
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        return parse_duration(value).total_seconds()
    return value


def _never(value: object) -> object:
    if isinstance(value, str) and value.strip().lower() in {"", "never", "none"}:
        return None
    return value


# Room in a stream's message limit for what surrounds a payload (headers, an event's own fields).
STREAM_MSG_MARGIN = 24 << 10

# A duration in seconds, also given as "90s", "30m", "24h" or "1d".
Seconds = Annotated[float, Field(ge=0), BeforeValidator(_seconds)]
PositiveSeconds = Annotated[float, Field(gt=0), BeforeValidator(_seconds)]


class NatsTuning(BaseModel):
    request_timeout: float = 10.0
    connect_timeout: float = 2.0
    # How long a command is resent while no service instance receives it
    # (restarts, NATS fail-over) before the client gives up.
    unavailable_retry_seconds: float = 3.0
    # The same for agents and runners, which must outlive a stack restart (a
    # few seconds to a minute): resent with exponential back-off for this
    # long. 120 s is the Zombie Killer's default threshold (4 x 30 s) that a
    # Running run is judged by anyway.
    outage_retry_seconds: PositiveSeconds = 120.0
    # How long a command waits for its events to be published before it
    # replies anyway (they stay in the outbox; only ordering is then best effort).
    publish_wait_seconds: float = 2.0
    # When a hot-path command replies: its events "stored" or "sent" (docs/architecture.md, "Delivery guarantees").
    reply_after_events: Literal["stored", "sent"] = "stored"
    # Commands larger than this are refused with VALIDATION_ERROR before decoding.
    max_command_bytes: int = 1024 * 1024
    # Commands (and any other untrusted JSON: heartbeats, gateway bodies)
    # nesting arrays and objects deeper than this are refused with
    # VALIDATION_ERROR before they are parsed (flowbus.runtime.payload). The
    # floor leaves room for a JSON field's own 32 levels (MAX_JSON_DEPTH)
    # inside its message; the ceiling keeps parsers far from Python's recursion limit.
    max_json_depth: int = Field(default=64, ge=48, le=500)
    # How long a client without FLOWBUS_NATS_URL waits for the endpoint file
    # while a `flowbus up` of its home is starting or restarting (its up.pid
    # names a live process); with none alive it fails at once, saying to start one.
    endpoint_wait_seconds: Seconds = 15.0
    # Messages a service instance handles at once per faststream subject (the
    # hot-path commands go through the fast lane and group commit instead).
    max_concurrent_messages: int = 16
    events_max_age_seconds: float = 7 * 24 * 3600
    logs_max_age_seconds: float = 7 * 24 * 3600
    runq_max_age_seconds: float = 24 * 3600
    # Stream limits (docs/architecture.md, "Limits"). Bytes a stream keeps: past
    # them its oldest messages go, as past its max age.
    events_max_bytes: int = Field(default=1 << 30, ge=1 << 20)
    logs_max_bytes: int = Field(default=2 << 30, ge=1 << 20)
    runq_max_bytes: int = Field(default=256 << 20, ge=1 << 20)
    # The largest message (headers included) a stream stores. An event can
    # carry what two commands set (a flow group's default parameters and its
    # schedule), so EVENTS takes twice max_command_bytes; a log batch is cut
    # to LOG_BATCH_MAX_BYTES (flowbus.schemas.runs) by every shipper.
    events_max_msg_bytes: int = 4 << 20
    logs_max_msg_bytes: int = 1 << 20
    runq_max_msg_bytes: int = Field(default=1 << 20, ge=64 << 10)
    # Consumers a stream allows at once (durables, watches, subscriptions).
    stream_max_consumers: int = Field(default=10_000, ge=16)
    # Bytes the leases bucket keeps (a lease is one key of about 100 bytes).
    leases_max_bytes: int = Field(default=8 << 20, ge=64 << 10)
    # Fast-lane commands a service instance holds before its group committer
    # takes them, by count and by bytes; past either, a command is answered
    # UNAVAILABLE (not taken: the client resends it) instead of queued.
    fast_lane_max_pending: int = Field(default=65_536, ge=1)
    fast_lane_max_pending_bytes: int = Field(default=256 << 20, ge=1)
    # Run-queue messages are deduplicated by run and version inside this window.
    duplicate_window_seconds: float = 120.0
    stream_replicas: int = 1

    @model_validator(mode="after")
    def _messages_fit(self) -> NatsTuning:
        # A message a stream refused would stay in its sender's outbox or shipper for ever.
        from flowbus.schemas.runs import LOG_BATCH_MAX_BYTES

        if self.events_max_msg_bytes < 2 * self.max_command_bytes + STREAM_MSG_MARGIN:
            raise ValueError(
                f"events_max_msg_bytes must be at least 2 x max_command_bytes + {STREAM_MSG_MARGIN}"
                " (an event can carry what two commands set)"
            )
        if self.logs_max_msg_bytes < LOG_BATCH_MAX_BYTES + STREAM_MSG_MARGIN:
            raise ValueError(f"logs_max_msg_bytes must be at least {LOG_BATCH_MAX_BYTES + STREAM_MSG_MARGIN}")
        return self


class NatsTlsSettings(BaseModel):
    """TLS to NATS (FLOWBUS_NATS_TLS__*): used for ``tls://`` URLs or when a file is set."""

    # The CA that signed the server's certificate (default: the system's).
    ca_file: Path | None = None
    # A client certificate and key, for servers that verify clients (mutual TLS).
    cert_file: Path | None = None
    key_file: Path | None = None


class EmbeddedNatsSettings(BaseModel):
    """The nats-server ``flowbus up`` starts: its port, and its limits (its own defaults are unlimited)."""

    # FLOWBUS_EMBEDDED_NATS__PORT: the port it listens on, at every start, so
    # that agents and clients holding its URL reconnect after a restart by
    # hand (a supervisor's restart keeps the port anyway); taken, the start
    # fails. Unset: DEFAULT_EMBEDDED_NATS_PORT when free, else a free one.
    port: int | None = Field(default=None, ge=1, le=65535)
    max_file_store: int = Field(default=10 * 1024**3, ge=1024**2)
    max_memory_store: int = Field(default=256 * 1024**2, ge=1024**2)
    max_connections: int = Field(default=10_000, ge=16)
    max_subscriptions: int = Field(default=1_000_000, ge=1024)
    max_streams: int = Field(default=100, ge=8)
    max_consumers: int = Field(default=20_000, ge=64)
    # Bigger than services accept, so an oversize command reaches a service
    # and gets a VALIDATION_ERROR reply rather than a dropped connection.
    max_payload: int = Field(default=8 * 1024 * 1024, ge=1024 * 1024)

    def limits(self) -> ServerLimits:
        return ServerLimits(**self.model_dump(exclude={"port"}))


class SchedulerSettings(BaseModel):
    # How often due runs are (re)released onto run queues. Releases are
    # deduplicated by Nats-Msg-Id, so a short interval costs little.
    release_interval: float = 1.0
    release_batch: int = 500
    # The backlog sweep (re-releasing due runs nobody has claimed, in case
    # the run-queue stream lost them) reads one page this often: a safety
    # net, so it need not keep pace with the releases of new runs.
    sweep_interval: PositiveSeconds = 10.0
    # Create runs from clocks in this instance (off: it only releases due runs).
    plan_runs: bool = True
    # How many future runs of each active schedule are kept created ahead.
    max_scheduled_runs_per_flow: int = Field(default=10, ge=1, le=1000)
    # After the scheduler was down, clock times that passed are not run
    # (1.x behaviour), except those within this window before now.
    catchup_window: Seconds = 0.0
    # How often every schedule is checked against the database, on top of the
    # re-plans that flow and flow-group events trigger (a safety net).
    resync_interval: PositiveSeconds = 300.0
    # Commands the planner keeps in flight at once, and runs per create_flow_runs command.
    planner_concurrency: int = Field(default=8, ge=1)
    planner_batch: int = Field(default=200, ge=1, le=500)
    # A run still Scheduled this long after its start time is late: flagged in
    # run queries and counted in the scheduler's status (its state is unchanged).
    late_after: Seconds = 15.0


class HeartbeatSettings(BaseModel):
    interval_seconds: float = 30.0
    agent_interval_seconds: float = 10.0
    # The Zombie Killer: how often it looks for Running flow runs whose
    # heartbeat is older than zombie_missed_beats x interval_seconds.
    zombie_check_interval_seconds: PositiveSeconds = 10.0
    zombie_missed_beats: int = Field(default=4, ge=1)
    # A run still Submitted this long after its claim, with no heartbeat since,
    # goes back to Scheduled (FLOWBUS_HEARTBEAT__SUBMITTED_TIMEOUT_SECONDS):
    # its agent died or gave up before the flow's process set Running, and
    # nothing else would ever start it. Checked with the Zombie Killer's
    # interval. It must exceed what a live agent takes from its claim to
    # Running (under a second, plus loading the flow's code), or a slow start
    # is requeued under it; the slow runner's Running is then refused.
    submitted_timeout_seconds: PositiveSeconds = 180.0


class LeaseSettings(BaseModel):
    """The leases that keep each time-driven loop running in one instance at a time."""

    # How long a lease outlives its holder's last refresh: the KV bucket's
    # max_age, enforced by the server's clock. The holder refreshes every
    # ttl/3; a successor takes over at most about ttl + ttl/3 after the
    # holder died. The server refuses a max_age under 100 ms.
    ttl_seconds: PositiveSeconds = Field(default=6.0, ge=0.5)


class LazarusSettings(BaseModel):
    """Lazarus: the heartbeat service's loop that reschedules flow runs whose
    runner vanished (Submitted or Running, silent, no active task run)."""

    # How often it looks (FLOWBUS_LAZARUS__INTERVAL_SECONDS).
    interval_seconds: PositiveSeconds = 600.0
    # A run is stale when its last heartbeat and its state's timestamp are
    # both older than this (FLOWBUS_LAZARUS__STALE_AFTER_SECONDS). A Submitted
    # run sends no heartbeat, so this must exceed the time a live agent takes
    # from its claim to Running, or a slow start is rescheduled under it.
    stale_after_seconds: PositiveSeconds = 600.0
    # Reschedules per run before Lazarus fails it instead
    # (FLOWBUS_LAZARUS__MAX_RESURRECTIONS).
    max_resurrections: int = Field(default=3, ge=0)


class LogSettings(BaseModel):
    """How long the state service keeps stored log records (FLOWBUS_LOGS__...)."""

    # Records stored longer ago than this are deleted; unset: as long as the
    # LOGS stream keeps them (nats.logs_max_age_seconds, 7 days).
    retention_seconds: PositiveSeconds | None = None
    # How often the pruning loop looks, and how many rows one transaction deletes.
    prune_interval_seconds: PositiveSeconds = 600.0
    prune_batch: int = Field(default=5000, ge=1, le=100_000)


class MetricsSettings(BaseModel):
    """Where ``/metrics`` is served beyond each service's own HTTP app (docs/operations.md)."""

    # The address `flowbus up`'s service processes and an agent's metrics server listen on.
    host: str = "127.0.0.1"
    # `flowbus up`: the first service process's metrics port, the next ones following
    # (FLOWBUS_METRICS__UP_PORT=9400 gives 9400, 9401, ...); 0: free ports, written to
    # endpoint.json and printed at start.
    up_port: int = Field(default=0, ge=0, le=65535)
    # A scrape-time gauge (a database query) that takes longer is left out of that scrape.
    scrape_timeout_seconds: PositiveSeconds = 5.0
    # Label sets reported per run-queue gauge; the rest are summed under labels="(other)".
    max_label_sets: int = Field(default=50, ge=1, le=10_000)


def _level(value: object) -> object:
    if isinstance(value, str):
        upper = value.strip().upper()
        if upper not in _LOG_LEVELS:
            raise ValueError(f"unknown log level {value!r}: choose from {', '.join(_LOG_LEVELS)}")
        return upper
    return value


def _lower(value: object) -> object:
    return value.strip().lower() if isinstance(value, str) else value


_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LogLevel = Annotated[str, BeforeValidator(_level)]


class AgentSettings(BaseModel):
    name: str | None = None
    labels: list[str] = Field(default_factory=list)
    no_hostname_label: bool = False
    max_concurrent_runs: int = 16
    # Flow processes each agent keeps started and connected ahead of demand
    # (flowbus.agent.warm_pool); 0: each run's process starts when it is claimed.
    warm_processes: int = Field(default=2, ge=0)
    # How long a cancelled flow's process gets to stop after SIGTERM before SIGKILL.
    cancel_grace_seconds: float = 5.0
    # When set, only flows whose code lies inside one of these folders run
    # (FLOWBUS_AGENT__FLOW_ROOTS='["/srv/flows"]'; --flow-root); see
    # flowbus.agent.flow_roots. Empty: the agent runs whatever it is given.
    flow_roots: list[Path] = Field(default_factory=list)
    # FLOWBUS_AGENT__METRICS_PORT (--metrics-port): serve /metrics on this port of
    # metrics.host (0: a free one, printed at start); unset: no HTTP server.
    metrics_port: int | None = Field(default=None, ge=0, le=65535)


class UpSettings(BaseModel):
    """How ``flowbus up`` lays the services out in processes."""

    # Services named here get that many processes of their own (a process
    # runs on one core; these two are the CPU-bound hot paths); the others
    # share one more process. FLOWBUS_UP__PROCESSES='{"run_creation": 2}'.
    processes: dict[str, int] = Field(default_factory=lambda: {"run_creation": 1, "state": 1})
    # Every service in the one `flowbus up` process (always so where os.fork is missing).
    single_process: bool = False
    # A service process or the embedded nats-server that dies is restarted
    # (after 0.5 s, doubling to 10 s); one that dies restart_burst times within
    # restart_window_seconds stops flowbus up with an error instead, so that a
    # crash loop is not hidden behind restarts (docs/architecture.md, "Supervision").
    restart_burst: int = Field(default=5, ge=1)
    restart_window_seconds: PositiveSeconds = 60.0


class GatewaySettings(BaseModel):
    """The HTTP gateway (GraphQL, health, the web UI)."""

    host: str = "127.0.0.1"
    # Prefect Server's port; `flowbus up` takes a free one when it is in use.
    port: int = Field(default=4200, ge=0, le=65535)
    # SO_REUSEPORT: gateway processes share the port. `flowbus up` with one
    # gateway process turns it off, so that a second `flowbus up` cannot bind
    # the same port and answer the first one's requests.
    reuse_port: bool = True
    # "off" serves every request as admin: only for a trusted local setup.
    auth: Literal["on", "off"] = "on"
    # Request bodies over this are refused (413) before they are parsed.
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    # Deepest selection a query may nest (Prefect's own clients nest about 4).
    max_query_depth: int = Field(default=10, ge=2, le=100)
    # Most rows one list field may return; an explicit larger `limit` is refused.
    max_page_size: int = Field(default=1000, ge=1, le=100_000)
    # The web UI at / (flowbus_services/gateway/webui.py); off leaves the API alone.
    ui: bool = True
    # Origins allowed by CORS; none (the default) sends no CORS headers.
    cors_origins: list[str] = Field(default_factory=list)
    # A subscription's JetStream consumer is deleted when the subscription ends,
    # or dropped by the server this long after its subscriber went away (a gateway that died).
    feed_expiry_seconds: PositiveSeconds = 5.0
    # Reads go here when set (a PostgreSQL replica); else to FLOWBUS_DATABASE_URL.
    read_database_url: str | None = None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="FLOWBUS_",
        env_nested_delimiter="__",
        extra="ignore",
    )

    home: Path = Field(default_factory=lambda: Path.home() / ".flowbus")
    nats_url: str | None = None
    database_url: str | None = None
    # FLOWBUS_IDEMPOTENCY_TTL: flow-run idempotency keys never expire unless
    # this is set (``24h`` gives a sliding window of a day).
    idempotency_ttl: Annotated[PositiveSeconds | None, BeforeValidator(_never)] = None
    # How long `run --watch` / `watch` let a due run wait unclaimed before saying why.
    watch_explain_after: Seconds = 15.0
    # FLOWBUS_HEARTBEAT_INTERVAL, the name the heartbeat docs use: a flat
    # spelling of heartbeat.interval_seconds, copied there when that is not set.
    heartbeat_interval: PositiveSeconds | None = None
    # FLOWBUS_OTEL_CONSOLE: also print every span to the console (the OTLP
    # export follows the SDK's own OTEL_EXPORTER_OTLP_ENDPOINT).
    otel_console: bool = False
    # FLOWBUS_TRACES: write this process's spans as JSON lines under
    # $FLOWBUS_HOME/traces (`flowbus up --traces` sets it for its processes and
    # says so in endpoint.json, which the CLI, SDK, agents and runners read).
    traces: bool = False
    # FLOWBUS_TRACE_SAMPLE_RATIO: the share of new traces (runs) sampled,
    # parent-based; OTEL_TRACES_SAMPLER, when set, wins. Unset: every trace.
    trace_sample_ratio: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    # FLOWBUS_API_KEY: the key to send to the gateway; when unset, the one
    # `flowbus up` wrote to $FLOWBUS_HOME/api-key (see gateway_api_key).
    api_key: SecretStr | None = None
    # FLOWBUS_NATS_CREDS: the NATS credential file to connect with; when
    # unset, the component's default role's file in ``auth_path()``.
    nats_creds: Path | None = None
    # FLOWBUS_AUTH_DIR: where the credentials live (default $FLOWBUS_HOME/auth).
    auth_dir: Path | None = None
    # FLOWBUS_ROLE: the credential the CLI and the SDK use (default admin, the local owner).
    role: BusRole | None = None
    # FLOWBUS_UI_URL: the web UI's base URL, for the links the CLI and the SDK
    # print; when unset, the gateway of the running `flowbus up` (see resolved_ui_url).
    ui_url: str | None = None
    # FLOWBUS_LOG_FORMAT: the services', `flowbus up`'s and agents' own log lines,
    # "text" (readable) or "json" (one object per line); see flowbus.runtime.log_format.
    log_format: Annotated[Literal["text", "json"], BeforeValidator(_lower)] = "text"
    # FLOWBUS_LOG_LEVEL: their level; FLOWBUS_LOG_LEVELS='{"state": "DEBUG", "agent": "WARNING"}'
    # sets it per service (or per logger name, e.g. "sqlalchemy.engine").
    log_level: LogLevel = "INFO"
    log_levels: dict[str, LogLevel] = Field(default_factory=dict)

    nats: NatsTuning = Field(default_factory=NatsTuning)
    scheduler: SchedulerSettings = Field(default_factory=SchedulerSettings)
    heartbeat: HeartbeatSettings = Field(default_factory=HeartbeatSettings)
    lease: LeaseSettings = Field(default_factory=LeaseSettings)
    lazarus: LazarusSettings = Field(default_factory=LazarusSettings)
    logs: LogSettings = Field(default_factory=LogSettings)
    agent: AgentSettings = Field(default_factory=AgentSettings)
    up: UpSettings = Field(default_factory=UpSettings)
    gateway: GatewaySettings = Field(default_factory=GatewaySettings)
    embedded_nats: EmbeddedNatsSettings = Field(default_factory=EmbeddedNatsSettings)
    nats_tls: NatsTlsSettings = Field(default_factory=NatsTlsSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)

    @model_validator(mode="after")
    def _flat_heartbeat_interval(self) -> Settings:
        if self.heartbeat_interval is not None and "interval_seconds" not in self.heartbeat.model_fields_set:
            self.heartbeat = self.heartbeat.model_copy(update={"interval_seconds": self.heartbeat_interval})
        return self

    @property
    def log_retention_seconds(self) -> float:
        """How long stored log records are kept: ``logs.retention_seconds``, else the LOGS stream's max age."""
        retention = self.logs.retention_seconds
        return retention if retention is not None else self.nats.logs_max_age_seconds

    @property
    def idempotency_ttl_seconds(self) -> float | None:
        return self.idempotency_ttl

    @property
    def endpoint_file(self) -> Path:
        return self.home / ENDPOINT_FILE

    @property
    def up_pid_file(self) -> Path:
        return self.home / UP_PID_FILE

    def server_starting(self) -> bool:
        """A `flowbus up` of this home is alive: its endpoint file, if missing, is on its way."""
        return live_pid(self.up_pid_file) is not None

    @property
    def api_key_file(self) -> Path:
        return self.home / API_KEY_FILE

    def gateway_api_key(self) -> str | None:
        """The API key to send to the gateway: ``FLOWBUS_API_KEY``, else the key
        ``flowbus up`` wrote to ``$FLOWBUS_HOME/api-key``; None when neither is there."""
        if self.api_key is not None and self.api_key.get_secret_value().strip():
            return self.api_key.get_secret_value().strip()
        try:
            key = self.api_key_file.read_text().strip()
        except OSError:
            return None
        return key or None

    def auth_path(self) -> Path:
        return self.auth_dir if self.auth_dir is not None else self.home / "auth"

    def nats_credential_file(self, default_role: BusRole) -> Path | None:
        """The credential file to connect with: ``FLOWBUS_NATS_CREDS``, else the default
        role's file; None when neither exists (a NATS server without authorization)."""
        if self.nats_creds is not None:
            return self.nats_creds
        path = default_role_file(self.auth_path(), default_role)
        return path if path.exists() else None

    def nats_credential(self, default_role: BusRole) -> Credential | None:
        path = self.nats_credential_file(default_role)
        return Credential.load(path) if path is not None else None

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{self.home / 'flowbus.db'}"

    def nats_servers(self) -> list[str]:
        """The NATS URL(s): ``FLOWBUS_NATS_URL`` may list a cluster, comma-separated."""
        return [u.strip() for u in self.resolved_nats_url().split(",") if u.strip()]

    def resolved_nats_url(self) -> str:
        """The NATS URL to connect to: the setting, else the running `flowbus up`'s.

        Raises ``NoServerRunning`` (a ``NatsUnavailable``) when neither is
        there: a port guessed instead could be another instance's. To wait
        for a starting server, see ``flowbus.runtime.nats.nats_servers``."""
        if self.nats_url:
            return self.nats_url
        try:
            return str(json.loads(self.endpoint_file.read_text())["nats_url"])
        except (OSError, ValueError, KeyError, TypeError):
            from flowbus.runtime.nats import NoServerRunning  # it imports this module

            raise NoServerRunning(self.endpoint_file) from None

    def resolved_ui_url(self) -> str | None:
        """The web UI's base URL, no trailing slash: ``FLOWBUS_UI_URL``, else the gateway
        of the `flowbus up` in the endpoint file (its GraphQL URL less ``/graphql``) when
        that is the server this process talks to; None when neither is known."""
        if self.ui_url and self.ui_url.strip():
            return self.ui_url.strip().rstrip("/")
        try:
            data = json.loads(self.endpoint_file.read_text())
            graphql, endpoint_nats = str(data["graphql_url"]), str(data["nats_url"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        try:
            # FLOWBUS_NATS_URL naming another server: that `flowbus up`'s UI would show other flows.
            if self.nats_url and _servers(self.nats_url) != _servers(endpoint_nats):
                return None
            parsed = urlsplit(graphql)
            port = parsed.port
        except ValueError:  # a port that is no number
            return None
        if not parsed.scheme or not parsed.hostname:
            return None
        netloc = parsed.netloc
        if parsed.hostname in _LOOPBACK_FOR:
            # A gateway bound to every address; the endpoint file is this machine's, so loopback reaches it.
            netloc = _LOOPBACK_FOR[parsed.hostname] + (f":{port}" if port is not None else "")
        path = parsed.path.rstrip("/").removesuffix("/graphql")
        return urlunsplit((parsed.scheme, netloc, path, "", ""))


# The loopback address that reaches a server bound to every address.
_LOOPBACK_FOR = {"0.0.0.0": "127.0.0.1", "::": "[::1]"}


def _servers(urls: str) -> set[tuple[str | None, int | None]]:
    """The hosts and ports of a comma-separated list of NATS URLs (credentials left out)."""
    return {(p.hostname, p.port) for p in (urlsplit(u.strip()) for u in urls.split(",") if u.strip())}


def live_pid(path: Path) -> int | None:
    """The ``pid`` of the JSON file ``path`` when that process is alive (a file
    that a killed process left behind names a dead one); None otherwise."""
    try:
        pid = int(json.loads(path.read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if pid <= 0:  # os.kill would signal a process group
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    except OSError:
        return None
    return pid
