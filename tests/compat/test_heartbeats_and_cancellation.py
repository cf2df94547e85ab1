"""Heartbeats and cancellation with the real prefect 1.4.1 runner against `flowbus up`.

flowbus's Zombie Killer here fails a Running flow run after 4 missed beats
of 2 s; Prefect's runner beats every second, checks for cancellation every
second and ships its logs every second (Prefect's own settings, set in its
environment). A long run that stays Running well past 8 s shows that flowbus
sees its heartbeats; cancelling it from flowbus (`flowbus cancel`) or through
the gateway (Prefect's ``Client.cancel_flow_run``) ends it Cancelled; and
`prefect run --watch` streams its logs while it runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import pytest

from tests.helpers import prefect1_scripts as flows
from tests.helpers.prefect1 import Agent, Background, Flowbus, PrefectUser, assert_in_order, poll, uuid_after

pytestmark = pytest.mark.compat

# The Zombie Killer's threshold: 4 missed beats of FLOWBUS_HEARTBEAT_INTERVAL.
ZOMBIE_AFTER = timedelta(seconds=8)


@pytest.fixture(scope="module")
def flowbus_settings() -> dict[str, str]:
    return {"FLOWBUS_HEARTBEAT_INTERVAL": "2", "FLOWBUS_HEARTBEAT__ZOMBIE_CHECK_INTERVAL_SECONDS": "0.5"}


@pytest.fixture(scope="module")
def prefect_settings() -> dict[str, str]:
    return {
        "PREFECT__CLOUD__HEARTBEAT_INTERVAL": "1",
        "PREFECT__CLOUD__CHECK_CANCELLATION_INTERVAL": "1",
        "PREFECT__CLOUD__LOGGING_HEARTBEAT": "1",
    }


@dataclass
class SlowRuns:
    """Two runs of slow-flow, Running with their task asleep: one watched
    (`prefect run --watch`) and cancelled with `flowbus cancel`, one cancelled by the Client."""

    watched: str
    watch: Background
    other: str


@pytest.fixture(scope="module")
def slow_runs(user: PrefectUser, agent: Agent, flowbus: Flowbus) -> SlowRuns:
    user.write("slow_flow.py", flows.SLOW_FLOW)
    project = user.run("prefect", "create", "project", "tutorial")
    assert project.returncode == 0, str(project)
    registered = user.run("prefect", "register", "--project", "tutorial", "-p", "slow_flow.py")
    assert registered.returncode == 0, str(registered)
    run = ("prefect", "run", "--project", "tutorial", "--name", "slow-flow", "--run-name")
    watch = user.start("run-slow", *run, "compat-slow-watched", "--watch")
    other = user.run(*run, "compat-slow-other")
    assert other.returncode == 0, str(other)
    runs = SlowRuns(uuid_after("UUID: ", watch.wait_for("└── UUID: ", 60)), watch, uuid_after("UUID: ", other.stdout))
    for run_id in (runs.watched, runs.other):
        flowbus.wait_for_state(run_id, "Running", timeout=90, context=agent.process.__str__)
        flowbus.wait_for_log(run_id, "Sleeping until cancelled", timeout=60)  # its task is running
    return runs


def heartbeat(flowbus: Flowbus, flow_run_id: str) -> tuple[str, datetime | None, datetime]:
    """The run's state, last heartbeat and state timestamp, as the gateway shows them."""
    data = flowbus.graphql(f'query {{ flow_run_by_pk(id: "{flow_run_id}") {{ state heartbeat state_timestamp }} }}')
    row = data["flow_run_by_pk"]
    beat = datetime.fromisoformat(row["heartbeat"]) if row["heartbeat"] else None
    return row["state"], beat, datetime.fromisoformat(row["state_timestamp"])


def test_heartbeats_keep_a_long_run_alive(slow_runs: SlowRuns, flowbus: Flowbus) -> None:
    run_id = slow_runs.watched

    def beating_long_enough() -> datetime | None:
        state, beat, since = heartbeat(flowbus, run_id)
        assert state == "Running", f"{state} while its process beats\n{flowbus.history(run_id)}"
        # A heartbeat well past the state's own timestamp came from update_flow_run_heartbeat;
        # by then a run without heartbeats would have been failed as a zombie.
        return beat if beat is not None and beat - since > ZOMBIE_AFTER + timedelta(seconds=2) else None

    poll(beating_long_enough, "a heartbeat 10 s after Running", timeout=60, context=lambda: flowbus.history(run_id))


def test_flowbus_cancel_ends_a_running_prefect_run_cancelled(slow_runs: SlowRuns, flowbus: Flowbus) -> None:
    run_id = slow_runs.watched
    done = flowbus.cli("cancel", run_id)
    assert done.returncode == 0, str(done)

    # Prefect's runner sees Cancelling at its next check, stops its task, and reports Cancelled.
    detail = flowbus.wait_for_state(run_id, "Cancelled", timeout=30)
    history = flowbus.history(run_id)
    types = [e.type.value for e in flowbus.client.get_flow_run_history(run_id)]
    assert types[-2:] == ["Cancelling", "Cancelled"], history
    assert [t.state.type.value for t in detail.task_runs] == ["Cancelled"], history
    flowbus.wait_for_log(run_id, "Flow run has been cancelled")

    # The watch streamed the run's log while it ran, then its end; Cancelled is
    # neither success nor failure to `prefect run`.
    watched = slow_runs.watch.finish(120)
    assert_in_order(
        watched.stdout,
        [
            "Entered state <Running>: Running flow.",
            "Sleeping until cancelled",
            "Entered state <Cancelling>",
            "Entered state <Cancelled>",
            "Flow run is in unexpected state",
        ],
        watched,
    )
    assert watched.returncode == 1, str(watched)


def test_the_clients_cancel_flow_run_ends_a_running_run_cancelled(
    slow_runs: SlowRuns, flowbus: Flowbus, user: PrefectUser
) -> None:
    run_id = slow_runs.other
    user.write("cancel_run.py", flows.CANCEL_RUN)
    done = user.run("python", "cancel_run.py", run_id)
    assert (done.returncode, done.stdout.strip()) == (0, "Cancelling"), str(done)

    flowbus.wait_for_state(run_id, "Cancelled", timeout=30)
    types = [e.type.value for e in flowbus.client.get_flow_run_history(run_id)]
    assert types[-2:] == ["Cancelling", "Cancelled"], flowbus.history(run_id)
