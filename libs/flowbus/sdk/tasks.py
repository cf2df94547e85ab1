"""Tasks and parameters: the nodes of a flow.

Calling a task inside ``with Flow(...)`` adds it to that flow, and task
arguments that are other tasks become edges. Outside a flow, a task call
just runs the function.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import timedelta
from typing import Any, overload

from flowbus.sdk import flow_context


class Task:
    def __init__(
        self,
        fn: Callable[..., Any] | None = None,
        *,
        name: str | None = None,
        max_retries: int = 0,
        retry_delay: timedelta | None = None,
        tags: list[str] | None = None,
    ) -> None:
        self.fn = fn
        self.name = name or (fn.__name__ if fn is not None else type(self).__name__)
        self.max_retries = max_retries
        self.retry_delay = retry_delay
        self.tags = sorted(set(tags or []))
        if fn is not None:
            functools.update_wrapper(self, fn)

    def run(self, *args: Any, **kwargs: Any) -> Any:
        assert self.fn is not None
        return self.fn(*args, **kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        flow = flow_context.current()
        if flow is None:
            return self.run(*args, **kwargs)
        return flow.bind(self, args, kwargs)

    def __repr__(self) -> str:
        return f"<Task: {self.name}>"


class Parameter(Task):
    """A flow input; its value comes from the run's parameters."""

    def __init__(self, name: str, default: Any = None, required: bool = False) -> None:
        super().__init__(name=name)
        self.default = default
        self.required = required

    def run(self, *args: Any, **kwargs: Any) -> Any:
        from flowbus.sdk import context

        parameters = context.get("parameters") or {}
        if self.name in parameters:
            return parameters[self.name]
        if self.required:
            raise ValueError(f"Required parameter {self.name!r} was not supplied.")
        return self.default

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        flow = flow_context.current()
        if flow is None:
            return self.run()
        return flow.bind(self, (), {})

    def __repr__(self) -> str:
        return f"<Parameter: {self.name}>"


@overload
def task(fn: Callable[..., Any], /) -> Task: ...


@overload
def task(
    *,
    name: str | None = None,
    max_retries: int = 0,
    retry_delay: timedelta | None = None,
    tags: list[str] | None = None,
) -> Callable[[Callable[..., Any]], Task]: ...


def task(fn: Callable[..., Any] | None = None, /, **options: Any) -> Task | Callable[[Callable[..., Any]], Task]:
    """``@task`` or ``@task(name=..., max_retries=..., retry_delay=..., tags=...)``."""
    if fn is not None:
        return Task(fn)

    def decorate(inner: Callable[..., Any]) -> Task:
        return Task(inner, **options)

    return decorate
