"""The web UI in a real browser, as a user drives it: log in, the tutorial flow
run from its page and followed live while a real agent runs it, a failing flow,
Cancel, Set state at a stale version, versions, settings and the schedule, API
keys, a read-only key, a narrow screen.

Screenshots of the dashboard, a flow page and a run page are written to
``FLOWBUS_UI_SCREENSHOTS`` when it is set (`make screenshots` keeps
docs/images/ current with them).
"""

from __future__ import annotations

import json
import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from tests.helpers.browser import Stack, login
from tests.helpers.processes import flowbus

pytestmark = pytest.mark.browser

SCREENSHOTS = os.environ.get("FLOWBUS_UI_SCREENSHOTS")
CREATE_RUN = "mutation($input: create_flow_run_input!) { create_flow_run(input: $input) { id } }"
SET_STATE = "mutation($input: set_flow_run_state_input!) { set_flow_run_state(input: $input) { status } }"
# The value of a datetime-local field six seconds from now, in the browser's zone.
IN_SIX_SECONDS = """() => {
  const d = new Date(Date.now() + 6000);
  const p = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}` +
    `T${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}"""
# Records every text the run's state badge shows from now on (a live change
# replaces the badge's text; a reload would lose the record).
RECORD_STATES = """() => {
  window.__states = [];
  const badge = document.getElementById("run-state");
  new MutationObserver(() => window.__states.push(badge.textContent))
    .observe(badge, { childList: true, characterData: true, subtree: true });
}"""


def screenshot(page: Page, name: str) -> None:
    if SCREENSHOTS:
        page.screenshot(path=str(Path(SCREENSHOTS) / f"{name}.png"), full_page=True)


def create_run(stack: Stack, flow: str, **fields: Any) -> str:
    data = stack.data(CREATE_RUN, {"input": {"flow_id": stack.flow_id(flow), **fields}})
    return str(data["create_flow_run"]["id"])


def run_state(stack: Stack, run_id: str) -> dict[str, Any]:
    data = stack.data("query($id: uuid!) { flow_run_by_pk(id: $id) { state version } }", {"id": run_id})
    result: dict[str, Any] = data["flow_run_by_pk"]
    return result


def expect_run_state(page: Page, stack: Stack, run_id: str, state: str) -> None:
    """The run page shows ``state``; when it does not, the failure says what the
    API and the page's live line said, and what the agent printed last, so a
    run stuck for real and a page that stopped following can be told apart."""
    try:
        expect(page.locator("#run-state")).to_have_text(state)
    except AssertionError as exc:
        history = stack.data(
            "query($id: uuid!) { flow_run_by_pk(id: $id) { states(order_by: {version: asc}) { state version } } }",
            {"id": run_id},
        )
        live = page.locator("p.live").inner_text()
        agent = "".join(stack.outputs.get("agent", [])[-30:])
        raise AssertionError(
            f"{exc}\nthe API: {run_state(stack, run_id)}, history {history}\nthe live line: {live}\nthe agent:\n{agent}"
        ) from exc


def schematic(page: Page) -> Any:
    return page.get_by_role("group", name="Tasks and their dependencies")


def test_login_refuses_a_bad_key_and_then_opens_the_page_asked_for(page: Page, stack: Stack) -> None:
    page.goto("/agents")
    expect(page).to_have_url(re.compile(r"/login\?next=%2Fagents$"))
    field = page.get_by_label("API key")
    field.fill("fbk_" + "x" * 43)
    field.press("Enter")  # the keyboard alone logs in
    expect(page.get_by_role("alert")).to_contain_text("not valid")
    field.fill(stack.key)
    field.press("Enter")
    expect(page.get_by_role("heading", name="Agents", level=1)).to_be_visible()
    expect(page.get_by_role("row", name=re.compile(r"^local-"))).to_contain_text("online")


