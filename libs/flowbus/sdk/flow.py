"""``Flow``: a graph of tasks, its serialized metadata, and registration.

Registration sends metadata only: names, parameters, tasks, edges and
*where the code lives* (the script's path or the module's name), never
the code. An agent's runner loads the flow from that place.
"""

from __future__ import annotations

import hashlib
import os
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from flowbus.schemas.flows import (
    EdgeSpec,
    FlowOut,
    ParameterSpec,
    RunConfigSpec,
    SerializedFlow,
    StorageSpec,
    TaskSpec,
)
from flowbus.sdk import context, flow_context
from flowbus.sdk.schedules import Schedule
from flowbus.sdk.tasks import Parameter, Task
from flowbus.version import __version__

# Module names the runner gives a script it loads by path.
LOADED_SCRIPT_PREFIX = "flowbus_loaded_script"


@dataclass(frozen=True)
class TaskRef:
    """What calling a task inside ``with Flow(...)`` returns: a handle to its result."""

    slug: str


@dataclass
class Node:
    slug: str
    task: Task
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)

    def upstreams(self) -> list[tuple[str, str]]:
        """(upstream slug, argument key) for every argument that is another task."""
        found = [(a.slug, f"arg{i}") for i, a in enumerate(self.args) if isinstance(a, TaskRef)]
        found += [(v.slug, k) for k, v in self.kwargs.items() if isinstance(v, TaskRef)]
        return found


class Flow:
    def __init__(
        self,
        name: str,
        tasks: list[Task] | None = None,
        *,
        schedule: Schedule | None = None,
        description: str | None = None,
        labels: list[str] | None = None,
    ) -> None:
        self.name = name
        self.schedule = schedule
        self.description = description
        self.labels = list(labels or [])
        self.nodes: dict[str, Node] = {}
        self._added: dict[int, str] = {}
        self._storage = _caller_storage()
        self._token: Any = None
        for task in tasks or []:
            self.add_task(task)

    # ---- building -----------------------------------------------------------

    def __enter__(self) -> Flow:
        self._token = flow_context.enter(self)
        return self

    def __exit__(self, *exc: object) -> None:
        flow_context.leave(self._token)

    def _new_slug(self, task: Task) -> str:
        if isinstance(task, Parameter):
            if task.name in self.nodes:
                raise ValueError(f"A parameter named {task.name!r} is already in flow {self.name!r}.")
            return task.name
        n = 1
        while f"{task.name}-{n}" in self.nodes:
            n += 1
        return f"{task.name}-{n}"

    def add_task(self, task: Task) -> TaskRef:
        """Add a task with no arguments (once, however often it is added)."""
        if id(task) in self._added:
            return TaskRef(self._added[id(task)])
        slug = self._new_slug(task)
        self.nodes[slug] = Node(slug, task)
        self._added[id(task)] = slug
        return TaskRef(slug)

    def bind(self, task: Task, args: tuple[Any, ...], kwargs: dict[str, Any]) -> TaskRef:
        """Add one call of ``task``; task arguments become upstream edges."""

        def ref(value: Any) -> Any:
            return self.add_task(value) if isinstance(value, Task) else value

        if isinstance(task, Parameter):
            return self.add_task(task)
        slug = self._new_slug(task)
        self.nodes[slug] = Node(slug, task, [ref(a) for a in args], {k: ref(v) for k, v in kwargs.items()})
        return TaskRef(slug)

    @property
    def parameters(self) -> list[Parameter]:
        return [n.task for n in self.nodes.values() if isinstance(n.task, Parameter)]

    def sorted_nodes(self) -> list[Node]:
        """Nodes in dependency order (stable: insertion order among equals)."""
        done: set[str] = set()
        ordered: list[Node] = []
        pending = list(self.nodes.values())
        while pending:
            ready = [n for n in pending if all(u in done for u, _ in n.upstreams())]
            if not ready:
                raise ValueError(f"Flow {self.name!r} has a cycle.")
            for node in ready:
                ordered.append(node)
                done.add(node.slug)
            pending = [n for n in pending if n.slug not in done]
        return ordered

    # ---- serialization ------------------------------------------------------

    def storage(self) -> StorageSpec:
        return self._storage

    def serialize(self) -> SerializedFlow:
        labels = set(self.labels)
        if self._storage.type == "script":
            # A script lives on this machine: only an agent here can load it (1.x did the same).
            labels.add(socket.gethostname())
        return SerializedFlow(
            name=self.name,
            description=self.description,
            parameters=[ParameterSpec(name=p.name, required=p.required, default=p.default) for p in self.parameters],
            tasks=[
                TaskSpec(
                    slug=n.slug,
                    name=n.task.name,
                    max_retries=n.task.max_retries,
                    retry_delay_seconds=n.task.retry_delay.total_seconds() if n.task.retry_delay else None,
                    tags=n.task.tags,
                )
                for n in self.nodes.values()
            ],
            edges=[
                EdgeSpec(upstream=up, downstream=n.slug, key=key)
                for n in self.nodes.values()
                for up, key in n.upstreams()
            ],
            storage=self._storage,
            run_config=RunConfigSpec(labels=sorted(labels)),
            schedule=self.schedule.spec() if self.schedule else None,
            core_version=__version__,
        )

    def serialized_hash(self) -> str:
        """A digest of the serialized flow: the natural registration idempotency key."""
        return hashlib.sha256(self.serialize().model_dump_json().encode()).hexdigest()

    # ---- backend ------------------------------------------------------------

    def register(
        self,
        project_name: str,
        version_group_id: str | None = None,
        idempotency_key: str | None = None,
        labels: list[str] | None = None,
        set_schedule_active: bool = True,
        no_url: bool = False,
    ) -> str | None:
        """Register the flow's metadata; prints and returns its id.

        The printout ends with the flow's page in the web UI when its URL is
        known (``no_url=True``: not, as in Prefect 1.x). Does nothing while an
        agent's runner is loading this script.
        """
        if context.get("loading_flow"):
            return None
        from flowbus.client import CLIENT_ERRORS, Client, describe_error
        from flowbus.links import flow_url
        from flowbus.settings import Settings

        settings = Settings()
        try:
            with Client(settings) as client:
                out = client.register(
                    self.serialize(),
                    project_name,
                    version_group_id=version_group_id,
                    idempotency_key=idempotency_key,
                    labels=labels,
                    set_schedule_active=set_schedule_active,
                )
        except CLIENT_ERRORS as exc:
            raise SystemExit(f"Error: {describe_error(exc)}") from None
        print(describe_registration(out, None if no_url else flow_url(settings, out.id)))
        return out.id

    def run_agent(self, labels: list[str] | None = None) -> None:
        """Start a local agent in this process that runs this flow's runs (Ctrl-C stops it)."""
        if context.get("loading_flow"):
            return
        from flowbus.agent.local import run_local_agent

        run_local_agent(labels=sorted(set(self.serialize().run_config.labels or []) | set(labels or [])))

    def run(self, parameters: dict[str, Any] | None = None) -> Any:
        """Run the flow here and now, without the backend."""
        from flowbus.sdk.engine import LocalHooks, run_flow

        return run_flow(self, parameters or {}, LocalHooks())


