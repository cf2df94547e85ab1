"""flowbus.subjects: label-set keys, run queues and the agent matching rule, which must agree; the wire facts
(service names, message ids, the service of a subject)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from flowbus import subjects
from flowbus.runtime.service import service_context
from flowbus.settings import Settings
from flowbus_services.registry import SERVICE_MODULES, build_service_app

COMMAND_CLASSES: dict[subjects.Service, Any] = {
    subjects.Service.REGISTRATION: subjects.RegistrationCommands,
    subjects.Service.RUN_CREATION: subjects.RunCreationCommands,
    subjects.Service.STATE: subjects.StateCommands,
    subjects.Service.HEARTBEAT: subjects.HeartbeatCommands,
    subjects.Service.SCHEDULER: subjects.SchedulerCommands,
    subjects.Service.GATEWAY: subjects.GatewayCommands,
}


def test_every_service_is_named_once() -> None:
    assert set(SERVICE_MODULES) == set(subjects.Service) == set(COMMAND_CLASSES)


@pytest.mark.parametrize("service", list(subjects.Service))
def test_a_service_serves_its_own_commands_and_sweeps_the_outbox_rows_of_its_name(
    service: subjects.Service, tmp_path: Path
) -> None:
    settings = Settings(
        home=tmp_path, nats_url="nats://127.0.0.1:1", database_url=f"sqlite+aiosqlite:///{tmp_path / 'x.db'}"
    )
    context = service_context(build_service_app(service, settings))
    assert context.name == service
    assert context.relay.owner == service
    commands = COMMAND_CLASSES[service]
    assert service == commands.QUEUE
    served = [value for key, value in vars(commands).items() if key.isupper() and key != "QUEUE"]
    assert served
    assert {subjects.service_of(subject) for subject in served} == {service}


def test_service_of_reads_only_command_subjects() -> None:
    assert subjects.service_of(subjects.StateCommands.SET_FLOW_RUN_STATE) == "state"
    assert subjects.service_of(subjects.flow_run_event("r", subjects.FlowRunFact.STATE)) == ""
    assert subjects.service_of("elsewhere.cmd.state.x") == ""


def test_message_ids_name_the_run_and_its_version() -> None:
    assert subjects.run_queue_msg_id("r1", 3) == "runq:r1:3"
    assert subjects.state_event_msg_id("r1", 3) == "r1:state:3"
    assert subjects.run_queue_msg_id("r1", 3) != subjects.run_queue_msg_id("r1", 4)


def test_facts_are_the_last_token_of_their_subjects() -> None:
    assert subjects.flow_run_event("r", subjects.FlowRunFact.TASK_STATE) == "flowbus.evt.flow_run.r.task_state"
    assert subjects.flow_event("f", subjects.FlowFact.SCHEDULE_OFF) == "flowbus.evt.flow.f.schedule_off"
    assert subjects.project_event("p", subjects.ProjectFact.RENAMED) == "flowbus.evt.project.p.renamed"
    assert subjects.FLOW_RUN_CLEANUP_FILTERS == ("flowbus.evt.flow.*.archived", "flowbus.evt.flow.*.schedule_off")


def test_label_set_key_is_order_independent_and_subject_safe() -> None:
    assert subjects.label_set_key(["b", "a"]) == subjects.label_set_key(["a", "b", "a"])
    key = subjects.label_set_key(["has.dot", "has space", "*"])
    assert not {".", " ", "*"} & set(key)
    assert subjects.label_set_key([]) == subjects.NO_LABELS_KEY


def test_agent_consumes_every_subset_of_its_labels() -> None:
    queues = subjects.agent_run_queues(["a", "b"])
    assert set(queues) == {subjects.run_queue(["a"]), subjects.run_queue(["b"]), subjects.run_queue(["a", "b"])}
    assert subjects.run_queue([]) not in queues
    assert subjects.agent_run_queues([]) == [subjects.run_queue([])]
    with pytest.raises(ValueError, match="at most"):
        subjects.agent_run_queues([str(i) for i in range(subjects.MAX_AGENT_LABELS + 1)])


def test_agent_matching_rule_agrees_with_the_run_queues() -> None:
    cases = [
        ([], [], True),
        (["a"], [], False),
        ([], ["a"], False),
        (["a", "b"], ["a"], True),
        (["a"], ["a", "b"], False),
    ]
    for agent, run, expected in cases:
        assert subjects.agent_can_take(agent, run) is expected, (agent, run)
        assert (subjects.run_queue(run) in subjects.agent_run_queues(agent)) is expected, (agent, run)