def test_the_tutorial_flow_runs_from_its_page_and_its_run_is_followed_live(
    page: Page, stack: Stack, tmp_path: Path
) -> None:
    login(page, stack.key)
    expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()
    page.get_by_role("link", name="hello-flow", exact=True).click()
    expect(page.get_by_role("heading", name="hello-flow", level=1)).to_be_visible()

    page.get_by_role("button", name="Run Flow").click()
    gate = tmp_path / "gate"
    form = page.get_by_role("form", name="Run hello-flow")
    expect(form.get_by_label("name", exact=True)).to_have_value('"World"')  # the default, filled in
    form.get_by_label("name", exact=True).fill("Cloud")  # not JSON: refused in the form
    form.get_by_role("button", name="Run", exact=True).click()
    expect(form).to_contain_text("Not JSON")
    form.get_by_label("name", exact=True).fill('"Cloud"')
    form.get_by_label("gate", exact=True).fill(json.dumps(str(gate)))
    # Start a few seconds from now, so that the page sees the run while it is still Scheduled.
    start = page.evaluate(IN_SIX_SECONDS)
    form.get_by_label("Later").check()
    form.get_by_label("Start at (your time zone)").fill(start)
    form.get_by_role("button", name="Run", exact=True).click()

    expect(page).to_have_url(re.compile(r"/flow-run/[0-9a-f-]{36}$"))
    state = page.locator("#run-state")
    expect(state).to_have_text("Scheduled")
    page.evaluate(RECORD_STATES)
    nodes = schematic(page)
    expect(nodes.get_by_role("img", name="wait_for_gate: Running")).to_be_visible()
    expect(nodes.get_by_role("img", name=re.compile(r"^say_hello: (Pending|not started)$"))).to_be_visible()
    expect(nodes.get_by_role("img", name=re.compile(r"^(name|gate): Success$"))).to_have_count(2)
    gate.touch()

    expect(state).to_have_text("Success")
    expect(page.get_by_role("log", name="Logs")).to_contain_text("Hello, Cloud!")
    expect(nodes.get_by_role("img", name="say_hello: Success")).to_be_visible()
    seen = page.evaluate("window.__states")
    assert [s for i, s in enumerate(seen) if i == 0 or seen[i - 1] != s] == ["Submitted", "Running", "Success"]
    history = page.get_by_role("list", name="State history").inner_text()
    positions = [history.index(s) for s in ("Scheduled", "Submitted", "Running", "Success")]
    assert positions == sorted(positions), history
    expect(page.get_by_role("row", name=re.compile(r"^say_hello"))).to_contain_text("Success")
    expect(page.get_by_role("button", name="Cancel")).to_have_count(0)  # a finished run cannot be cancelled
    screenshot(page, "run")


def test_a_failing_flow_shows_failed_and_its_error_log(page: Page, stack: Stack) -> None:
    run_id = create_run(stack, "failing-flow")
    # The run link the Prefect 1.x client prints: the tenant's slug first.
    login(page, stack.key, f"/default/flow-run/{run_id}")
    expect_run_state(page, stack, run_id, "Failed")
    expect(page.get_by_role("log", name="Logs")).to_contain_text("kaboom: the flow failed on purpose")
    expect(schematic(page).get_by_role("img", name="explode: Failed")).to_be_visible()
    # The level filter hides the INFO lines and keeps the error.
    page.get_by_label("Level").select_option("ERROR")
    expect(page.get_by_role("log", name="Logs").locator("li:visible")).not_to_have_count(0)
    for line in page.get_by_role("log", name="Logs").locator("li:visible").all():
        assert re.search(r"\b(ERROR|CRITICAL)\b", line.inner_text()), line.inner_text()
    # Search keeps the lines that contain the text, whatever its case.
    page.get_by_label("Level").select_option("DEBUG")
    page.get_by_label("Search").fill("KABOOM")
    visible = page.get_by_role("log", name="Logs").locator("li:visible")
    expect(visible).not_to_have_count(0)
    for line in visible.all():
        assert "kaboom" in line.inner_text().lower()
    assert page.get_by_role("log", name="Logs").locator("li[hidden]").count() >= 1


