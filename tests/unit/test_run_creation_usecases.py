"""The run_creation service's rules for a new run (services/run_creation/usecases.py):
how its parameters are merged and which labels it gets."""

from __future__ import annotations

import pytest

from flowbus.parameters import merge_parameters
from flowbus.schemas.common import ValidationFailed
from flowbus.schemas.flows import ParameterSpec, RunConfigSpec
from flowbus.schemas.runs import CreateFlowRun
from flowbus_services.run_creation.usecases import resolve_labels


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
