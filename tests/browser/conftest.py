"""Fixtures of the browser tier: the system's Chromium driven by Playwright, and
one `flowbus up` per module with the tutorial's flows and a local agent.

Chromium comes from Debian's package (`apt-get install -y chromium`, which
`make test` runs); Playwright's own browser download does not work on these
machines. Without it, every test of the tier is skipped with one line that
says how to get it. ``FLOWBUS_CHROMIUM`` points at another binary.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from flowbus_services.up import free_port
from tests.helpers.browser import CHROMIUM, FLOWS, LAUNCH_ARGS, UI_TIMEOUT_MS, Stack, drain
from tests.helpers.processes import FLOWBUS, UP_READY, flowbus, start, stop, wait_for_line


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.skip(
            f"browser tier skipped: no Chromium at {CHROMIUM}. Install it with "
            "`apt-get install -y chromium` (make test does), or set FLOWBUS_CHROMIUM."
        )
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, browser: Browser) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("ui")
    home, work = root / "home", root / "work"
    work.mkdir()
    port = free_port()
    up = start([FLOWBUS, "up"], home, work, {"FLOWBUS_GATEWAY__PORT": str(port)})
    agent: subprocess.Popen[str] | None = None
    try:
        outputs: dict[str, list[str]] = {"up": wait_for_line(up, UP_READY)}
        threading.Thread(target=drain, args=(up, outputs["up"]), daemon=True).start()
        stack = Stack(f"http://127.0.0.1:{port}", home, work, (home / "api-key").read_text().strip(), outputs)
        flowbus(home, work, "create", "project", "tutorial")
        stack.register(FLOWS, "flows.py")
        agent = start([FLOWBUS, "agent", "local", "start"], home, work, new_session=True)
        outputs["agent"] = wait_for_line(agent, "waiting for flow runs")
        threading.Thread(target=drain, args=(agent, outputs["agent"]), daemon=True).start()
        yield stack
    finally:
        try:
            if agent is not None:
                stop(agent)
        finally:
            if agent is not None:
                # A flow process a failed test left waiting goes with its agent's group.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(agent.pid, signal.SIGKILL)
            stop(up)


@pytest.fixture
def page(browser: Browser, stack: Stack) -> Iterator[Page]:
    """A fresh browser tab (its own session storage: logged out), 1280 px wide."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, base_url=stack.base)
    context.set_default_timeout(UI_TIMEOUT_MS)
    expect.set_options(timeout=UI_TIMEOUT_MS)
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield tab
    finally:
        context.close()
    assert not errors, f"uncaught errors in the page: {errors}"