def test_cancel_stops_a_running_flow(page: Page, stack: Stack, tmp_path: Path) -> None:
    never = tmp_path / "never-created"
    run_id = create_run(stack, "hello-flow", parameters={"gate": str(never)})
    login(page, stack.key, f"/flow-run/{run_id}")
    expect_run_state(page, stack, run_id, "Running")
    page.get_by_role("button", name="Cancel").click()
    expect_run_state(page, stack, run_id, "Cancelled")
    assert run_state(stack, run_id)["state"] == "Cancelled"


def test_set_state_at_a_stale_version_is_refused_and_explained(page: Page, stack: Stack) -> None:
    # Labels no agent has: the run stays Scheduled until someone moves it.
    run_id = create_run(stack, "hello-flow", labels=["no-agent-has-this"])
    login(page, stack.key, f"/flow-run/{run_id}")
    expect(page.locator("#run-state")).to_have_text("Scheduled")
    page.get_by_role("button", name="Set state").click()
    form = page.get_by_role("form", name="Set the run's state")
    expect(form).to_contain_text("From version 1 (Scheduled)")
    form.get_by_label("New state").select_option("Failed")

    # Someone else moves the run first; the page shows it live.
    moved = {"type": "Scheduled", "message": "moved by someone else"}
    stack.data(SET_STATE, {"input": {"flow_run_id": run_id, "version": 1, "state": moved}})
    expect(page.get_by_text("moved by someone else").first).to_be_visible()

    form.get_by_role("button", name="Save state").click()
    alert = form.get_by_role("alert")
    expect(alert).to_contain_text("Someone else changed this run first")
    expect(alert).to_contain_text("now at version 2")
    assert run_state(stack, run_id) == {"state": "Scheduled", "version": 2}

    # Opened again, the form takes the version shown now, and the change applies.
    page.get_by_role("button", name="Set state").click()  # closes
    page.get_by_role("button", name="Set state").click()
    form.get_by_label("New state").select_option("Cancelled")
    form.get_by_role("button", name="Save state").click()
    expect(page.locator("#run-state")).to_have_text("Cancelled")
    assert run_state(stack, run_id)["state"] == "Cancelled"


def test_archive_and_unarchive_a_version(page: Page, stack: Stack) -> None:
    source = """
        from flowbus import Flow, task

        @task
        def step():
            pass

        with Flow("versioned-flow") as flow:
            step()

        flow.register(project_name="tutorial")
    """
    stack.register(source, "versioned.py")
    assert "Version: 2" in stack.register(source, "versioned.py").stdout
    login(page, stack.key, f"/flow/{stack.flow_id('versioned-flow')}")
    versions = page.get_by_role("region", name="Versions")
    row = versions.get_by_role("row", name=re.compile(r"^Version 1\b"))
    expect(row).to_contain_text("archived")
    row.get_by_role("button", name="Unarchive version 1").click()
    expect(versions.get_by_role("row", name=re.compile(r"^Version 1\b"))).to_contain_text("active")
    query = '{ flow(where: {name: {_eq: "versioned-flow"}, version: {_eq: 1}}) { archived } }'
    assert stack.data(query)["flow"] == [{"archived": False}]
    versions.get_by_role("button", name="Archive version 1").click()
    expect(versions.get_by_role("row", name=re.compile(r"^Version 1\b"))).to_contain_text("archived")
    assert stack.data(query)["flow"] == [{"archived": True}]