def describe_registration(out: FlowOut, url: str | None = None) -> str:
    head = f"Flow: {out.name}" + ("  (skipped: unchanged)" if out.skipped else "")
    lines = [
        head,
        f" └── ID: {out.id}",
        f" └── Project: {out.project_name}",
        f" └── Version: {out.version}",
        f" └── Labels: {out.labels}",
    ]
    return "\n".join(lines if url is None else [*lines, f"Flow URL: {url}"])


def _caller_storage() -> StorageSpec:
    """Where the code that builds this flow lives: the first frame outside flowbus."""
    # Frames walked by hand: inspect.stack() reads every frame's source (tens of
    # milliseconds per flow built, which a flow run's process pays at its start).
    frame: FrameType | None = sys._getframe(2)
    while frame is not None:
        globals_ = frame.f_globals
        frame = frame.f_back
        module = globals_.get("__name__", "")
        if module == "flowbus" or module.startswith("flowbus."):
            continue
        file = globals_.get("__file__")
        if module == "__main__" or module.startswith(LOADED_SCRIPT_PREFIX) or not _importable(module):
            path = str(Path(file).resolve()) if file else os.path.abspath(sys.argv[0] or "<interactive>")
            return StorageSpec(type="script", path=path)
        return StorageSpec(type="module", module=module)
    return StorageSpec(type="script", path=os.path.abspath(sys.argv[0] or "<interactive>"))


def _importable(module: str) -> bool:
    return bool(module) and module in sys.modules and getattr(sys.modules[module], "__spec__", None) is not None
