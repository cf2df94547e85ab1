"""The state service's transition rules (services/state/rules.py)."""

from __future__ import annotations

import pytest

from flowbus.schemas.common import Conflict
from flowbus.states import StateType
from services.state.rules import Proposal, check


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