def test_settings_and_the_schedule_toggle_from_the_flow_page(page: Page, stack: Stack) -> None:
    flow_id = stack.flow_id("nightly")
    group = stack.data("query($id: uuid!) { flow_by_pk(id: $id) { flow_group_id } }", {"id": flow_id})
    # The flow link the Prefect 1.x client prints names the flow group: it opens the group's newest version.
    login(page, stack.key, f"/default/flow/{group['flow_by_pk']['flow_group_id']}")
    expect(page).to_have_url(f"{stack.base}/flow/{flow_id}")
    times = page.get_by_role("list", name="Next start times")
    expect(times.get_by_role("listitem")).to_have_count(10)
    expect(page.get_by_role("region", name="Runs").get_by_role("row")).not_to_have_count(1)  # the scheduler's runs
    screenshot(page, "flow")
    first = times.get_by_role("listitem").first.locator("time")
    expect(first).to_have_attribute("title", re.compile(r" 03:00:00 UTC$"))
    query = """query($id: uuid!) { flow_by_pk(id: $id) { is_schedule_active flow_group { heartbeat_enabled } } }"""

    schedule = page.get_by_role("switch", name="Schedule active")
    expect(schedule).to_be_checked()
    schedule.uncheck()
    expect(page.locator("#toast")).to_contain_text("Schedule off")
    assert stack.data(query, {"id": flow_id})["flow_by_pk"]["is_schedule_active"] is False
    page.get_by_role("switch", name="Schedule active").check()
    expect(page.locator("#toast")).to_contain_text("Schedule on")
    assert stack.data(query, {"id": flow_id})["flow_by_pk"]["is_schedule_active"] is True

    heartbeat = page.get_by_role("switch", name="Heartbeat")
    expect(heartbeat).to_be_checked()
    heartbeat.uncheck()
    expect(page.locator("#toast")).to_contain_text("Heartbeat off")
    assert stack.data(query, {"id": flow_id})["flow_by_pk"]["flow_group"]["heartbeat_enabled"] is False
    page.reload()
    expect(page.get_by_role("switch", name="Heartbeat")).not_to_be_checked()
    page.get_by_role("switch", name="Heartbeat").check()
    expect(page.locator("#toast")).to_contain_text("Heartbeat on")
    assert stack.data(query, {"id": flow_id})["flow_by_pk"]["flow_group"]["heartbeat_enabled"] is True


