"""The group committer's ordering: batches, outcomes per command, and how far
publishing and replying may overlap the next batch's write."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from flowbus.runtime.batching import GroupCommitter
from flowbus.schemas.common import FlowbusError, NotFound


class Recorder:
    def __init__(self) -> None:
        self.log: list[str] = []
        self.publishing = asyncio.Event()  # set: after_commit may return
        self.in_after_commit = asyncio.Event()

    async def process(self, commands: Sequence[int]) -> list[int | FlowbusError]:
        self.log.append(f"write {list(commands)}")
        return [NotFound(f"no {c}") if c < 0 else c * 10 for c in commands]

    async def after_commit(self) -> None:
        self.in_after_commit.set()
        await self.publishing.wait()
        self.log.append("published")


@pytest.mark.parametrize(("pipeline", "overlaps"), [(1, False), (2, True)])
async def test_the_next_batch_is_written_after_the_previous_replies_only_with_a_pipeline_of_one(
    pipeline: int, overlaps: bool
) -> None:
    rec = Recorder()
    committer: GroupCommitter[int, int] = GroupCommitter("t", rec.process, rec.after_commit, pipeline=pipeline)
    first = asyncio.create_task(committer.submit(1))
    await rec.in_after_commit.wait()  # batch [1] is committed, its events still publishing
    second = asyncio.create_task(committer.submit(2))
    for _ in range(20):  # let the worker run as far as it may
        await asyncio.sleep(0)
    assert ("write [2]" in rec.log) is overlaps
    rec.publishing.set()
    assert (await first, await second) == (10, 20)
    if not overlaps:
        assert rec.log == ["write [1]", "published", "write [2]", "published"]
    await committer.close()


async def test_waiting_commands_share_a_batch_and_keep_their_own_outcomes() -> None:
    rec = Recorder()
    rec.publishing.set()
    committer: GroupCommitter[int, int] = GroupCommitter("t", rec.process, rec.after_commit, pipeline=1)
    results = await asyncio.gather(*(committer.submit(c) for c in (1, -2, 3)), return_exceptions=True)
    assert (results[0], results[2]) == (10, 30)
    assert isinstance(results[1], NotFound)
    assert rec.log[0] == "write [1, -2, 3]"
    await committer.close()


async def test_a_failed_batch_is_retried_one_command_at_a_time() -> None:
    log: list[list[int]] = []

    async def process(commands: Sequence[int]) -> list[int | FlowbusError]:
        log.append(list(commands))
        if 2 in commands:
            raise RuntimeError("constraint")
        return list(commands)

    committer: GroupCommitter[int, int] = GroupCommitter("t", process, pipeline=1)
    results = await asyncio.gather(*(committer.submit(c) for c in (1, 2, 3)), return_exceptions=True)
    assert (results[0], results[2]) == (1, 3)
    assert isinstance(results[1], RuntimeError)
    assert log == [[1, 2, 3], [1], [2], [3]]
    await committer.close()


@pytest.mark.parametrize("writers", [1, 2])
async def test_batches_are_written_side_by_side_only_with_more_than_one_writer(writers: int) -> None:
    writing = 0
    most = 0
    release = asyncio.Event()
    both_started = asyncio.Event()

    async def process(commands: Sequence[int]) -> list[int | FlowbusError]:
        nonlocal writing, most
        writing += 1
        most = max(most, writing)
        if writing == 2:
            both_started.set()
        try:
            await release.wait()  # a write that waits on the database
        finally:
            writing -= 1
        return list(commands)

    committer: GroupCommitter[int, int] = GroupCommitter("t", process, pipeline=4, writers=writers)
    first = asyncio.create_task(committer.submit(1))
    for _ in range(20):  # the first batch is being written
        await asyncio.sleep(0)
    second = asyncio.create_task(committer.submit(2))
    for _ in range(20):
        await asyncio.sleep(0)
    assert both_started.is_set() is (writers == 2)
    release.set()
    assert (await first, await second) == (1, 2)
    assert most == writers
    await committer.close()
