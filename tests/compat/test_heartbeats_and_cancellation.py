"""Item 5's heartbeats and cancellation with the real prefect 1.4.1 runner against `flowbus up`.

flowbus's Zombie Killer here fails a Running flow run after 4 missed beats of
2 s; Prefect's runner beats every second and checks for cancellation every
second (Prefect's own settings, as in the reference recording), so a long run
that stays Running well past 8 s shows that flowbus sees its heartbeats, and
cancelling it from flowbus (`flowbus cancel`) or through the gateway
(Prefect's ``Client.cancel_flow_run``) ends it Cancelled.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from tests.compat import flows
from tests.compat.harness import Agent, Flowbus, PrefectUser, poll, uuid_after

pytestmark = pytest.mark.compat

# The Zombie Killer's threshold: 4 missed beats of FLOWBUS_HEARTBEAT_INTERVAL.
ZOMBIE_AFTER = timedelta(seconds=8)


@pytest.fixture(scope="module")
def flowbus_settings() -> dict[str, str]:
    return {"FLOWBUS_HEARTBEAT_INTERVAL": "2", "FLOWBUS_HEARTBEAT__ZOMBIE_CHECK_INTERVAL_SECONDS": "0.5"}


@pytest.fixture(scope="module")
def prefect_settings() -> dict[str, str]:
    # Logs are shipped every second instead of every 5.
    return {
        "PREFECT__CLOUD__HEARTBEAT_INTERVAL": "1",
        "PREFECT__CLOUD__CHECK_CANCELLATION_INTERVAL": "1",
        "PREFECT__CLOUD__LOGGING_HEARTBEAT": "1",
    }


@pytest.fixture(scope="module")
def slow_runs(user: PrefectUser, agent: Agent, flowbus: Flowbus) -> dict[str, str]:
    """Two runs of slow-flow, each Running (its task sleeping) when the tests start: their ids."""
    user.write("slow_flow.py", flows.SLOW_FLOW)
    project = user.run("prefect", "create", "project", "tutorial")
    assert project.returncode == 0, str(project)
    registered = user.run("prefect", "register", "--project", "tutorial", "-p", "slow_flow.py")
    assert registered.returncode == 0, str(registered)
    ids = {}
    for name in ("compat-cancel-cli", "compat-cancel-client"):
        done = user.run("prefect", "run", "--project", "tutorial", "--name", "slow-flow", "--run-name", name)
        assert done.returncode == 0, str(done)
        ids[name] = uuid_after("UUID: ", done.stdout)
    for run_id in ids.values():
        flowbus.wait_for_state(run_id, "Running", timeout=90, context=agent.process.__str__)
        wait_for_log(flowbus, run_id, "Sleeping until cancelled")  # its task is running
    return ids


def wait_for_log(flowbus: Flowbus, flow_run_id: str, message: str) -> None:
    """Until the run has a stored log with ``message`` in it."""

    def probe() -> bool | None:
        return True if any(message in r.message for r in flowbus.client.get_flow_run_logs(flow_run_id)) else None

    poll(
        probe, f"a log {message!r} of flow run {flow_run_id}", timeout=60, context=lambda: flowbus.history(flow_run_id)
    )


def heartbeat(flowbus: Flowbus, flow_run_id: str) -> tuple[str, datetime | None, datetime]:
    """The run's state, last heartbeat and state timestamp, as the gateway shows them."""
    data = flowbus.graphql(f'query {{ flow_run_by_pk(id: "{flow_run_id}") {{ state heartbeat state_timestamp }} }}')
    row = data["flow_run_by_pk"]
    beat = datetime.fromisoformat(row["heartbeat"]) if row["heartbeat"] else None
    return row["state"], beat, datetime.fromisoformat(row["state_timestamp"])


def test_heartbeats_keep_a_long_run_alive(slow_runs: dict[str, str], flowbus: Flowbus) -> None:
    run_id = slow_runs["compat-cancel-cli"]

    def beating_long_enough() -> tuple[str, datetime | None, datetime] | None:
        state, beat, since = heartbeat(flowbus, run_id)
        assert state == "Running", f"{state} while its process beats\n{flowbus.history(run_id)}"
        # A heartbeat well past the state's own timestamp came from update_flow_run_heartbeat;
        # by then a run without heartbeats would have been failed as a zombie.
        return (state, beat, since) if beat is not None and beat - since > ZOMBIE_AFTER + timedelta(seconds=2) else None

    poll(beating_long_enough, "a heartbeat 10 s after Running", timeout=60, context=lambda: flowbus.history(run_id))


def test_flowbus_cancel_ends_a_running_prefect_run_cancelled(slow_runs: dict[str, str], flowbus: Flowbus) -> None:
    run_id = slow_runs["compat-cancel-cli"]
    done = flowbus.cli("cancel", run_id)
    assert done.returncode == 0, str(done)

    # Prefect's runner sees Cancelling at its next check, stops its task, and reports Cancelled.
    detail = flowbus.wait_for_state(run_id, "Cancelled", timeout=30)
    history = flowbus.history(run_id)
    types = [e.type.value for e in flowbus.client.get_flow_run_history(run_id)]
    assert types[-2:] == ["Cancelling", "Cancelled"], history
    assert [t.state.type.value for t in detail.task_runs] == ["Cancelled"], history
    assert any("Flow run has been cancelled" in r.message for r in flowbus.client.get_flow_run_logs(run_id)), history


def test_the_clients_cancel_flow_run_ends_a_running_run_cancelled(
    slow_runs: dict[str, str], flowbus: Flowbus, user: PrefectUser
) -> None:
    run_id = slow_runs["compat-cancel-client"]
    user.write("cancel_run.py", flows.CANCEL_RUN)
    done = user.run("python", "cancel_run.py", run_id)
    assert (done.returncode, done.stdout.strip()) == (0, "Cancelling"), str(done)

    flowbus.wait_for_state(run_id, "Cancelled", timeout=30)
    types = [e.type.value for e in flowbus.client.get_flow_run_history(run_id)]
    assert types[-2:] == ["Cancelling", "Cancelled"], flowbus.history(run_id)