def test_api_keys_are_created_shown_once_and_revoked(page: Page, stack: Stack) -> None:
    login(page, stack.key)
    page.get_by_role("link", name="API keys").click()
    page.get_by_label("Name").fill("ui-made-key")
    page.get_by_label("Role").select_option("runner")
    page.get_by_role("button", name="Create key").click()
    new_key = page.get_by_label("New API key").inner_text()
    assert new_key.startswith("fbk_")
    assert stack.graphql("{ hello }", key=new_key) == {"data": {"hello": "👋"}}
    row = page.get_by_role("row", name=re.compile(r"^ui-made-key\b"))
    expect(row).to_contain_text("runner")
    page.once("dialog", lambda dialog: dialog.accept())
    row.get_by_role("button", name="Revoke ui-made-key").click()
    expect(page.get_by_role("row", name=re.compile(r"^ui-made-key\b"))).to_have_count(0)
    assert stack.graphql("{ hello }", key=new_key)["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"


def test_a_read_only_key_sees_no_write_buttons_and_its_writes_are_refused(page: Page, stack: Stack) -> None:
    reader = stack.create_key("ui-reader", "read-only")
    run_id = create_run(stack, "hello-flow", labels=["no-agent-has-this"])
    login(page, reader)
    expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()
    expect(page.get_by_role("link", name="API keys")).to_have_count(0)
    page.get_by_role("link", name="nightly", exact=True).click()
    expect(page.get_by_role("heading", name="nightly", level=1)).to_be_visible()
    expect(page.get_by_role("region", name="Settings")).to_contain_text("Heartbeat: on")
    expect(page.get_by_role("button", name=re.compile(r"Run Flow|Archive|Unarchive"))).to_have_count(0)
    expect(page.get_by_role("switch")).to_have_count(0)
    page.goto(f"/flow-run/{run_id}")
    expect(page.locator("#run-state")).to_have_text("Scheduled")
    expect(page.get_by_role("button", name="Cancel")).to_have_count(0)
    expect(page.get_by_role("button", name="Set state")).to_have_count(0)

    refused = stack.graphql(CREATE_RUN, {"input": {"flow_id": stack.flow_id("hello-flow")}}, key=reader)
    assert refused["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    refused = stack.graphql(
        "mutation($input: cancel_flow_run_input!) { cancel_flow_run(input: $input) { state } }",
        {"input": {"flow_run_id": run_id}},
        key=reader,
    )
    assert refused["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    assert run_state(stack, run_id)["state"] == "Scheduled"


def test_the_pages_fit_a_phone_and_show_names_as_text(page: Page, stack: Stack) -> None:
    hostile = '<img src=x onerror="window.__xss = 1">'
    run_id = create_run(stack, "hello-flow", labels=["no-agent-has-this"], flow_run_name=hostile)
    page.set_viewport_size({"width": 390, "height": 844})
    login(page, stack.key, f"/flow-run/{run_id}")
    expect(page.get_by_role("heading", level=1)).to_have_text(hostile)
    expect(page.locator("#run-state")).to_have_text("Scheduled")
    assert page.evaluate("window.__xss") is None
    # Nothing wider than the screen: no sideways scrolling of the page itself
    # (wide tables scroll inside their own box).
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.get_by_role("link", name="hello-flow").first.click()
    expect(page.get_by_role("heading", name="hello-flow", level=1)).to_be_visible()
    page.get_by_role("button", name="Run Flow").click()
    expect(page.get_by_role("button", name="Run", exact=True)).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.get_by_role("link", name="Dashboard").click()
    expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth") <= 390


def test_the_dashboard_sums_up_runs_late_runs_and_agents(page: Page, stack: Stack) -> None:
    succeeded = create_run(stack, "hello-flow")
    failed = create_run(stack, "failing-flow")
    # Two minutes overdue, with labels no agent has: late.
    overdue = (datetime.now(UTC) - timedelta(minutes=2)).isoformat()
    late = create_run(stack, "hello-flow", labels=["no-agent-has-this"], scheduled_start_time=overdue)
    login(page, stack.key, f"/flow-run/{succeeded}")
    expect_run_state(page, stack, succeeded, "Success")
    page.goto(f"/flow-run/{failed}")
    expect_run_state(page, stack, failed, "Failed")

    page.get_by_role("link", name="Dashboard").click()
    chart = page.get_by_role("list", name=re.compile(r"^Runs created in the last 24 hours by state"))
    for state in ("Success", "Failed", "Scheduled"):
        count = chart.get_by_role("listitem").filter(has_text=state).locator(".num").inner_text()
        assert int(count) >= 1, state
    late_runs = page.get_by_role("region", name="Late runs")
    expect(late_runs.get_by_role("link", name=run_name(stack, late))).to_be_visible()
    agents = page.get_by_role("region", name="Agents online")
    expect(agents.get_by_role("row", name=re.compile(r"^local-"))).to_be_visible()
    # Each flow's latest runs are links to their pages, named by run and state.
    flows = page.get_by_role("region", name="Flows")
    expect(flows.get_by_role("link", name=f"Run {run_name(stack, failed)}: Failed")).to_be_visible()
    screenshot(page, "dashboard")

    # The project filter: a project without flows lists none.
    flowbus(stack.home, stack.work, "create", "project", "empty-project")
    page.reload()
    page.get_by_label("Project").select_option(label="empty-project")
    expect(page).to_have_url(re.compile(r"/\?project=[0-9a-f-]{36}$"))
    expect(flows.get_by_role("link", name="hello-flow", exact=True)).to_have_count(0)
    page.get_by_label("Project").select_option(label="tutorial")
    expect(flows.get_by_role("link", name="hello-flow", exact=True)).to_be_visible()


def run_name(stack: Stack, run_id: str) -> str:
    data = stack.data("query($id: uuid!) { flow_run_by_pk(id: $id) { name } }", {"id": run_id})
    return str(data["flow_run_by_pk"]["name"])
