"""flowbus.subjects: label-set keys, run queues and the agent matching rule, which must agree."""

from __future__ import annotations

import pytest

from flowbus import subjects


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
