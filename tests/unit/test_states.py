"""flowbus.states: the state types, their hierarchy and the state objects."""

from __future__ import annotations

from flowbus.states import Cached, Running, State, StateType, Success, is_failed, is_finished


def test_state_objects_mirror_the_hierarchy() -> None:
    assert isinstance(Cached(), Success)
    assert Cached().is_successful()
    assert Cached().is_finished()
    assert not Running().is_finished()
    assert State.of("Failed", "boom") == State.of(StateType.FAILED, "boom")
    assert State.of("Failed").is_failed()
    assert Success("x") != State.of("Failed", "x")
    assert all(is_finished(t) == State.of(t).is_finished() for t in StateType)


def test_state_hierarchy() -> None:
    assert is_finished(StateType.TIMED_OUT)
    assert is_failed(StateType.TRIGGER_FAILED)
    assert not is_finished(StateType.CANCELLING)
    assert not is_failed(StateType.SUCCESS)
