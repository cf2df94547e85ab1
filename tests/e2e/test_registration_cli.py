"""Registration through the CLI, as a user: register, re-register, version, archive, settings."""

from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.processes import FLOWBUS, flowbus, run, ui_base

pytestmark = pytest.mark.e2e

ETL_V1 = """
from flowbus import Flow, Parameter, task

@task
def extract(n):
    return list(range(n))

with Flow("etl") as flow:
    extract(Parameter("n", default=3))
"""

ETL_V2 = (
    ETL_V1
    + """
@task
def load(rows):
    return len(rows)

with flow:
    load(extract(Parameter("m", default=1)))
"""
)


def flow_json(home: Path, work: Path, flow_id: str) -> dict[str, Any]:
    shown: dict[str, Any] = json.loads(flowbus(home, work, "get", "flow", flow_id).stdout)
    return shown


def registered_id(output: str) -> str:
    """The id on the first line, ``NAME: registered as version N (ID)``; a ``Flow URL:`` line follows it."""
    return output.splitlines()[0].rsplit("(", 1)[1].rstrip(")")


def check_links(home: Path, work: Path, script: Path, flow_id: str) -> None:
    """`register` and `run` print the UI's pages of what they made: the running gateway's, or FLOWBUS_UI_URL's."""
    again = flowbus(home, work, "register", "--project", "data", "-p", str(script)).stdout
    assert again.splitlines()[1:] == [f"Flow URL: {ui_base(home)}/flow/{flow_id}"], again
    created = flowbus(home, work, "run", "--id", flow_id).stdout.splitlines()
    run_id = created[0].rsplit(": ", 1)[1]
    assert created[1:] == [f"Flow run URL: {ui_base(home)}/flow-run/{run_id}"], created
    assert flowbus(home, work, "run", "--id", flow_id, "-q").stdout.strip().count("\n") == 0  # -q: the id alone

    chosen = {"FLOWBUS_UI_URL": "https://flows.example.com/ui/"}
    named = run([FLOWBUS, "register", "--project", "data", "-p", str(script)], home, work, env=chosen)
    assert named.stdout.splitlines()[1:] == [f"Flow URL: https://flows.example.com/ui/flow/{flow_id}"], named


def switch_every_setting_and_back(home: Path, work: Path, flow_id: str) -> None:
    """Each setting switched, one command each, then all back in one command."""
    flowbus(home, work, "flow", "settings", flow_id, "--no-heartbeat")
    flowbus(home, work, "flow", "settings", flow_id, "--no-lazarus")
    flowbus(home, work, "flow", "settings", flow_id, "--version-locking")
    assert flow_json(home, work, flow_id)["settings"] == {
        "heartbeat_enabled": False,
        "lazarus_enabled": False,
        "version_locking_enabled": True,
    }
    flowbus(home, work, "flow", "settings", flow_id, "--heartbeat", "--lazarus", "--no-version-locking")
    assert flow_json(home, work, flow_id)["settings"] == {
        "heartbeat_enabled": True,
        "lazarus_enabled": True,
        "version_locking_enabled": False,
    }


def register_by_module(home: Path, work: Path, project: str) -> None:
    """A flow registered by module name (importable from the work folder) is stored as module storage."""
    (work / "etl_module.py").write_text(textwrap.dedent(ETL_V1).replace('"etl"', '"etl-module"'))
    by_module = flowbus(home, work, "register", "--project", project, "-m", "etl_module")
    assert "registered as version 1" in by_module.stdout
    assert flow_json(home, work, registered_id(by_module.stdout))["storage"] == {
        "type": "module",
        "path": None,
        "module": "etl_module",
    }


def test_register_version_archive_and_settings(server: subprocess.Popen[str], home: Path, workdir: Path) -> None:
    work = workdir
    script = work / "etl.py"
    script.write_text(textwrap.dedent(ETL_V1))
    flowbus(home, work, "create", "project", "data")
    flowbus(home, work, "create", "project", "other")
    broken = run([FLOWBUS, "register", "--project", "data", "-p", str(work / "missing.py")], home, work)
    assert broken.returncode == 1
    assert "cannot load flows" in broken.stderr
    assert "Traceback" not in broken.stderr

    first = flowbus(home, work, "register", "--project", "data", "-p", str(script))
    assert "registered as version 1" in first.stdout
    v1 = registered_id(first.stdout)
    again = flowbus(home, work, "register", "--project", "data", "-p", str(script))
    assert "skipped (unchanged)" in again.stdout
    assert registered_id(again.stdout) == v1

    script.write_text(textwrap.dedent(ETL_V2))
    second = flowbus(home, work, "register", "--project", "data", "-p", str(script), "--label", "etl")
    assert "registered as version 2" in second.stdout
    v2 = registered_id(second.stdout)
    assert flow_json(home, work, v1)["archived"] is True
    shown = flow_json(home, work, v2)
    assert shown["version"] == 2
    assert "etl" in shown["labels"]
    assert [(v["version"], v["archived"]) for v in shown["versions"]] == [(2, False), (1, True)]

    forced = flowbus(home, work, "register", "--project", "data", "-p", str(script), "--force")
    assert "registered as version 3" in forced.stdout
    check_links(home, work, script, registered_id(forced.stdout))

    assert "unarchived" in flowbus(home, work, "flow", "unarchive", v1).stdout
    assert flow_json(home, work, v1)["archived"] is False

    switch_every_setting_and_back(home, work, v1)

    # Version 3 archived version 2: it cannot be run.
    archived = run([FLOWBUS, "run", "--id", v2], home, work)
    assert archived.returncode == 1
    assert f"ARCHIVED: Flow {v2} is archived." in archived.stderr

    refused = run([FLOWBUS, "flow", "schedule", v1, "--on"], home, work)
    assert refused.returncode == 1
    assert "has no schedule" in refused.stderr

    listed = flowbus(home, work, "get", "flows", "--project", "data", "--all-versions").stdout
    assert listed.count("etl\t") == 3
    flowbus(home, work, "project", "delete", "data", "--yes")
    assert "data" not in flowbus(home, work, "get", "projects").stdout
    register_by_module(home, work, "other")

    gone = run([FLOWBUS, "get", "flow", v1], home, work)
    assert gone.returncode == 1
    assert "NOT_FOUND" in gone.stderr
