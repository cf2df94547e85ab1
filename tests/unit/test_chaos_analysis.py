"""The chaos tier's figures (tests/helpers/chaos.py) catch what they name: a zero there is not vacuous.

Each case builds the rows, ledger lines and events of a few runs by hand,
with one defect, and checks that exactly its figure counts it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flowbus.states import StateType
from tests.helpers.chaos import (
    HistoryRow,
    Inputs,
    Load,
    RunRow,
    TaskRunRow,
    _event_figures,
    _history_figures,
    _run_figures,
)


def _run(run_id: str, state: StateType = StateType.SUCCESS, version: int = 4, key: str | None = None) -> RunRow:
    return RunRow(run_id, "flow", state, None, version, key, None, 0)


def _history(run_id: str, versions: list[tuple[int, str]], task_run_id: str | None = None) -> list[HistoryRow]:
    return [HistoryRow(run_id, task_run_id, kind, version) for version, kind in versions]


FLOW_HISTORY = [(1, "Scheduled"), (2, "Submitted"), (3, "Running"), (4, "Success")]
TASK_HISTORY = [(2, "Running"), (3, "Success")]


def _events(history: list[HistoryRow]) -> list[tuple[str, str, dict[str, Any]]]:
    """What the services publish for ``history``: a ``created`` per run, a (task_)state per entry."""
    created: list[tuple[str, str, dict[str, Any]]] = [
        (h.flow_run_id, "created", {}) for h in history if h.task_run_id is None and h.version == 1
    ]
    states = [
        (
            h.flow_run_id,
            "task_state" if h.task_run_id else "state",
            {"task_run_id": h.task_run_id, "version": h.version, "state": {"type": h.type}},
        )
        for h in history
    ]
    return created + states


def _ledger(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "executions.txt"
    path.write_text("".join(f"{line} 1 1 0.0\n" for line in lines))
    return path


def test_a_clean_run_counts_nothing(tmp_path: Path) -> None:
    runs = [_run("r1", key="k1")]
    history = _history("r1", FLOW_HISTORY) + _history("r1", TASK_HISTORY, "t1")
    tasks = [TaskRunRow("t1", "r1", "Success", 3)]
    load = Load(acked={"k1": "r1"})
    assert not any(_run_figures(runs, Inputs(["flow"], load, _ledger(tmp_path, ["start r1", "end r1"]))).values())
    assert not any(_history_figures(runs, history, tasks).values())
    assert not any(_event_figures(runs, history, _events(history)).values())


def test_lost_duplicated_stuck_and_failed_runs_are_counted(tmp_path: Path) -> None:
    runs = [
        _run("r1", key="k1"),
        _run("r1b", key="k1"),  # a second run for one key
        _run("r2", StateType.RUNNING, key="k2"),  # stuck
        _run("r3", StateType.FAILED, key="k3"),  # its task had completed
        _run("r4", key="k4"),  # Success, never executed
    ]
    load = Load(acked={"k1": "r1", "k2": "r2", "k3": "r3", "k4": "r4", "k5": "r5", "k6": None})
    ledger = _ledger(tmp_path, ["start r1", "end r1", "start r1", "start r2", "start r3", "end r3"])
    figures = _run_figures(runs, Inputs(["flow"], load, ledger))
    assert figures == {
        "unacknowledged": 1,  # k6
        "lost": 1,  # r5
        "duplicated": 1,  # k1
        "ack_mismatch": 0,
        "executed_more_than_once": 1,  # r1
        "success_without_execution": 2,  # r1b and r4
        "stuck": 1,  # r2
        "failed_after_running": 1,  # r3
        "failed_healthy": 1,  # r3
    }
    # A run the fault killed may end Failed.
    killed = _run_figures(runs, Inputs(["flow"], load, ledger, killed_runs=frozenset({"r3"})))
    assert (killed["failed_healthy"], killed["failed_after_running"]) == (0, 0)


def test_history_gaps_duplicates_and_a_disagreeing_row_are_counted() -> None:
    runs = [_run("gap"), _run("dup"), _run("tail", StateType.RUNNING)]
    history = (
        _history("gap", [(1, "Scheduled"), (2, "Submitted"), (4, "Success")])
        + _history("dup", [*FLOW_HISTORY, (4, "Success")])
        + _history("tail", FLOW_HISTORY)
    )
    figures = _history_figures(runs, history, [])
    assert (figures["history_gaps"], figures["history_duplicates"], figures["history_tail_mismatch"]) == (1, 1, 1)


def test_missing_and_extra_events_are_counted() -> None:
    runs = [_run("r1")]
    history = _history("r1", FLOW_HISTORY) + _history("r1", TASK_HISTORY, "t1")
    events = _events(history)
    without_one = [e for e in events if not (e[1] == "task_state" and e[2]["version"] == 3)]
    assert _event_figures(runs, history, without_one) == {"events_missing": 1, "events_extra": 0}
    twice = [*events, events[-1]]
    assert _event_figures(runs, history, twice) == {"events_missing": 0, "events_extra": 1}
    no_created = [e for e in events if e[1] != "created"]
    assert _event_figures(runs, history, no_created)["events_missing"] == 1
