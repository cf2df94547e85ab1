"""Projects and registration with the real prefect 1.4.1 CLI and client against
`flowbus up`: `prefect create project`, the three ways to register the 1.x
tutorial's flow, and `prefect get flows` / `prefect describe flows`.

The expected outputs are what the CLI prints against Prefect Server.
"""

from __future__ import annotations

import json

import httpx
import pytest

from flowbus.schemas.flows import FlowOut
from tests.helpers.prefect1 import HOSTNAME, Finished, Flowbus, PrefectUser, uuid_after
from tests.helpers.prefect1_scripts import HELLO_FLOW, HELLO_FLOW_IDEMPOTENT

pytestmark = pytest.mark.compat


def versions(flowbus: Flowbus, name: str = "hello-flow") -> list[FlowOut]:
    """Every version of the flow in "tutorial", newest first."""
    return flowbus.client.get_flows(project_name="tutorial", name=name, newest_only=False)


def assert_newest_and_only_unarchived(flowbus: Flowbus, flow_id: str, context: Finished) -> FlowOut:
    """``flow_id`` is the newest version of its group and the only one not archived."""
    all_versions = versions(flowbus)
    by_id = {f.id: f for f in all_versions}
    assert flow_id in by_id, f"flow {flow_id} is not stored; stored: {[f.id for f in all_versions]}\n{context}"
    flow = by_id[flow_id]
    group = [f for f in all_versions if f.flow_group_id == flow.flow_group_id]
    assert flow.version == max(f.version for f in group), [(f.id, f.version) for f in group]
    assert [f.id for f in group if not f.archived] == [flow_id], [(f.id, f.version, f.archived) for f in group]
    return flow


@pytest.fixture(scope="module")
def tutorial(user: PrefectUser) -> Finished:
    """`prefect create project tutorial`, as the tutorial starts."""
    return user.run("prefect", "create", "project", "tutorial")


@pytest.fixture(scope="module")
def hello_registered(user: PrefectUser, tutorial: Finished) -> Finished:
    """`python hello_flow.py`: the tutorial's ``flow.register(project_name="tutorial")``."""
    assert tutorial.returncode == 0, str(tutorial)
    user.write("hello_flow.py", HELLO_FLOW)
    return user.run("python", "hello_flow.py")


def test_create_project_prints_created_and_a_repeat_does_too(user: PrefectUser, flowbus: Flowbus) -> None:
    first = user.run("prefect", "create", "project", "demo")
    assert (first.returncode, first.stdout.strip()) == (0, "demo created"), str(first)

    # Prefect Server answers the duplicate with 'Uniqueness violation.', on which
    # the client looks the project up and reports it created all the same.
    again = user.run("prefect", "create", "project", "demo")
    assert (again.returncode, again.stdout.strip()) == (0, "demo created"), str(again)

    assert [p.name for p in flowbus.client.get_projects()].count("demo") == 1


def test_create_project_skip_if_exists(user: PrefectUser, flowbus: Flowbus) -> None:
    first = user.run("prefect", "create", "project", "skipping", "--skip-if-exists")
    assert (first.returncode, first.stdout.strip()) == (0, "skipping created"), str(first)

    again = user.run("prefect", "create", "project", "skipping", "--skip-if-exists")
    assert (again.returncode, again.stdout.strip()) == (0, "skipping already exists"), str(again)

    assert [p.name for p in flowbus.client.get_projects()].count("skipping") == 1


def test_flow_register_stores_the_flow_with_its_tasks_and_the_hostname_label(
    hello_registered: Finished, flowbus: Flowbus
) -> None:
    done = hello_registered
    assert done.returncode == 0, str(done)
    assert "Flow URL: " in done.stdout, str(done)
    assert "└── Project: tutorial" in done.stdout, str(done)
    # Local storage labels the flow with the host it was stored on.
    assert f"└── Labels: ['{HOSTNAME}']" in done.stdout, str(done)
    flow_id = uuid_after("ID: ", done.stdout)

    flow = assert_newest_and_only_unarchived(flowbus, flow_id, done)
    # Its link opens flowbus's web UI: Prefect names the flow group, after the tenant's slug.
    ui = flowbus.graphql_url.removesuffix("/graphql")
    assert f"Flow URL: {ui}/default/flow/{flow.flow_group_id}" in done.stdout, str(done)
    page = httpx.get(f"{ui}/default/flow/{flow.flow_group_id}")
    assert (page.status_code, page.headers["content-type"]) == (200, "text/html; charset=utf-8")
    assert (flow.name, flow.project_name) == ("hello-flow", "tutorial")
    assert HOSTNAME in flow.labels, flow.labels
    assert flow.core_version == "1.4.1"
    # register_tasks sent the tasks without ids; the slugs are Prefect's.
    assert sorted(t.slug for t in flow.tasks) == ["name", "say_hello-1"], flow.tasks
    assert [(p.name, p.default) for p in flow.parameters] == [("name", "Cloud")], flow.parameters


