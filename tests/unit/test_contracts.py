"""contracts/ is generated from the code and committed: it must never drift from it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flowbus import subjects
from flowbus.schemas.common import ErrorInfo, Reply
from flowbus_services.contracts import CONTRACTS_DIR, differences, main, message_classes, render
from flowbus_services.registry import SERVICE_MODULES


@pytest.fixture(scope="module")
def rendered() -> dict[str, str]:
    return render()


def test_contracts_folder_is_up_to_date(rendered: dict[str, str]) -> None:
    diffs = differences(rendered, CONTRACTS_DIR)
    assert not diffs, (
        "contracts/ is out of date with the code; run `make contracts` "
        "(.venv/bin/python -m flowbus_services.contracts) and commit the result. "
        "Files that differ:\n  " + "\n  ".join(diffs)
    )


def test_render_is_deterministic(rendered: dict[str, str]) -> None:
    assert render() == rendered


def test_every_command_subject_is_in_an_asyncapi_document(rendered: dict[str, str]) -> None:
    documented: set[str] = set()
    for service in SERVICE_MODULES:
        document = json.loads(rendered[f"asyncapi/{service}.json"])
        for channel in document.get("channels", {}).values():
            documented.add(channel["address"])
            documented.add(channel.get("bindings", {}).get("nats", {}).get("subject", ""))
    missing = sorted(set(subjects.COMMAND_SUBJECTS) - documented)
    assert not missing, f"command subjects no service documents (no subscriber?): {missing}"


def test_each_service_documents_its_own_commands_with_its_queue_group(rendered: dict[str, str]) -> None:
    for service in SERVICE_MODULES:
        document = json.loads(rendered[f"asyncapi/{service}.json"])
        for channel in document["channels"].values():
            address = channel["address"]
            if address.startswith(f"{subjects.PREFIX}.cmd."):
                assert address.startswith(f"{subjects.PREFIX}.cmd.{service}."), (service, address)
                assert channel["bindings"]["nats"]["queue"] == service, (service, address)


def test_message_schemas_cover_the_messages(rendered: dict[str, str]) -> None:
    classes = message_classes()
    assert "ErrorInfo" in classes
    assert classes["ErrorInfo"] is ErrorInfo
    assert "Reply" not in classes
    assert "Message" not in classes
    assert all(not issubclass(cls, Reply) for cls in classes.values())
    schema_files = {rel for rel in rendered if rel.startswith("schemas/")}
    assert schema_files == {f"schemas/{name}.json" for name in classes}
    for rel in schema_files:
        assert json.loads(rendered[rel])["additionalProperties"] is False, rel


def test_subjects_document_lists_commands_and_streams(rendered: dict[str, str]) -> None:
    document = json.loads(rendered["subjects.json"])
    assert document["commands"]["all"] == sorted(subjects.COMMAND_SUBJECTS)
    assert {s["name"] for s in document["streams"].values()} == {
        subjects.EVENTS_STREAM,
        subjects.LOGS_STREAM,
        subjects.RUNQ_STREAM,
    }
    assert document["logs"]["logs"] == subjects.logs("{flow_run_id}")
    assert document["run_queues"]["pattern"] == f"{subjects.PREFIX}.runq.{{key}}"


def test_check_and_write_on_a_scratch_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    contracts = tmp_path / "contracts"
    assert main(["--check", "--contracts-dir", str(contracts)]) == 1
    assert "subjects.json (missing)" in capsys.readouterr().out

    assert main(["--contracts-dir", str(contracts)]) == 0
    (contracts / "schemas" / "Gone.json").write_text("{}\n")
    (contracts / "subjects.json").write_text("{}\n")
    assert main(["--check", "--contracts-dir", str(contracts)]) == 1
    out = capsys.readouterr().out
    assert "schemas/Gone.json (stale)" in out
    assert "subjects.json (changed)" in out
    assert "make contracts" in out

    assert main(["--contracts-dir", str(contracts)]) == 0
    assert not (contracts / "schemas" / "Gone.json").exists()
    assert main(["--check", "--contracts-dir", str(contracts)]) == 0
