"""The restart policy of `flowbus up` and how it reports a process's end (flowbus_services/supervisor.py)."""

from __future__ import annotations

from flowbus.settings import Settings
from flowbus_services.supervisor import RestartPolicy, describe_exit


def test_the_restart_delay_doubles_from_half_a_second_up_to_ten() -> None:
    policy = RestartPolicy()
    assert [policy.delay(deaths) for deaths in range(1, 8)] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


def test_the_crash_limit_is_five_deaths_within_a_minute_unless_set() -> None:
    assert (Settings().up.restart_burst, Settings().up.restart_window_seconds) == (5, 60.0)
    chosen = Settings.model_validate({"up": {"restart_burst": 3, "restart_window_seconds": "2m"}})
    assert (chosen.up.restart_burst, chosen.up.restart_window_seconds) == (3, 120.0)


def test_an_exit_names_its_code_or_its_signal() -> None:
    assert describe_exit(1) == "exited with code 1"
    assert describe_exit(0) == "exited with code 0"
    assert describe_exit(-9) == "was killed by SIGKILL"
    assert describe_exit(-15) == "was killed by SIGTERM"
