"""Starting flow-run processes quickly: a fork server with the runner preloaded.

Each flow run executes in its own process (a crash or a ``SIGKILL`` on
cancel touches only that run). A fresh ``python -m flowbus.agent.runner``
spends most of a second importing pydantic models before doing anything;
forking a server process that has already imported the runner starts a run
in milliseconds. The fork server is a clean single-threaded interpreter
started once per agent (multiprocessing's ``forkserver``), so forking it is
safe even though the agent itself runs threads.

The child gets the run's environment as the agent built it (``FLOWBUS_FLOW_RUN_ID``,
``FLOWBUS_FLOW_ID``, ``FLOWBUS_NATS_URL``, ``FLOWBUS_LABELS`` and the
run config's ``env``) before anything reads settings, then runs the same
``flowbus.agent.runner.main`` as the command-line form.

Touches no subjects itself; the runner it starts does.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import sys
from collections.abc import Iterator
from multiprocessing.context import ForkServerContext
from multiprocessing.process import BaseProcess

_RUNNER_MODULE = "flowbus.agent.runner"


def _child_main(flow_run_id: str, env: dict[str, str]) -> None:
    # The fork server's environment is the agent's at start-up; the run's own wins.
    os.environ.clear()
    os.environ.update(env)
    from flowbus.agent import runner

    sys.exit(runner.main([flow_run_id]))


async def fd_readable(fd: int) -> None:
    """Until ``fd`` is readable, on the running loop: no thread, no polling."""
    loop = asyncio.get_running_loop()
    ready = loop.create_future()

    def on_ready() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, on_ready)
    try:
        await ready
    finally:
        loop.remove_reader(fd)


class FlowProcess:
    """One running flow: its PID, its exit, and the signals that stop it."""

    def __init__(self, process: BaseProcess) -> None:
        self._process = process

    @property
    def pid(self) -> int:
        assert self._process.pid is not None
        return self._process.pid

    async def wait(self) -> int:
        """The exit code, once the process has ended (negative: killed by that signal)."""
        await fd_readable(self._process.sentinel)  # readable once the process has ended
        self._process.join()
        code = self._process.exitcode
        self._process.close()
        return code if code is not None else 1

    def terminate(self) -> None:
        self._process.terminate()

    def kill(self) -> None:
        self._process.kill()


class Launcher:
    def __init__(self) -> None:
        self._context: ForkServerContext = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload([_RUNNER_MODULE])

    @property
    def context(self) -> ForkServerContext:
        return self._context

    async def warm_up(self) -> None:
        """Start the fork server (it imports the runner: most of a second) off the loop."""
        import multiprocessing.forkserver

        await asyncio.to_thread(multiprocessing.forkserver.ensure_running)

    def start(self, flow_run_id: str, env: dict[str, str]) -> FlowProcess:
        process = self._context.Process(
            target=_child_main, args=(flow_run_id, env), name=f"flowbus-run-{flow_run_id}", daemon=False
        )
        with _main_module_hidden():
            process.start()
        return FlowProcess(process)


@contextlib.contextmanager
def _main_module_hidden() -> Iterator[None]:
    """Keep multiprocessing from re-running the agent's ``__main__`` in the child.

    multiprocessing re-imports the parent's main script in every child (as
    ``__mp_main__``) so that pickled functions defined there resolve. Our
    child's target lives in this module, and the main script may be a flow
    script calling ``flow.register()`` and ``flow.run_agent()`` without an
    ``if __name__ == "__main__"`` guard (the tutorial's second variant):
    re-running it would register again and start a second agent. Hidden only
    while the child's start-up data is taken, on the loop's thread.
    """
    main = sys.modules["__main__"]
    saved = {key: main.__dict__.pop(key) for key in ("__file__",) if key in main.__dict__}
    spec = getattr(main, "__spec__", None)
    main.__spec__ = None
    try:
        yield
    finally:
        main.__dict__.update(saved)
        main.__spec__ = spec
