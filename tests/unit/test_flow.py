"""flowbus.sdk.flow: a flow's task graph, serialized for registration and run locally."""

from __future__ import annotations

from flowbus import Flow, Parameter, task
from flowbus.states import StateType


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