def test_flow_register_with_an_unchanged_idempotency_key_creates_no_new_version(
    user: PrefectUser, flowbus: Flowbus, tutorial: Finished
) -> None:
    assert tutorial.returncode == 0, str(tutorial)
    user.write("hello_flow_idempotent.py", HELLO_FLOW_IDEMPOTENT)

    first = user.run("python", "hello_flow_idempotent.py")
    assert first.returncode == 0, str(first)
    flow_id = uuid_after("ID: ", first.stdout)
    count = len(versions(flowbus))

    again = user.run("python", "hello_flow_idempotent.py")
    assert again.returncode == 0, str(again)
    assert uuid_after("ID: ", again.stdout) == flow_id, f"{first}\n{again}"
    assert len(versions(flowbus)) == count, [(f.id, f.version) for f in versions(flowbus)]
    assert_newest_and_only_unarchived(flowbus, flow_id, again)


def test_prefect_register_twice_skips_the_unchanged_flow(
    user: PrefectUser, flowbus: Flowbus, tutorial: Finished
) -> None:
    assert tutorial.returncode == 0, str(tutorial)
    user.write("hello_flow.py", HELLO_FLOW)

    first = user.run("prefect", "register", "--project", "tutorial", "-p", "hello_flow.py")
    assert first.returncode == 0, str(first)
    assert "Registering 'hello-flow'... Done" in first.stdout, str(first)
    assert "1 registered" in first.stdout, str(first)
    flow_id = uuid_after("ID: ", first.stdout)
    # The CLI prints the version it expects: the newest one before, plus one.
    printed_version = int(uuid_after("Version: ", first.stdout))
    flow = assert_newest_and_only_unarchived(flowbus, flow_id, first)
    assert flow.version == printed_version, f"stored version {flow.version}\n{first}"

    again = user.run("prefect", "register", "--project", "tutorial", "-p", "hello_flow.py")
    assert again.returncode == 0, str(again)
    assert "Registering 'hello-flow'... Skipped (metadata unchanged)" in again.stdout, str(again)
    assert "0 registered, 1 skipped" in again.stdout, str(again)
    assert_newest_and_only_unarchived(flowbus, flow_id, again)


def test_prefect_register_of_an_unknown_project_says_so(user: PrefectUser) -> None:
    user.write("hello_flow.py", HELLO_FLOW)
    done = user.run("prefect", "register", "--project", "no-such-project", "-p", "hello_flow.py")
    assert done.returncode == 1, str(done)
    assert "Project 'no-such-project' does not exist" in done.output, str(done)


def test_get_flows_lists_the_newest_version(user: PrefectUser, flowbus: Flowbus, hello_registered: Finished) -> None:
    assert hello_registered.returncode == 0, str(hello_registered)
    newest = versions(flowbus)[0]

    done = user.run("prefect", "get", "flows")
    assert done.returncode == 0, str(done)
    header, *rows = done.stdout.strip().splitlines()
    assert header.split() == ["NAME", "VERSION", "AGE", "ID", "PROJECT", "NAME"], str(done)
    hello = [row.split() for row in rows if row.split()[0] == "hello-flow"]
    # One row per flow name (distinct_on: name), the newest version's.
    assert len(hello) == 1, str(done)
    assert hello[0][1] == str(newest.version), str(done)
    assert newest.id in hello[0], str(done)
    assert hello[0][-1] == "tutorial", str(done)


def test_describe_flows_shows_the_newest_version(
    user: PrefectUser, flowbus: Flowbus, hello_registered: Finished
) -> None:
    assert hello_registered.returncode == 0, str(hello_registered)
    newest = versions(flowbus)[0]

    done = user.run("prefect", "describe", "flows", "--name", "hello-flow")
    assert done.returncode == 0, str(done)
    try:
        described = json.loads(done.stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"not JSON:\n{done}") from None
    assert described["name"] == "hello-flow", str(done)
    assert described["version"] == newest.version, str(done)
    assert described["project"] == {"name": "tutorial"}, str(done)
    assert described["archived"] is False, str(done)
    assert described["storage"]["type"] == "Local", str(done)
    assert [(p["name"], p["default"]) for p in described["parameters"]] == [("name", "Cloud")], str(done)
