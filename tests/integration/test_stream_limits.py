"""JetStream limits of the flowbus streams: bytes, message size, consumers, and
no purge or message deletion through the API; an existing stream adopts them."""

from __future__ import annotations

import contextlib

import pytest
from nats.aio.client import Client
from nats.js.api import StreamConfig
from nats.js.errors import APIError, BadRequestError, NotFoundError

from flowbus import subjects
from flowbus.runtime.nats import ensure_streams, stream_configs
from flowbus.settings import NatsTuning, Settings

# JetStream's error codes for what these limits refuse.
MESSAGE_TOO_LARGE = 10054
DELETE_NOT_PERMITTED = 10057
PURGE_NOT_PERMITTED = 10110
STREAMS = (subjects.EVENTS_STREAM, subjects.LOGS_STREAM, subjects.RUNQ_STREAM)


@pytest.fixture
def limits(nats_url: str) -> Settings:
    return Settings(
        nats_url=nats_url,
        nats=NatsTuning(
            events_max_bytes=64 << 20,
            logs_max_bytes=32 << 20,
            runq_max_bytes=16 << 20,
            runq_max_msg_bytes=128 << 10,
            stream_max_consumers=500,
            leases_max_bytes=1 << 20,
        ),
    )


async def test_an_existing_stream_without_limits_adopts_them(nc: Client, limits: Settings) -> None:
    js = nc.jetstream()
    # As an older flowbus created them: age only, deletes and purges allowed.
    for config in stream_configs(limits):
        assert config.name is not None
        with contextlib.suppress(NotFoundError):
            await js.delete_stream(config.name)
        await js.add_stream(
            StreamConfig(name=config.name, subjects=config.subjects, max_age=config.max_age, storage=config.storage)
        )
    await js.publish(subjects.run_queue(["limits"]), b"{}")
    await ensure_streams(js, limits)

    expected = {
        subjects.EVENTS_STREAM: (64 << 20, limits.nats.events_max_msg_bytes),
        subjects.LOGS_STREAM: (32 << 20, 1 << 20),
        subjects.RUNQ_STREAM: (16 << 20, 128 << 10),
    }
    for name in STREAMS:
        config = (await js.stream_info(name)).config
        assert (config.max_bytes, config.max_msg_size) == expected[name], name
        assert config.max_consumers == 500
        assert config.deny_delete
        assert config.deny_purge
    leases = (await js.stream_info(f"KV_{subjects.LEASES_BUCKET}")).config
    assert leases.max_bytes == 1 << 20
    # The message stored before the update is still there.
    assert (await js.stream_info(subjects.RUNQ_STREAM)).state.messages == 1


async def test_an_oversize_message_is_refused(nc: Client, limits: Settings) -> None:
    js = nc.jetstream()
    await ensure_streams(js, limits)
    with pytest.raises(BadRequestError) as refused:
        await js.publish(subjects.run_queue(["limits"]), b"x" * ((128 << 10) + 1))
    assert refused.value.err_code == MESSAGE_TOO_LARGE
    with pytest.raises(BadRequestError) as refused:
        await js.publish(subjects.logs("oversize"), b"x" * ((1 << 20) + 1))
    assert refused.value.err_code == MESSAGE_TOO_LARGE


async def test_purge_and_message_deletion_are_refused(nc: Client, limits: Settings) -> None:
    js = nc.jetstream()
    await ensure_streams(js, limits)
    ack = await js.publish(subjects.logs("kept"), b"{}")
    for name in STREAMS:
        with pytest.raises(APIError) as refused:
            await js.purge_stream(name)
        assert refused.value.err_code == PURGE_NOT_PERMITTED, name
    with pytest.raises(APIError) as refused:
        await js.delete_msg(subjects.LOGS_STREAM, ack.seq)
    assert refused.value.err_code == DELETE_NOT_PERMITTED
    assert (await js.get_msg(subjects.LOGS_STREAM, ack.seq)).data == b"{}"
