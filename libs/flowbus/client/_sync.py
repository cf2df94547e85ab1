"""``Client``: the blocking twin of ``AsyncClient``, for scripts.

Each method runs its ``AsyncClient`` namesake on a private event-loop thread.
They are built from the async methods themselves (``blocking``,
``blocking_iter``), so their signatures, results and docstrings cannot drift.
``tests/unit/test_client_parity.py`` fails when an async method has no twin.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine, Iterator
from typing import Any, Concatenate, ParamSpec, TypeVar

from flowbus.client._async import AsyncClient
from flowbus.schemas.agents import AgentOut
from flowbus.settings import Settings

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")


def blocking(
    method: Callable[Concatenate[AsyncClient, P], Coroutine[Any, Any, R]],
) -> Callable[Concatenate[Client, P], R]:
    """The blocking form of an ``AsyncClient`` coroutine method: same parameters, same result."""

    @functools.wraps(method)
    def run(self: Client, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return self._run(method(self._async, *args, **kwargs))

    return run


def blocking_iter(
    method: Callable[Concatenate[AsyncClient, P], AsyncIterator[R]],
) -> Callable[Concatenate[Client, P], Iterator[R]]:
    """The blocking form of an ``AsyncClient`` async-generator method: the same items, as they arrive."""

    @functools.wraps(method)
    def run(self: Client, /, *args: P.args, **kwargs: P.kwargs) -> Iterator[R]:
        return self._iterate(method(self._async, *args, **kwargs))

    # The async method's return annotation names an async generator, which this is not.
    run.__annotations__ = {k: v for k, v in method.__annotations__.items() if k != "return"}
    run.__signature__ = inspect.signature(method).replace(return_annotation=inspect.Signature.empty)  # type: ignore[attr-defined]
    return run


class Client:
    """Blocking client for scripts: every AsyncClient method, run on a private loop thread."""

    def __init__(self, settings: Settings | None = None) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="flowbus-client", daemon=True)
        self._thread.start()
        self._async = AsyncClient(settings)

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def _iterate(self, stream: AsyncIterator[T]) -> Iterator[T]:
        """Each item is fetched on the client's loop thread, so the caller's thread
        just blocks (pushed, not polled) until the next one; leaving the loop
        early closes the stream (a watch removes its stream consumers)."""

        async def step() -> tuple[T] | None:
            # Caught here: StopAsyncIteration must not cross the thread hand-off.
            try:
                return (await anext(stream),)
            except StopAsyncIteration:
                return None

        try:
            while (item := self._run(step())) is not None:
                yield item[0]
        finally:
            if isinstance(stream, AsyncGenerator) and self._loop.is_running():
                self._run(stream.aclose())

    def close(self) -> None:
        self._run(self._async.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    request = blocking(AsyncClient.request)

    # ---- projects and flows ---------------------------------------------------

    create_project = blocking(AsyncClient.create_project)
    get_project = blocking(AsyncClient.get_project)
    get_projects = blocking(AsyncClient.get_projects)
    rename_project = blocking(AsyncClient.rename_project)
    set_project_description = blocking(AsyncClient.set_project_description)
    delete_project = blocking(AsyncClient.delete_project)
    register = blocking(AsyncClient.register)
    get_flow = blocking(AsyncClient.get_flow)
    add_flow_tasks = blocking(AsyncClient.add_flow_tasks)
    get_flows = blocking(AsyncClient.get_flows)
    archive_flow = blocking(AsyncClient.archive_flow)
    unarchive_flow = blocking(AsyncClient.unarchive_flow)
    set_flow_settings = blocking(AsyncClient.set_flow_settings)
    disable_flow_heartbeat = blocking(AsyncClient.disable_flow_heartbeat)
    disable_lazarus_for_flow = blocking(AsyncClient.disable_lazarus_for_flow)
    enable_flow_version_locking = blocking(AsyncClient.enable_flow_version_locking)
    set_flow_schedule_state = blocking(AsyncClient.set_flow_schedule_state)
    set_flow_group_labels = blocking(AsyncClient.set_flow_group_labels)
    set_flow_group_default_parameters = blocking(AsyncClient.set_flow_group_default_parameters)
    set_flow_group_schedule = blocking(AsyncClient.set_flow_group_schedule)

    # ---- runs -----------------------------------------------------------------

    create_flow_run = blocking(AsyncClient.create_flow_run)
    create_flow_run_out = blocking(AsyncClient.create_flow_run_out)
    get_flow_run = blocking(AsyncClient.get_flow_run)
    get_flow_run_info = blocking(AsyncClient.get_flow_run_info)
    get_flow_runs = blocking(AsyncClient.get_flow_runs)
    set_flow_run_state = blocking(AsyncClient.set_flow_run_state)
    set_task_run_state = blocking(AsyncClient.set_task_run_state)
    cancel_flow_run = blocking(AsyncClient.cancel_flow_run)
    delete_flow_run = blocking(AsyncClient.delete_flow_run)
    create_flow_runs = blocking(AsyncClient.create_flow_runs)
    get_flow_run_history = blocking(AsyncClient.get_flow_run_history)
    get_flow_run_logs = blocking(AsyncClient.get_flow_run_logs)
    write_logs = blocking(AsyncClient.write_logs)
    send_flow_run_heartbeat = blocking(AsyncClient.send_flow_run_heartbeat)
    ensure_task_run = blocking(AsyncClient.ensure_task_run)
    set_flow_run_name = blocking(AsyncClient.set_flow_run_name)
    set_task_run_name = blocking(AsyncClient.set_task_run_name)
    watch_flow_run = blocking_iter(AsyncClient.watch_flow_run)
    follow_flow_run = blocking_iter(AsyncClient.follow_flow_run)

    # ---- agents ---------------------------------------------------------------

    get_agents = blocking(AsyncClient.get_agents)
    register_agent = blocking(AsyncClient.register_agent)
    send_agent_heartbeat = blocking(AsyncClient.send_agent_heartbeat)
    explain_waiting_run = blocking(AsyncClient.explain_waiting_run)
    get_schedule = blocking(AsyncClient.get_schedule)
    get_scheduler_status = blocking(AsyncClient.get_scheduler_status)

    # ---- API keys -------------------------------------------------------------

    create_api_key = blocking(AsyncClient.create_api_key)
    list_api_keys = blocking(AsyncClient.list_api_keys)
    delete_api_key = blocking(AsyncClient.delete_api_key)

    def agent_online(self, agent: AgentOut) -> bool:
        """Online: heard from within the last few agent heartbeat intervals."""
        return self._async.agent_online(agent)
