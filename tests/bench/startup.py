"""Start-up time and idle memory of ``flowbus up``, printed as JSON.

``python -m tests.bench.startup`` (also the ``startup`` part of ``make bench``)
starts ``flowbus up`` as a user would (``python -m flowbus_services.cli up``,
the embedded nats-server, SQLite in the home) ``STARTUP_SAMPLES`` times
(default 5) on a fresh ``FLOWBUS_HOME`` each, and as many times again on a
home that an earlier start already made (warm). For each start it reports:

- ``first_answer_s``: from just before the process is spawned to the first
  answered command: ``list_projects`` through ``flowbus.client.AsyncClient``,
  sent as soon as ``$FLOWBUS_HOME/endpoint.json`` exists (before it, no
  client can find the stack), and again until it is answered;
- ``banner_s``: until ``flowbus up`` printed ``Press Ctrl-C to stop.``;
- on the last fresh and warm start, once the stack has been idle for
  ``STARTUP_IDLE_SECONDS`` (default 5): the PSS of each process of its tree
  (``/proc/<pid>/smaps_rollup``), named by its role, and their sum.

Python's bytecode cache decides much of a start: compiling flowbus's
imports from source takes longer than everything else ``flowbus up`` does.
So each series runs twice (``STARTUP_BYTECODE``, default ``cached,none``):
``cached`` as on an installed system (``make install`` and the Dockerfile
compile the dependencies' bytecode; Python caches the rest at first import):
a cache of its own under the bench's temporary folder
(``PYTHONPYCACHEPREFIX``), filled by one untimed start first; ``none``
without any cache, every import compiled from source, as under
``PYTHONDONTWRITEBYTECODE=1`` with a venv that ``uv sync`` made without
``--compile-bytecode``.

Everything this process needs is imported before the clock starts, so the
times are ``flowbus up``'s. Never part of the test suite: numbers are
printed, not asserted.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from flowbus.client import AsyncClient
from flowbus.settings import Settings

SAMPLES = int(os.environ.get("STARTUP_SAMPLES", "5"))
BYTECODE = [mode.strip() for mode in os.environ.get("STARTUP_BYTECODE", "cached,none").split(",") if mode.strip()]
IDLE_SECONDS = float(os.environ.get("STARTUP_IDLE_SECONDS", "5"))
POLL_SECONDS = 0.005
TIMEOUT_SECONDS = 60.0


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            found.extend(int(child) for child in task.read_text().split())
        except OSError:
            continue
    return found


def _tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        todo.extend(_children(current))
    return pids


def _pss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


def _role(pid: int, root: int, services: dict[int, str]) -> str:
    if pid == root:
        return "flowbus up"
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    if cmdline and cmdline[0].endswith(b"nats-server"):
        return "nats-server"
    return services.get(pid, f"pid {pid}")


def _start_time(pid: int) -> int:
    # Field 22 of /proc/<pid>/stat, after the parenthesized command name.
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])


def memory(root: int, settings: Settings) -> dict[str, Any]:
    """PSS (MB) of each process in ``root``'s tree, named by role, and the sum.

    The service processes are named by the endpoint file's metrics groups, in
    the order ``flowbus up`` forks them (so, of birth)."""
    groups = ["+".join(group["services"]) for group in json.loads(settings.endpoint_file.read_text())["metrics"]]
    kids = sorted(_children(root), key=_start_time)
    services = [pid for pid in kids if _role(pid, root, {}) != "nats-server"]
    names = dict(zip(services, groups, strict=False))
    per_process: dict[str, float] = {}
    for pid in _tree(root):
        try:
            per_process[_role(pid, root, names)] = round(_pss_kib(pid) / 1024, 1)
        except OSError:
            continue
    return {"pss_mb": per_process, "pss_total_mb": round(sum(per_process.values()), 1)}


async def _first_answer(settings: Settings, started: float) -> float:
    while not settings.endpoint_file.exists():
        if time.perf_counter() - started > TIMEOUT_SECONDS:
            raise SystemExit("flowbus up wrote no endpoint file")
        await asyncio.sleep(POLL_SECONDS)
    while True:
        try:
            async with AsyncClient(settings) as client:
                await client.get_projects(limit=1)
            return time.perf_counter() - started
        except Exception:
            if time.perf_counter() - started > TIMEOUT_SECONDS:
                raise
            await asyncio.sleep(POLL_SECONDS)


def start_once(home: Path, measure_memory: bool, pycache: Path | None) -> dict[str, Any]:
    """One ``flowbus up`` on ``home``: its times (and memory), then SIGTERM and wait.
    ``pycache``: the bytecode cache it reads and fills; None: no cache at all."""
    env = {**os.environ, "FLOWBUS_HOME": str(home)}
    for var in ("FLOWBUS_NATS_URL", "FLOWBUS_DATABASE_URL", "FLOWBUS_AUTH_DIR", "FLOWBUS_NATS_CREDS"):
        env.pop(var, None)
    if pycache is None:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        env["PYTHONPYCACHEPREFIX"] = str(home.parent / "no-pycache")  # no cache beside the sources is read
    else:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(pycache)
    settings = Settings(home=home)
    banner: list[float] = []
    started = time.perf_counter()
    up = subprocess.Popen(
        [sys.executable, "-m", "flowbus_services.cli", "up"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )

    def read() -> None:
        assert up.stdout is not None
        for line in up.stdout:
            if line.startswith("Press Ctrl-C") and not banner:
                banner.append(time.perf_counter() - started)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        first = asyncio.run(_first_answer(settings, started))
        while not banner and up.poll() is None:
            time.sleep(POLL_SECONDS)
        result: dict[str, Any] = {"first_answer_s": round(first, 3), "banner_s": round(banner[0], 3)}
        if measure_memory:
            time.sleep(IDLE_SECONDS)
            result |= memory(up.pid, settings)
        return result
    finally:
        up.send_signal(signal.SIGTERM)
        up.wait(timeout=60)
        reader.join(timeout=5)


def _summary(samples: list[dict[str, Any]]) -> dict[str, Any]:
    firsts = [sample["first_answer_s"] for sample in samples]
    summary: dict[str, Any] = {
        "first_answer_s": firsts,
        "first_answer_median_s": round(statistics.median(firsts), 3),
        "banner_s": [sample["banner_s"] for sample in samples],
    }
    for sample in samples:
        if "pss_total_mb" in sample:
            summary |= {"pss_mb": sample["pss_mb"], "pss_total_mb": sample["pss_total_mb"]}
    return summary


def startup_bench(samples: int = SAMPLES) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for mode in BYTECODE:
            pycache = None if mode == "none" else Path(tmp) / "pycache"
            if pycache is not None:
                start_once(Path(tmp) / f"warm-up-{mode}", measure_memory=False, pycache=pycache)
            homes = [Path(tmp) / f"{mode}-{index}" for index in range(samples)]
            fresh = [
                start_once(home, measure_memory=index == samples - 1, pycache=pycache)
                for index, home in enumerate(homes)
            ]
            # An existing home: the one the first fresh start made.
            warm = [
                start_once(homes[0], measure_memory=index == samples - 1, pycache=pycache) for index in range(samples)
            ]
            for name, series in (("startup_fresh_home", fresh), ("startup_existing_home", warm)):
                results.append({"name": name, "bytecode": mode, "samples": samples, **_summary(series)})
    return results


def main() -> None:
    print(json.dumps({"machine": {"cpus": os.cpu_count()}, "results": startup_bench()}, indent=2))


if __name__ == "__main__":
    main()
