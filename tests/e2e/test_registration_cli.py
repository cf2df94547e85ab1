"""Registration through the CLI, as a user: register, re-register, version, archive, settings."""

from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.processes import FLOWBUS, flowbus, run

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
    return output.strip().rsplit("(", 1)[1].rstrip(")")


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
