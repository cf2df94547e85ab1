"""Where a flow run's time goes: a timeline of its steps, as seen on the bus.

A tap subscribes to ``flowbus.>`` (a plain subscriber: it takes nothing
from the services' queue groups) and stamps every message about a run with
this process's clock. Requests are visible, replies are not (they go to
the requester's inbox), so each step is the moment its message appeared:

- ``create sent``: the bench sends ``create_flow_run`` (offset 0);
- ``queued``: the run-queue message (``flowbus.runq.*``), published by run creation;
- ``claim sent``: the agent's ``set_flow_run_state`` Submitted;
- ``flow run <State>``: the state events (``flowbus.evt.flow_run.<id>.state``);
- ``<State> sent``: the runner's state writes (Running, the final state);
- ``task run <State> sent`` / ``task run <State>``: the task runs' writes and events;
- ``get_flow_run #n``: reads of the run (whose is said by the steps around it);
- ``logs #n``: log batches on ``flowbus.logs.<id>``; the agent's "Submitted
  for execution: PID" record also gives ``process started`` (its timestamp);
- ``heartbeat``: the runner's first heartbeat.

``summarize`` gives each step's median offset from ``create sent`` over
the runs tapped, in milliseconds; steps are ordered by that median.
"""

from __future__ import annotations

import collections
import json
import statistics
import time
from datetime import datetime
from typing import Any

from nats.aio.msg import Msg

from flowbus import subjects


class Tap:
    """Every ``flowbus.>`` message, stamped, to be sorted per run afterwards."""

    def __init__(self) -> None:
        self.messages: list[tuple[float, str, bytes]] = []
        self.created: dict[str, float] = {}  # run id -> when its create was sent (perf_counter)
        self._sub: Any = None
        # time.time() - time.perf_counter(), to place wall-clock log timestamps on this clock.
        self._offset = time.time() - time.perf_counter()

    async def start(self, nc: Any) -> None:
        async def on_msg(msg: Msg) -> None:
            self.messages.append((time.perf_counter(), msg.subject, msg.data))

        self._sub = await nc.subscribe(f"{subjects.PREFIX}.>", cb=on_msg)

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None

    def steps(self) -> dict[str, list[tuple[str, float]]]:
        """Per run created: its steps, (label, ms since its create was sent), in order."""
        task_owner: dict[str, str] = {}  # task run id -> flow run id, from the task state events
        for _, subject, data in self.messages:
            if subject.endswith(".task_state"):
                event = json.loads(data)
                task_owner[event["task_run_id"]] = event["flow_run_id"]
        per_run: dict[str, list[tuple[str, float]]] = collections.defaultdict(list)
        counts: dict[tuple[str, str], int] = collections.Counter()

        def add(run: str, label: str, when: float) -> None:
            if run not in self.created:
                return
            counts[run, label] += 1
            n = counts[run, label]
            per_run[run].append((label if n == 1 else f"{label} #{n}", (when - self.created[run]) * 1000))

        for when, subject, data in self.messages:
            for run, label, at in self._classify(subject, data, task_owner):
                add(run, label, when if at is None else at)
        for run in self.created:
            per_run[run].append(("create sent", 0.0))
        return {run: sorted(steps, key=lambda s: s[1]) for run, steps in per_run.items()}

    def _classify(self, subject: str, data: bytes, task_owner: dict[str, str]) -> list[tuple[str, str, float | None]]:
        parts = subject.split(".")
        if subject.startswith(f"{subjects.PREFIX}.runq."):
            return [(json.loads(data)["flow_run_id"], "queued", None)]
        if subject == subjects.StateCommands.SET_FLOW_RUN_STATE:
            body = json.loads(data)
            state = body["state"]["type"]
            label = "claim sent (Submitted)" if state == "Submitted" else f"{state} sent"
            return [(body["flow_run_id"], label, None)]
        if subject == subjects.StateCommands.SET_TASK_RUN_STATE:
            body = json.loads(data)
            run = task_owner.get(body["task_run_id"], "")
            return [(run, f"task run {body['state']['type']} sent", None)]
        if subject == subjects.StateCommands.GET_FLOW_RUN:
            return [(json.loads(data)["flow_run_id"], "get_flow_run", None)]
        if parts[1:3] == ["evt", "flow_run"] and len(parts) == 5 and parts[4] in ("state", "task_state"):
            event = json.loads(data)
            kind = "flow run" if parts[4] == "state" else "task run"
            return [(parts[3], f"{kind} {event['state']['type']}", None)]
        if parts[1] == "logs" and len(parts) == 3:
            found: list[tuple[str, str, float | None]] = [(parts[2], "logs", None)]
            for record in json.loads(data)["records"]:
                if record["message"].startswith("Submitted for execution: PID"):
                    stamp = datetime.fromisoformat(record["timestamp"]).timestamp() - self._offset
                    found.append((parts[2], "process started", stamp))
            return found
        if parts[1:3] == ["hb", "flow_run"]:
            return [(parts[3], "heartbeat", None)]
        return []


def summarize(steps: dict[str, list[tuple[str, float]]]) -> list[list[Any]]:
    """Each step's median offset (ms) over the runs that had it, ordered by it: [[label, ms, runs], ...]."""
    offsets: dict[str, list[float]] = collections.defaultdict(list)
    for run_steps in steps.values():
        for label, ms in run_steps:
            offsets[label].append(ms)
    rows = [[label, round(statistics.median(values), 1), len(values)] for label, values in offsets.items()]
    return sorted(rows, key=lambda row: row[1])
