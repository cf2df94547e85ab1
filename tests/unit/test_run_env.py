"""The run environment deny-list (flowbus.run_env): refused at creation, dropped by the agent."""

from __future__ import annotations

import pytest

from flowbus.agent.local import LocalAgent
from flowbus.client._commands import build
from flowbus.run_env import (
    MAX_ENV_TOTAL_CHARS,
    allowed_run_env,
    denied_env_name,
    env_problems,
)
from flowbus.schemas.common import ENV_VALUE_MAX as MAX_ENV_VALUE_CHARS
from flowbus.schemas.common import MAX_ENV_VARS, ValidationFailed
from flowbus.schemas.flows import RunConfigSpec, SerializedFlow, StorageSpec
from flowbus.schemas.runs import CreateFlowRun, FlowRunDetail
from flowbus.settings import FLOW_ROOTS_ENV, Settings

DENIED = [
    "LD_PRELOAD",
    "LD_LIBRARY_PATH",
    "ld_preload",
    "DYLD_INSERT_LIBRARIES",
    "PYTHONPATH",
    "PYTHONSTARTUP",
    "PYTHONBREAKPOINT",
    "PATH",
    "HOME",
    "FLOWBUS_NATS_URL",
    "FLOWBUS_NATS_CREDS",
    "FLOWBUS_AGENT__FLOW_ROOTS",
    "BASH_ENV",
    "ENV",
    "BASH_FUNC_ls%%",
    "IFS",
    "PS4",
    "SHELLOPTS",
    "PERL5OPT",
    "RUBYOPT",
    "NODE_OPTIONS",
    "GIT_SSH_COMMAND",
    "GIT_CONFIG_COUNT",
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "HTTPS_PROXY",
    "http_proxy",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OPENSSL_CONF",
    "GLIBC_TUNABLES",
]
ALLOWED = ["GREETING", "AWS_REGION", "MY_PATH", "DATABASE_URL", "LANG", "TZ", "VERSION_X"]


@pytest.mark.parametrize("name", DENIED)
def test_denied_names(name: str) -> None:
    assert denied_env_name(name)
    with pytest.raises(ValidationFailed, match=r"run_config\.env may not set"):
        build(CreateFlowRun, flow_id="f", run_config=RunConfigSpec(env={name: "x"}))


@pytest.mark.parametrize("name", ALLOWED)
def test_allowed_names(name: str) -> None:
    assert not denied_env_name(name)
    assert build(CreateFlowRun, flow_id="f", run_config={"env": {name: "x"}}).run_config is not None


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        ({"": "x"}, "not valid environment variable names"),
        ({"A=B": "x"}, "not valid environment variable names"),
        ({"A\0B": "x"}, "not valid environment variable names"),
        ({"N" * 256: "x"}, "not valid environment variable names"),
        ({"A": "x\0y"}, "values with NUL"),
        ({"A": "x" * (MAX_ENV_VALUE_CHARS + 1)}, "values with NUL or over"),
        ({f"V{i}": "x" for i in range(MAX_ENV_VARS + 1)}, f"at most {MAX_ENV_VARS} environment variables"),
        (
            {f"V{i}": "x" * (MAX_ENV_TOTAL_CHARS // 5) for i in range(6)},
            f"at most {MAX_ENV_TOTAL_CHARS} characters in all",
        ),
    ],
    ids=["empty", "equals", "nul-name", "long-name", "nul-value", "long-value", "too-many", "too-big"],
)
def test_invalid_or_oversize_env_is_refused(env: dict[str, str], problem: str) -> None:
    assert any(problem in p for p in env_problems(env))
    with pytest.raises(ValidationFailed, match="run_config"):
        build(CreateFlowRun, flow_id="f", run_config={"env": env})


def test_a_registered_flow_is_checked_too() -> None:
    storage = StorageSpec(type="script", path="/tmp/flow.py")
    with pytest.raises(ValidationFailed, match="LD_PRELOAD"):
        build(SerializedFlow, name="f", storage=storage, run_config={"env": {"LD_PRELOAD": "/evil.so"}})
    assert build(SerializedFlow, name="f", storage=storage, run_config={"env": {"GREETING": "hi"}})


def test_stored_run_configs_still_load() -> None:
    """Read back from the database a run config is not checked: an older row still loads."""
    assert RunConfigSpec.model_validate({"env": {"LD_PRELOAD": "/evil.so"}}).env == {"LD_PRELOAD": "/evil.so"}


def test_allowed_run_env_drops_denied_and_invalid_names() -> None:
    kept, dropped = allowed_run_env({"GREETING": "hi", "LD_PRELOAD": "/evil.so", "A=B": "x", "B": "a\0b"})
    assert kept == {"GREETING": "hi"}
    assert dropped == ["A=B", "B", "LD_PRELOAD"]
    assert allowed_run_env(None) == ({}, [])


def _detail(env: dict[str, str]) -> FlowRunDetail:
    now = "2024-01-01T00:00:00Z"
    state = {"type": "Submitted", "message": None, "timestamp": now, "version": 2}
    run = {
        "id": "run-1",
        "flow_id": "flow-1",
        "flow_name": "f",
        "flow_group_id": "g",
        "project_name": "p",
        "name": "brave-otter",
        "parameters": {},
        "context": {},
        "labels": ["itest"],
        "scheduled_start_time": now,
        "auto_scheduled": False,
        "idempotency_key": None,
        "version": 2,
        "state": state,
        "agent_id": None,
        "start_time": None,
        "end_time": None,
        "times_resurrected": 0,
        "created": now,
        "updated": now,
    }
    return FlowRunDetail.model_validate(
        {
            "run": run,
            "task_runs": [],
            "storage": {"type": "script", "path": "/tmp/f.py"},
            "tasks": [],
            "run_config": {"env": env},
            "heartbeat_enabled": True,
            "version_locking_enabled": True,
        }
    )


def test_the_agent_drops_denied_variables_and_sets_its_own_last(caplog: pytest.LogCaptureFixture) -> None:
    agent = LocalAgent(Settings(nats_url="nats://127.0.0.1:1"), labels=[], hostname_label=False, flow_roots=["/"])
    detail = _detail(
        {
            "GREETING": "hi",
            "LD_PRELOAD": "/evil.so",
            "FLOWBUS_FLOW_RUN_ID": "not-this-run",
            "FLOWBUS_AGENT__FLOW_ROOTS": "[]",
        }
    )
    with caplog.at_level("WARNING", logger="flowbus.agent"):
        env = agent._run_env(detail)
    assert env["GREETING"] == "hi"
    assert "LD_PRELOAD" not in env or env["LD_PRELOAD"] != "/evil.so"
    assert env["FLOWBUS_FLOW_RUN_ID"] == "run-1"
    assert env["FLOWBUS_AGENT_ID"] == agent.id
    assert env[FLOW_ROOTS_ENV] == '["/"]'
    assert env["FLOWBUS_NATS_URL"] == "nats://127.0.0.1:1"
    [record] = [r for r in caplog.records if "run_config.env" in r.getMessage()]
    assert record.levelname == "WARNING"
    assert "LD_PRELOAD" in record.getMessage()
    assert "FLOWBUS_FLOW_RUN_ID" in record.getMessage()
