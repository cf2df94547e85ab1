"""Durable consumers deleted while their loops run are recreated: the state
service's log writer and an agent's run-queue consumer go on processing what
is published afterwards, and the log writer does not replay what it stored."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from nats.aio.client import Client
from nats.js.api import ConsumerInfo
from nats.js.errors import NotFoundError

from flowbus import subjects
from flowbus.agent.local import LocalAgent
from flowbus.client import AsyncClient
from flowbus.schemas.runs import LogRecord
from flowbus.settings import Settings
from flowbus.states import StateType
from tests.helpers.agents import running_agents
from tests.helpers.builders import register, unique
from tests.helpers.runs import watch_until_finished
from tests.helpers.scripts import register_greeting_flow
from tests.helpers.waiting import eventually


async def consumer_present(nc: Client, stream: str, durable: str) -> ConsumerInfo:
    return await eventually(
        lambda: nc.jetstream().consumer_info(stream, durable), f"consumer {durable} exists", ignoring=(NotFoundError,)
    )


async def stored_messages(client: AsyncClient, run_id: str, expected: list[str]) -> list[str]:
    async def messages() -> list[str]:
        return [r.message for r in await client.get_flow_run_logs(run_id)]

    return await eventually(messages, f"logs {expected} stored", until=lambda got: sorted(got) == sorted(expected))


async def test_the_log_writer_recreates_its_deleted_consumer(client: AsyncClient, nc: Client) -> None:
    flow = await register(client, unique("p"), unique("f"))
    run_id = await client.create_flow_run(flow.id)

    def line(message: str) -> LogRecord:
        return LogRecord(flow_run_id=run_id, timestamp=datetime.now(UTC), name="t", level="INFO", message=message)

    await client.write_logs([line("before")])
    await stored_messages(client, run_id, ["before"])

    await nc.jetstream().delete_consumer(subjects.LOGS_STREAM, subjects.LOGS_DURABLE)
    await client.write_logs([line("after")])
    # Stored once each: the recreated consumer resumes after what was stored, not from the stream's start.
    assert sorted(await stored_messages(client, run_id, ["before", "after"])) == ["after", "before"]
    info = await consumer_present(nc, subjects.LOGS_STREAM, subjects.LOGS_DURABLE)
    assert info.config.filter_subjects == [subjects.LOGS_ALL]


async def test_an_agent_recreates_its_deleted_run_queue_consumer(
    stack: Settings, client: AsyncClient, nc: Client, tmp_path: Path
) -> None:
    flow_id = await register_greeting_flow(client, tmp_path)
    labels = [unique("recover")]
    agent = LocalAgent(stack, labels=labels, hostname_label=False)
    durable = subjects.agent_durable(labels)
    async with running_agents(agent):
        await consumer_present(nc, subjects.RUNQ_STREAM, durable)
        await nc.jetstream().delete_consumer(subjects.RUNQ_STREAM, durable)
        run_id = await client.create_flow_run(flow_id, labels=labels)
        watched = await watch_until_finished(client, run_id)
        assert watched.types[-1] is StateType.SUCCESS, watched.messages
        assert agent.consumer is not None
        assert agent.consumer.recreated == 1
