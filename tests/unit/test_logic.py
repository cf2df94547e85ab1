"""Pure logic: subjects, state hierarchy, transition rules, parameters, labels, the SDK graph."""

from __future__ import annotations

import pytest

from flowbus import Flow, Parameter, subjects, task
from flowbus.schemas.common import Conflict, ValidationFailed
from flowbus.schemas.flows import ParameterSpec, RunConfigSpec
from flowbus.schemas.runs import CreateFlowRun
from flowbus.states import StateType, is_failed, is_finished
from flowbus_services.run_creation.usecases import merge_parameters, resolve_labels
from flowbus_services.state.rules import Proposal, check


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


def test_state_hierarchy() -> None:
    assert is_finished(StateType.TIMED_OUT)
    assert is_failed(StateType.TRIGGER_FAILED)
    assert not is_finished(StateType.CANCELLING)
    assert not is_failed(StateType.SUCCESS)


def test_transition_rules() -> None:
    check(Proposal("flow run", "r", StateType.SCHEDULED, StateType.SUBMITTED))
    check(Proposal("flow run", "r", StateType.SUCCESS, StateType.SCHEDULED))  # an operator re-run
    with pytest.raises(Conflict, match="already claimed"):
        check(Proposal("flow run", "r", StateType.SUBMITTED, StateType.SUBMITTED))
    with pytest.raises(Conflict, match="already finished"):
        check(Proposal("flow run", "r", StateType.FAILED, StateType.RUNNING))
    with pytest.raises(Conflict, match="cannot run"):
        check(Proposal("task run", "t", StateType.PENDING, StateType.RUNNING, StateType.SUBMITTED))
    check(Proposal("task run", "t", StateType.PENDING, StateType.RUNNING, StateType.RUNNING))


def test_parameters_merge_in_order_and_refuse_unknown_or_missing() -> None:
    declared = [ParameterSpec(name="a", default=1), ParameterSpec(name="b", required=True)]
    assert merge_parameters(declared, {"a": 2}, {"b": 3}) == {"a": 2, "b": 3}
    assert merge_parameters(declared, {"b": 5}, {}) == {"a": 1, "b": 5}
    with pytest.raises(ValidationFailed, match="Required parameters were not supplied"):
        merge_parameters(declared, {}, {})
    with pytest.raises(ValidationFailed, match="Unknown parameters"):
        merge_parameters(declared, {}, {"b": 1, "c": 2})


def test_labels_first_set_wins() -> None:
    group_rc, flow_rc = RunConfigSpec(labels=["group-rc"]), RunConfigSpec(labels=["flow"])
    plain = CreateFlowRun(flow_id="f")
    assert resolve_labels(CreateFlowRun(flow_id="f", labels=["x"]), ["group"], group_rc, flow_rc) == ["x"]
    assert resolve_labels(
        CreateFlowRun(flow_id="f", run_config=RunConfigSpec(labels=["rc"])), None, group_rc, flow_rc
    ) == ["rc"]
    assert resolve_labels(plain, None, group_rc, flow_rc) == ["group-rc"]
    assert resolve_labels(plain, ["group"], group_rc, flow_rc) == ["group"]
    assert resolve_labels(plain, None, RunConfigSpec(), flow_rc) == ["flow"]
    assert resolve_labels(plain, None, RunConfigSpec(), RunConfigSpec()) == []
    assert resolve_labels(CreateFlowRun(flow_id="f", labels=[]), ["group"], group_rc, flow_rc) == []


def test_flow_graph_serializes_edges_and_runs_locally() -> None:
    @task
    def double(x: int) -> int:
        return 2 * x

    @task
    def add(a: int, b: int) -> int:
        return a + b

    with Flow("math") as flow:
        x = Parameter("x", default=3)
        add(double(x), b=1)
    spec = flow.serialize()
    assert [t.slug for t in spec.tasks] == ["x", "double-1", "add-1"]
    assert {(e.upstream, e.downstream) for e in spec.edges} == {("x", "double-1"), ("double-1", "add-1")}
    assert spec.parameters[0].name == "x"
    result = flow.run({"x": 5})
    assert result.is_successful
    assert result.results["add-1"] == 11
    assert flow.serialized_hash() == flow.serialized_hash()


def test_failed_upstream_triggers_downstream_failure() -> None:
    @task
    def boom() -> None:
        raise RuntimeError("no")

    @task
    def after(_: object) -> None:
        return None

    with Flow("fails") as flow:
        after(boom())
    result = flow.run()
    assert result.state is StateType.FAILED
    assert result.states["after-1"] is StateType.TRIGGER_FAILED


def test_parameters_and_clock_defaults_serialize() -> None:
    from datetime import timedelta

    from flowbus import CronClock, IntervalClock, Schedule

    @task
    def use(x: int, y: int) -> int:
        return x + y

    schedule = Schedule([CronClock("0 6 * * *", parameter_defaults={"y": 2}), IntervalClock(timedelta(hours=1))])
    with Flow("scheduled", schedule=schedule) as flow:
        use(Parameter("x", default=1), Parameter("y", required=True))
    spec = flow.serialize()
    assert [(p.name, p.required, p.default) for p in spec.parameters] == [("x", False, 1), ("y", True, None)]
    assert spec.schedule is not None
    assert [c.type for c in spec.schedule.clocks] == ["cron", "interval"]
    assert spec.schedule.clocks[0].parameter_defaults == {"y": 2}
    assert spec.schedule.clocks[1].interval_seconds == 3600


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
