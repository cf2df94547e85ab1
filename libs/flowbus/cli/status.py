"""``flowbus status``: what matters at a glance, read from the services' ``/metrics``.

Reads the ``/metrics`` URLs that ``flowbus up`` writes to its endpoint file
(one per service process), or those given with ``--metrics-url`` (services
run on their own), over plain HTTP; no NATS subject. It prints the services
up, agents online, runs by state, due runs no agent has claimed yet (and the
oldest), late runs and the outbox backlog; exit code 1 when a process does
not answer, or when no server is running.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Annotated, Any

import typer
from prometheus_client.parser import text_string_to_metric_families

from flowbus.cli.app import app, fail
from flowbus.settings import Settings
from flowbus.states import StateType

SCRAPE_TIMEOUT_SECONDS = 5.0
# A sample by its name and labels. Every instance of a service reports the same ones alike (a database
# count, the outbox its instances share), so of those the largest is kept.
Key = tuple[str, tuple[tuple[str, str], ...]]


@dataclass
class Endpoint:
    url: str
    services: list[str]
    error: str | None = None
    samples: list[tuple[str, dict[str, str], float]] = field(default_factory=list)


def _endpoints(settings: Settings, given: list[str]) -> list[Endpoint]:
    """The /metrics to read: ``given``, else those of the running `flowbus up` (waiting while it starts)."""
    if given:
        return [Endpoint(url, []) for url in given]
    deadline = time.monotonic() + settings.nats.endpoint_wait_seconds
    while not settings.endpoint_file.exists() and settings.server_starting() and time.monotonic() < deadline:
        time.sleep(0.1)
    try:
        data = json.loads(settings.endpoint_file.read_text())
    except (OSError, ValueError):
        raise fail(
            f"no flowbus server is running ({settings.endpoint_file} is missing): start one with `flowbus up`,"
            " or name services' /metrics with --metrics-url"
        ) from None
    listed = data.get("metrics") if isinstance(data, dict) else None
    if not isinstance(listed, list) or not listed:
        raise fail(f"{settings.endpoint_file} lists no /metrics: restart `flowbus up`, or give --metrics-url")
    return [Endpoint(str(entry["url"]), [str(s) for s in entry.get("services", [])]) for entry in listed]


def _scrape(endpoint: Endpoint) -> None:
    try:
        with urllib.request.urlopen(endpoint.url, timeout=SCRAPE_TIMEOUT_SECONDS) as response:
            text = response.read().decode()
        for family in text_string_to_metric_families(text):
            endpoint.samples.extend((s.name, dict(s.labels), float(s.value)) for s in family.samples)
    except urllib.error.HTTPError as exc:
        endpoint.error = f"HTTP {exc.code}"
    except (OSError, ValueError) as exc:
        endpoint.error = str(getattr(exc, "reason", None) or exc)


def _gauges(endpoints: list[Endpoint]) -> dict[Key, float]:
    values: dict[Key, float] = {}
    for endpoint in endpoints:
        for name, labels, value in endpoint.samples:
            key = (name, tuple(sorted(labels.items())))
            values[key] = max(value, values.get(key, value))
    return values


def _named(values: dict[Key, float], name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {labels: value for (metric, labels), value in values.items() if metric == name}


def _by_state(samples: dict[tuple[tuple[str, str], ...], float]) -> dict[str, int]:
    """Runs by state, in the order a run goes through them."""
    counts = {dict(labels).get("state", "?"): int(value) for labels, value in samples.items()}
    order = {state.value: index for index, state in enumerate(StateType)}
    return dict(sorted(counts.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))


def summarize(endpoints: list[Endpoint]) -> dict[str, Any]:
    """What ``flowbus status`` shows, from scraped endpoints."""
    values = _gauges(endpoints)
    up: list[str] = []
    disconnected: list[str] = []
    for endpoint in endpoints:
        for name, labels, value in endpoint.samples:
            if name == "flowbus_service_nats_connected":
                (up if value == 1 else disconnected).append(labels.get("service", "?"))
    down = [{"url": e.url, "services": e.services, "error": e.error} for e in endpoints if e.error]
    due = _named(values, "flowbus_runq_due_runs")
    oldest = _named(values, "flowbus_runq_oldest_due_seconds")
    unmatched = {
        dict(k).get("labels", ""): int(v) for k, v in _named(values, "flowbus_runq_unmatched_due_runs").items() if v
    }
    backlog = _named(values, "flowbus_outbox_backlog_rows")
    ages = _named(values, "flowbus_outbox_oldest_age_seconds")
    online = _named(values, "flowbus_agents_online")
    late = _named(values, "flowbus_late_runs")
    # The scheduler answered (it reports late runs): no due-run sample means none are due.
    no_due = 0 if late else None
    return {
        "services": {"up": sorted(set(up)), "disconnected": sorted(set(disconnected)), "down": down},
        "agents_online": int(max(online.values())) if online else None,
        "runs": _by_state(_named(values, "flowbus_flow_runs")),
        "due": {
            "runs": int(sum(due.values())) if due else no_due,
            "oldest_seconds": max(oldest.values()) if oldest else None,
            "no_agent_for": unmatched,
        },
        "late_runs": int(max(late.values())) if late else None,
        "outbox": {
            "rows": int(sum(backlog.values())) if backlog else None,
            "oldest_seconds": max(ages.values()) if ages else None,
        },
    }


def _seconds(value: float | None) -> str:
    if value is None:
        return "?"
    whole = int(value)
    if whole >= 3600:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 60}m{whole % 60:02d}s" if whole >= 60 else f"{whole}s"


def _count(value: int | None) -> str:
    return "?" if value is None else str(value)


def render(summary: dict[str, Any]) -> list[str]:
    services = summary["services"]
    lines = []
    up = services["up"]
    line = f"Services:     {len(up)} up" + (f": {', '.join(up)}" if up else "")
    if services["disconnected"]:
        line += f"; not connected to NATS: {', '.join(services['disconnected'])}"
    lines.append(line)
    for down in services["down"]:
        names = "+".join(down["services"]) or "services"
        lines.append(f"              DOWN: {names} ({down['url']}: {down['error']})")
    lines.append(f"Agents:       {_count(summary['agents_online'])} online")
    runs = summary["runs"]
    lines.append("Runs:         " + (", ".join(f"{state} {n}" for state, n in runs.items()) if runs else "?"))
    due = summary["due"]
    line = f"Due, waiting: {_count(due['runs'])}"
    if due["runs"]:
        line += f", the oldest due {_seconds(due['oldest_seconds'])} ago"
    if due["no_agent_for"]:
        sets = "; ".join(f"{labels} ({n})" for labels, n in sorted(due["no_agent_for"].items()))
        line += f"; no online agent can take: {sets}"
    lines.append(line)
    lines.append(f"Late runs:    {_count(summary['late_runs'])}")
    outbox = summary["outbox"]
    line = f"Outbox:       {_count(outbox['rows'])} rows waiting"
    if outbox["rows"]:
        line += f", the oldest {_seconds(outbox['oldest_seconds'])} old"
    lines.append(line)
    return lines


@app.command(
    "status",
    help="Services up, agents online, runs by state, due runs waiting, late runs, outbox backlog: read from"
    " the services' /metrics (those `flowbus up` lists, or --metrics-url).",
)
def status(
    metrics_url: Annotated[
        list[str] | None,
        typer.Option(
            "--metrics-url", metavar="URL", help="A /metrics to read (repeatable), instead of `flowbus up`'s."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="The summary as JSON.")] = False,
) -> None:
    settings = Settings()
    endpoints = _endpoints(settings, metrics_url or [])
    for endpoint in endpoints:
        _scrape(endpoint)
    summary = summarize(endpoints)
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
    else:
        for line in render(summary):
            typer.echo(line)
    if summary["services"]["down"]:
        raise typer.Exit(1)
