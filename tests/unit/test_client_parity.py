"""The blocking ``Client`` keeps up with ``AsyncClient``: a twin for every public method, same parameters."""

from __future__ import annotations

import inspect
from typing import Any

from flowbus.client import AsyncClient, Client

# Public AsyncClient methods that have no blocking twin, and why.
ASYNC_ONLY = {
    "connect": "the NATS connection lives on the blocking client's private loop thread",
    "backoff": "pauses on the caller's event loop, for asyncio code that resends its own commands (the runner)",
}


def public_methods(cls: type) -> list[str]:
    return sorted(
        name for name in dir(cls) if not name.startswith("_") and inspect.isfunction(inspect.getattr_static(cls, name))
    )


def missing_twins(async_cls: type, sync_cls: type) -> list[str]:
    """Public methods of ``async_cls`` that ``sync_cls`` lacks (ASYNC_ONLY aside)."""
    have = set(public_methods(sync_cls))
    return [name for name in public_methods(async_cls) if name not in have and name not in ASYNC_ONLY]


def parameters(fn: Any) -> tuple[list[tuple[str, Any, Any]], set[tuple[str, Any]]]:
    """Positional parameters in order (self aside) and keyword-only ones, with their defaults."""
    params = list(inspect.signature(fn).parameters.values())[1:]
    positional = [(p.name, p.kind, p.default) for p in params if p.kind is not p.KEYWORD_ONLY]
    keyword = {(p.name, p.default) for p in params if p.kind is p.KEYWORD_ONLY}
    return positional, keyword


def test_every_public_async_method_has_a_blocking_twin() -> None:
    assert missing_twins(AsyncClient, Client) == []


def test_the_twins_the_readme_once_lacked_exist() -> None:
    assert {"get_project", "explain_waiting_run"} <= set(public_methods(Client))


def test_a_missing_twin_is_reported() -> None:
    without = {k: v for k, v in vars(Client).items() if k not in ("get_project", "follow_flow_run")}
    partial = type("PartialClient", (), without)
    assert missing_twins(AsyncClient, partial) == ["follow_flow_run", "get_project"]


def test_each_twin_takes_the_same_parameters() -> None:
    for name in public_methods(Client):
        if name == "close" or not hasattr(AsyncClient, name):
            continue
        assert parameters(getattr(Client, name)) == parameters(getattr(AsyncClient, name)), name


def test_only_the_documented_exceptions_lack_a_twin() -> None:
    assert set(ASYNC_ONLY) <= set(public_methods(AsyncClient)), "ASYNC_ONLY names a method that no longer exists"
    assert not set(ASYNC_ONLY) & set(public_methods(Client))


def test_create_flow_run_returns_the_id_and_its_out_twin_the_run() -> None:
    # As Prefect 1.x's Client.create_flow_run; create_flow_run_out takes the same parameters.
    assert parameters(AsyncClient.create_flow_run) == parameters(AsyncClient.create_flow_run_out)
    for cls in (AsyncClient, Client):
        assert inspect.signature(cls.create_flow_run).return_annotation == "str", cls
        assert inspect.signature(cls.create_flow_run_out).return_annotation == "FlowRunOut", cls
        assert inspect.signature(cls.get_flow_run_info).return_annotation == "FlowRunInfo", cls
