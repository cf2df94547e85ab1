"""Running flows with the real prefect 1.4.1 against `flowbus up`: `prefect
agent local start` runs what `prefect run` creates; the runner inside its
subprocess (mapped tasks, retries, logs); `--execute`; the run options; the
Client calls of the 1.x flow-run docs; child flow runs; `flow.run_agent()`;
`prefect get flow-runs` and `prefect get logs`.

One `flowbus up` and one agent (``--label compat``, plus the hostname the
agent adds) serve the module. To keep the tier's cost down, the watched runs
are started together when the module starts (``launched``), as several users
would, and each test waits for its own; the agent is poked rather than left
to back off (tests/helpers/prefect1.py).

A watch shows the logs the backend has when it polls, and a flow-run process
ships its logs every 5 s and when it exits, after its final state: a short
run's logs (``Hello, Cloud!``) may reach the backend after `--watch` saw the
run end, against Prefect Server as against flowbus. So the logs are checked
where they are stored (and with `prefect get logs`); a watch's streaming of
logs is checked with a long run (test_heartbeats_and_cancellation.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest

from flowbus.schemas.runs import FlowRunDetail, FlowRunOut
from tests.helpers import prefect1_scripts as flows
from tests.helpers.prefect1 import (
    HOSTNAME,
    Agent,
    Background,
    Finished,
    Flowbus,
    PrefectUser,
    assert_in_order,
    uuid_after,
)

pytestmark = pytest.mark.compat

# How long a watched run may take from its command's start, with the others, on a loaded 2-core machine.
RUN_TIMEOUT = 90


@pytest.fixture(scope="module")
def registered(user: PrefectUser) -> dict[str, str]:
    """The project and the flows: hello-flow with ``flow.register`` (the 1.x tutorial),
    the others with `prefect register`; the flow ids by name."""
    for name, source in {
        "hello_flow.py": flows.HELLO_FLOW,
        "failing_flow.py": flows.FAILING_FLOW,
        "map_flow.py": flows.MAP_FLOW,
        "retry_flow.py": flows.RETRY_FLOW,
        "parent_flow.py": flows.PARENT_FLOW,
    }.items():
        user.write(name, source)
    project = user.run("prefect", "create", "project", "tutorial")
    assert project.returncode == 0, str(project)
    hello = user.run("python", "hello_flow.py")
    assert hello.returncode == 0, str(hello)
    others = user.run(
        "prefect", "register", "--project", "tutorial",
        "-p", "failing_flow.py", "-p", "map_flow.py", "-p", "retry_flow.py", "-p", "parent_flow.py",
    )  # fmt: skip
    assert others.returncode == 0, str(others)
    assert "4 registered" in others.stdout, str(others)
    ids = {"hello-flow": uuid_after("ID: ", hello.stdout)}
    for name in ("failing-flow", "map-flow", "retry-flow", "parent-flow"):
        ids[name] = uuid_after("ID: ", others.stdout.split(f"Registering '{name}'...", 1)[1])
    return ids


@pytest.fixture(scope="module")
def launched(user: PrefectUser, agent: Agent, registered: dict[str, str]) -> dict[str, Background]:
    """The module's `prefect run` commands, started together.

    ``elsewhere`` asks for a label no agent has, and goes first: every other run
    is created after it, so the agent polls many times while it exists. Its user
    answers "y" when Ctrl-C asks whether to cancel the run.
    """
    run = ("prefect", "run", "--project", "tutorial", "--name")
    started = {
        "elsewhere": user.start(
            "run-elsewhere", *run, "hello-flow", "--label", "elsewhere", "--run-name", "compat-elsewhere", "--watch",
            stdin="y\n",
        ),
    }  # fmt: skip
    started["elsewhere"].wait_for("└── UUID: ", timeout=60)
    started |= {
        "hello": user.start("run-hello", *run, "hello-flow", "--watch"),
        "failing": user.start("run-failing", *run, "failing-flow", "--watch"),
        "options": user.start(
            "run-options", *run, "hello-flow",
            "--param", "name=Marvin", "--run-name", "compat-marvin", "--label", "compat", "--watch",
        ),
        "execute": user.start("run-execute", *run, "hello-flow", "--run-name", "compat-execute", "--execute"),
        "map": user.start("run-map", *run, "map-flow", "--watch"),
        "retry": user.start("run-retry", *run, "retry-flow", "--watch"),
        "parent": user.start("run-parent", *run, "parent-flow", "--watch"),
    }  # fmt: skip
    return started


def our_agent_id(flowbus: Flowbus, agent: Agent) -> str:
    """The id flowbus gave `prefect agent local start` (LocalAgent, labels compat + hostname)."""
    agents = flowbus.client.get_agents().agents
    ours = [a.id for a in agents if a.type == "LocalAgent" and sorted(a.labels) == sorted(agent.labels)]
    assert len(ours) == 1, f"agents stored: {agents}\n{agent.process}"
    return ours[0]


def finished_run(flowbus: Flowbus, done: Finished) -> FlowRunDetail:
    """The stored run a finished `prefect run` printed, once it is finished in flowbus too."""
    run_id = uuid_after("UUID: ", done.stdout)
    return flowbus.wait_for_state(run_id, "Success", "Failed", "Cancelled", timeout=30, context=lambda: str(done))


def state_types(flowbus: Flowbus, flow_run_id: str, task_run_id: str | None = None) -> list[str]:
    """The states the flow run (or one of its task runs) went through, oldest first."""
    entries = flowbus.client.get_flow_run_history(flow_run_id, include_task_runs=task_run_id is not None)
    return [e.type.value for e in entries if e.task_run_id == task_run_id]


def runs_named(flowbus: Flowbus, name: str) -> list[FlowRunOut]:
    return [r for r in flowbus.client.get_flow_runs(project_name="tutorial", limit=500) if r.name == name]


def test_the_agent_registers_with_its_labels_and_the_hostname(agent: Agent, flowbus: Flowbus) -> None:
    # LocalAgent adds the host's name to the labels it is given.
    assert f"Starting LocalAgent with labels {['compat', HOSTNAME]}" in agent.process.output(), str(agent.process)
    our_agent_id(flowbus, agent)


def test_run_watch_shows_the_states_and_hello_cloud(
    launched: dict[str, Background], flowbus: Flowbus, agent: Agent, registered: dict[str, str]
) -> None:
    done = launched["hello"].finish(RUN_TIMEOUT)
    assert done.returncode == 0, str(done)
    assert_in_order(
        done.stdout,
        [
            "Creating run for flow 'hello-flow'... Done",
            f"└── Labels: ['{HOSTNAME}']",  # the flow's labels: Local storage's hostname
            "└── Parameters: {'name': 'Cloud'}",  # the parameter's default, filled in by the backend
            "Watching flow run execution...",
            "Entered state <Submitted>: Submitted for execution",
            "Entered state <Running>: Running flow.",
            "Entered state <Success>: All reference tasks succeeded.",
            "Flow run succeeded!",
        ],
        done,
    )

    detail = finished_run(flowbus, done)
    run = detail.run
    history = flowbus.history(run.id)
    assert run.state.type.value == "Success", history
    assert (run.flow_id, run.labels, run.parameters) == (registered["hello-flow"], [HOSTNAME], {"name": "Cloud"})
    # The agent claimed it (Submitted, recording which agent) before the runner ran it.
    assert run.agent_id == our_agent_id(flowbus, agent), history
    assert state_types(flowbus, run.id) == ["Scheduled", "Submitted", "Running", "Success"], history
    # The task runs were there from the start and each ran once.
    assert sorted((t.task_slug, t.map_index, t.state.type.value) for t in detail.task_runs) == [
        ("name", -1, "Success"),
        ("say_hello-1", -1, "Success"),
    ], history
    messages = flowbus.wait_for_log(run.id, "Hello, Cloud!")
    assert any(m.startswith("Submitted for execution: PID: ") for m in messages), history

    # An ordinary flowbus run: its own CLI lists it.
    listed = flowbus.cli("get", "flow-runs", "--project", "tutorial", "--limit", "500")
    assert listed.returncode == 0, str(listed)
    assert any(run.id in line and "Success" in line for line in listed.stdout.splitlines()), str(listed)


def test_a_failing_flow_run_exits_1(launched: dict[str, Background], flowbus: Flowbus) -> None:
    done = launched["failing"].finish(RUN_TIMEOUT)
    assert done.returncode == 1, str(done)
    assert_in_order(done.stdout, ["Entered state <Failed>: Some reference tasks failed.", "Flow run failed!"], done)

    detail = finished_run(flowbus, done)
    history = flowbus.history(detail.run.id)
    assert detail.run.state.type.value == "Failed", history
    assert [(t.task_slug, t.state.type.value) for t in detail.task_runs] == [("broken-1", "Failed")], history
    flowbus.wait_for_log(detail.run.id, "this flow fails on purpose")


def test_param_run_name_and_label_reach_the_run(
    launched: dict[str, Background], flowbus: Flowbus, agent: Agent
) -> None:
    done = launched["options"].finish(RUN_TIMEOUT)
    assert done.returncode == 0, str(done)
    for line in ("└── Name: compat-marvin", "└── Labels: ['compat']", "└── Parameters: {'name': 'Marvin'}"):
        assert line in done.stdout, str(done)
    assert "Flow run succeeded!" in done.stdout, str(done)

    run = finished_run(flowbus, done).run
    history = flowbus.history(run.id)
    assert (run.name, run.labels, run.parameters) == ("compat-marvin", ["compat"], {"name": "Marvin"}), history
    # ["compat"] is a subset of the agent's labels: it took the run.
    assert (run.state.type.value, run.agent_id) == ("Success", our_agent_id(flowbus, agent)), history
    flowbus.wait_for_log(run.id, "Hello, Marvin!")


def test_a_run_whose_labels_no_agent_has_waits_and_watch_says_why(
    launched: dict[str, Background], flowbus: Flowbus
) -> None:
    watching = launched["elsewhere"]
    run_id = uuid_after("UUID: ", watching.output())
    # While the others run, the agent polls many times; it never takes this one.
    watching.wait_for("has not been submitted by an agent", timeout=RUN_TIMEOUT)
    assert "do not have an agent with labels {'elsewhere'}" in watching.output(), str(watching)
    assert flowbus.flow_run(run_id).run.state.type.value == "Scheduled", flowbus.history(run_id)

    # Ctrl-C; the user answers "y" to cancelling the run (cancel_flow_run of a Scheduled run).
    watching.stop(grace=30)
    done = watching.finish(5)
    assert "Do you want to cancel this flow run?" in done.stdout, str(done)
    assert "Cancelled flow run." in done.stdout, str(done)
    assert flowbus.wait_for_state(run_id, "Cancelled", timeout=10).run.agent_id is None


def test_execute_runs_the_flow_without_an_agent(launched: dict[str, Background], flowbus: Flowbus) -> None:
    done = launched["execute"].finish(RUN_TIMEOUT)
    assert done.returncode == 0, str(done)
    # The flow-run process prints its logs to this terminal.
    assert_in_order(done.stdout, ["Executing flow run...", "Hello, Cloud!", "Flow run succeeded!"], done)

    run = finished_run(flowbus, done).run
    history = flowbus.history(run.id)
    assert run.state.type.value == "Success", history
    # A label of its own keeps every agent away; none claimed it.
    assert [label[: len("agentless-run-")] for label in run.labels] == ["agentless-run-"], run.labels
    assert run.agent_id is None, history
    assert "Submitted" not in state_types(flowbus, run.id), history


def test_mapped_tasks_run_in_the_runner(launched: dict[str, Background], flowbus: Flowbus) -> None:
    done = launched["map"].finish(RUN_TIMEOUT)
    assert done.returncode == 0, str(done)
    assert "Flow run succeeded!" in done.stdout, str(done)

    detail = finished_run(flowbus, done)
    history = flowbus.history(detail.run.id)
    assert detail.run.state.type.value == "Success", history
    # The mapped parent ends Mapped; its children were created by get_or_create_task_run_info.
    assert sorted((t.task_slug, t.map_index, t.state.type.value) for t in detail.task_runs) == [
        ("double-1", -1, "Mapped"),
        ("double-1", 0, "Success"),
        ("double-1", 1, "Success"),
        ("double-1", 2, "Success"),
        ("numbers-1", -1, "Success"),
        ("total-1", -1, "Success"),
    ], history
    # The reduce got the children's results: 2 + 4 + 6.
    flowbus.wait_for_log(detail.run.id, "Total: 12")


def test_a_failed_task_is_retried_after_its_delay(launched: dict[str, Background], flowbus: Flowbus) -> None:
    done = launched["retry"].finish(RUN_TIMEOUT)
    assert done.returncode == 0, str(done)
    assert "Flow run succeeded!" in done.stdout, str(done)

    detail = finished_run(flowbus, done)
    run_id = detail.run.id
    history = flowbus.history(run_id)
    assert detail.run.state.type.value == "Success", history
    [flaky] = detail.task_runs
    assert (flaky.task_slug, flaky.state.type.value) == ("flaky-1", "Success"), history
    # Failed, then Retrying (with its start time and run count), then run again.
    assert state_types(flowbus, run_id, flaky.id)[-4:] == ["Failed", "Retrying", "Running", "Success"], history
    flowbus.wait_for_log(run_id, "The second attempt succeeded")


def test_a_child_flow_run_is_created_and_waited_for(
    launched: dict[str, Background], flowbus: Flowbus, registered: dict[str, str]
) -> None:
    done = launched["parent"].finish(RUN_TIMEOUT)
    assert done.returncode == 0, str(done)
    assert "Flow run succeeded!" in done.stdout, str(done)

    parent = finished_run(flowbus, done)
    history = flowbus.history(parent.run.id)
    assert parent.run.state.type.value == "Success", history
    children = runs_named(flowbus, f"{parent.run.name}-hello-flow")
    assert len(children) == 1, (children, history)
    child = children[0]
    assert (child.flow_id, child.parameters, child.state.type.value) == (
        registered["hello-flow"],
        {"name": "Child"},
        "Success",
    ), flowbus.history(child.id)
    # Its idempotency key is the creating task run's id: a retried parent makes no second child.
    creator = next(t for t in parent.task_runs if t.task_slug.startswith("create_flow_run"))
    assert (child.idempotency_key or "").startswith(creator.id), (child.idempotency_key, creator.id)
    flowbus.wait_for_log(child.id, "Hello, Child!")
    # wait_for_flow_run(stream_logs=True) relays what it watched into the parent's logs.
    flowbus.wait_for_log(parent.run.id, f"Flow '{child.name}': Entered state <Success>")


def test_the_same_idempotency_key_gives_the_same_run(user: PrefectUser, flowbus: Flowbus) -> None:
    command = ("prefect", "run", "--project", "tutorial", "--name", "hello-flow", "--idempotency-key", "compat-key-1")
    first = user.run(*command)
    assert first.returncode == 0, str(first)
    again = user.run(*command)
    assert again.returncode == 0, str(again)
    run_id = uuid_after("UUID: ", first.stdout)
    assert uuid_after("UUID: ", again.stdout) == run_id, f"{first}\n{again}"

    keyed = [
        r
        for r in flowbus.client.get_flow_runs(project_name="tutorial", limit=500)
        if r.idempotency_key == "compat-key-1"
    ]
    assert [r.id for r in keyed] == [run_id], keyed


def test_a_run_scheduled_for_later_starts_no_earlier(
    user: PrefectUser, flowbus: Flowbus, registered: dict[str, str], agent: Agent
) -> None:
    # prefect 1.4.1's `prefect run` has no start-time option: a later start is
    # given through the Client, and the agent waits for it.
    user.write("start_later.py", flows.START_LATER)
    done = user.run("python", "start_later.py", registered["hello-flow"], "4")
    assert done.returncode == 0, str(done)
    run_id, requested = done.stdout.split()
    start = datetime.fromisoformat(requested)

    run = flowbus.wait_for_state(run_id, "Success", "Failed", timeout=60, context=agent.process.__str__).run
    history = flowbus.history(run_id)
    assert run.state.type.value == "Success", history
    assert abs(run.scheduled_start_time - start) < timedelta(seconds=1), (run.scheduled_start_time, start)
    assert run.start_time is not None, history
    assert run.start_time >= start, (run.start_time, start, history)


def test_the_client_creates_reads_and_sets_the_state_of_a_run(
    user: PrefectUser, flowbus: Flowbus, registered: dict[str, str]
) -> None:
    user.write("client_api.py", flows.CLIENT_API)
    done = user.run("python", "client_api.py", registered["hello-flow"])
    assert done.returncode == 0, str(done)
    try:
        seen = json.loads(done.stdout.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        raise AssertionError(f"no JSON summary:\n{done}") from None

    shown = json.dumps(seen, indent=2)
    run_id = seen["run_id"]
    created, after = seen["created"], seen["after"]
    # create_flow_run returns the id; get_flow_run_info reads it back as created.
    assert (created["id"], created["name"], created["flow_id"]) == (run_id, "client-api-run", registered["hello-flow"])
    assert (created["state"], created["message"], created["version"]) == ("Scheduled", "Flow run scheduled.", 1), shown
    assert (created["parameters"], created["context"], created["project"]) == ({"name": "Client"}, {}, "tutorial")
    start, requested = (
        datetime.fromisoformat(created["scheduled_start_time"]),
        datetime.fromisoformat(seen["requested_start"]),
    )
    assert abs(start - requested) < timedelta(seconds=1), shown
    # The task runs exist before anything runs, Pending.
    assert [(t["slug"], t["state"]) for t in created["task_runs"]] == [("name", "Pending"), ("say_hello-1", "Pending")]

    # set_flow_run_state with the version just read applies, and the version moves on.
    assert seen["returned"] == "Success", shown
    assert (after["state"], after["message"], after["version"]) == ("Success", "It worked!", created["version"] + 1)
    stored = flowbus.flow_run(run_id).run
    assert (stored.state.type.value, stored.state.message, stored.version) == (
        "Success",
        "It worked!",
        after["version"],
    )

    # cancel_flow_run of a run that has not started: Cancelled at once.
    assert seen["cancel_flow_run"] == "Cancelled", shown
    assert flowbus.flow_run(seen["other"]).run.state.type.value == "Cancelled"


@pytest.fixture
def own_agent(user: PrefectUser) -> Iterator[Background]:
    """`python own_agent_flow.py`: ``flow.register()`` then ``flow.run_agent()``, serving until the test ends."""
    user.write("own_agent_flow.py", flows.RUN_AGENT_FLOW)
    process = user.start("own-agent", "python", "own_agent_flow.py")
    try:
        yield process
    finally:
        process.stop(grace=10)


def test_flow_run_agent_serves_the_flows_runs(
    own_agent: Background, user: PrefectUser, flowbus: Flowbus, agent: Agent, registered: dict[str, str]
) -> None:
    own_agent.wait_for("Waiting for flow runs...", timeout=60)
    done = user.run(
        "prefect", "run", "--project", "tutorial", "--name", "own-agent-flow", "--watch", timeout=RUN_TIMEOUT
    )
    assert done.returncode == 0, f"{done}\n{own_agent}"
    assert "Flow run succeeded!" in done.stdout, f"{done}\n{own_agent}"

    run = finished_run(flowbus, done).run
    # The module's agent lacks the "own-agent" label; the flow's own agent took it.
    assert run.agent_id is not None, flowbus.history(run.id)
    assert run.agent_id != our_agent_id(flowbus, agent), flowbus.history(run.id)
    assert sorted(run.labels) == sorted({"own-agent", HOSTNAME}), run.labels
    flowbus.wait_for_log(run.id, "Run by the flow's own agent")


def test_get_flow_runs_lists_the_runs(launched: dict[str, Background], user: PrefectUser) -> None:
    options = launched["options"].finish(RUN_TIMEOUT)
    run_id = uuid_after("UUID: ", options.stdout)

    done = user.run("prefect", "get", "flow-runs", "--flow", "hello-flow", "--limit", "50")
    assert done.returncode == 0, str(done)
    header, *rows = done.stdout.strip().splitlines()
    assert header.split()[:3] == ["NAME", "FLOW", "NAME"], str(done)
    mine = [row.split() for row in rows if run_id in row]
    assert len(mine) == 1, str(done)
    assert mine[0][:3] == ["compat-marvin", "hello-flow", "Success"], str(done)


def test_get_logs_shows_a_runs_logs(launched: dict[str, Background], user: PrefectUser, flowbus: Flowbus) -> None:
    options = launched["options"].finish(RUN_TIMEOUT)
    assert options.returncode == 0, str(options)
    flowbus.wait_for_log(uuid_after("UUID: ", options.stdout), "Hello, Marvin!")

    done = user.run("prefect", "get", "logs", "--name", "compat-marvin")
    assert done.returncode == 0, str(done)
    assert done.stdout.split()[:3] == ["TIMESTAMP", "LEVEL", "MESSAGE"], str(done)
    assert_in_order(done.stdout, ["Submitted for execution: PID: ", "Hello, Marvin!"], done)
    assert any("INFO" in line and "Hello, Marvin!" in line for line in done.stdout.splitlines()), str(done)
