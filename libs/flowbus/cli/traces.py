"""``flowbus trace RUN_ID``: a flow run's trace as a tree, from the home's span files.

With ``flowbus up --traces`` every process of the home writes its spans as
JSON lines under ``$FLOWBUS_HOME/traces/`` (flowbus.runtime.telemetry,
``JsonLinesExporter``). This command reads them all, finds the traces that
hold a span of the run (attribute ``flowbus.flow_run_id``), and prints each
as a tree: span name, the process (service) that made it, its duration, and
its start relative to the trace's first span. No NATS subject, no server
needed: a process writes its spans in batches, and at the latest when it
exits. Exit code 1 when there is no traces folder or no span of the run.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

from flowbus.cli.app import app, fail
from flowbus.runtime.telemetry import FLOW_RUN_ID, TRACES_DIR
from flowbus.settings import Settings


@dataclass
class Span:
    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    service: str
    start: int  # ns since the epoch
    end: int
    attributes: dict[str, Any]
    children: list[Span] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return (self.end - self.start) / 1e9


def read_spans(folder: Path) -> Iterator[Span]:
    """Every span of every ``*.jsonl`` file in ``folder``; a line that is not a span is skipped
    (a file being written may end with half a line)."""
    for path in sorted(folder.glob("*.jsonl")):
        with path.open(encoding="utf-8") as lines:
            for line in lines:
                try:
                    raw = json.loads(line)
                    yield Span(
                        trace_id=str(raw["trace_id"]),
                        span_id=str(raw["span_id"]),
                        parent_id=raw.get("parent_id"),
                        name=str(raw["name"]),
                        service=str(raw.get("service", "?")).removeprefix("flowbus-"),
                        start=int(raw["start"]),
                        end=int(raw["end"] if raw.get("end") is not None else raw["start"]),
                        attributes=dict(raw.get("attributes") or {}),
                    )
                except (ValueError, KeyError, TypeError):
                    continue


def run_traces(spans: Iterable[Span], flow_run_id: str) -> list[list[Span]]:
    """The root spans of each trace holding a span of ``flow_run_id``, children attached in start order;
    traces in the order they started. A span whose parent is missing (not written, or sampled out)
    counts as a root."""
    by_trace: dict[str, list[Span]] = {}
    wanted: set[str] = set()
    for span in spans:
        by_trace.setdefault(span.trace_id, []).append(span)
        if span.attributes.get(FLOW_RUN_ID) == flow_run_id:
            wanted.add(span.trace_id)
    trees: list[list[Span]] = []
    for trace_id in wanted:
        members = {s.span_id: s for s in by_trace[trace_id]}
        roots: list[Span] = []
        for span in sorted(members.values(), key=lambda s: s.start):
            parent = members.get(span.parent_id) if span.parent_id else None
            (parent.children if parent is not None and parent is not span else roots).append(span)
        trees.append(roots)
    return sorted(trees, key=lambda roots: min(s.start for s in roots))


def render(roots: list[Span]) -> list[str]:
    """The tree's lines: ``name  [service]  duration  +offset``, children indented under their parent."""
    origin = min(s.start for s in roots)
    lines: list[str] = []

    def walk(span: Span, prefix: str, last: bool, top: bool) -> None:
        branch = "" if top else ("└─ " if last else "├─ ")
        offset = (span.start - origin) / 1e9
        lines.append(f"{prefix}{branch}{span.name}  [{span.service}]  {_duration(span.seconds)}  +{offset:.3f}s")
        below = prefix + ("" if top else ("   " if last else "│  "))
        for index, child in enumerate(span.children):
            walk(child, below, index == len(span.children) - 1, False)

    for root in roots:
        walk(root, "", True, True)
    return lines


def _duration(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.3f} s"


@app.command("trace", help="Print a flow run's trace as a tree (needs `flowbus up --traces`).")
def trace_command(flow_run_id: Annotated[str, typer.Argument(help="The flow run's id.")]) -> None:
    folder = Settings().home / TRACES_DIR
    if not folder.is_dir():
        raise fail(f"no traces folder at {folder}: start the server with `flowbus up --traces`, then run the flow")
    trees = run_traces(read_spans(folder), flow_run_id)
    if not trees:
        raise fail(
            f"no span of flow run {flow_run_id} in {folder}: unknown run id, a run from before tracing was on,"
            " sampled out, or its processes have not written their spans yet (they do within seconds, and at exit)"
        )
    for index, roots in enumerate(trees):
        if index:
            typer.echo("")
        typer.echo(f"trace {roots[0].trace_id}")
        for line in render(roots):
            typer.echo(line)
