"""Batch publishing to JetStream: stored in order, refusals raise, repeats are dropped quietly."""

from __future__ import annotations

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import StreamConfig

from flowbus.runtime.jspublish import BatchPublisher, PublishFailed, ack_error
from tests.helpers import unique


async def _stream(nc: Client) -> tuple[str, str]:
    name = unique("batch").replace("-", "_").upper()
    # Under flowbus.: the service credential the tests use may publish only there.
    await nc.jetstream().add_stream(StreamConfig(name=name, subjects=[f"flowbus.test.{name}.>"]))
    return name, f"flowbus.test.{name}.run"


async def test_a_batch_is_stored_in_order_before_publish_returns(nc: Client) -> None:
    stream, subject = await _stream(nc)
    messages = [(f"{subject}.{i % 3}", f"m-{i}", f"payload {i}".encode()) for i in range(500)]
    await BatchPublisher(nc).publish(messages, timeout=10)
    js = nc.jetstream()
    assert (await js.stream_info(stream)).state.messages == 500
    for seq in (1, 250, 500):
        stored = await js.get_msg(stream, seq)
        assert stored.data == f"payload {seq - 1}".encode()
        assert stored.headers is not None
        assert stored.headers["Nats-Msg-Id"] == f"m-{seq - 1}"


async def test_a_repeated_message_id_is_dropped_without_an_error(nc: Client) -> None:
    stream, subject = await _stream(nc)
    publisher = BatchPublisher(nc)
    await publisher.publish([(subject, "same", b"first")], timeout=10)
    await publisher.publish([(subject, "same", b"again"), (subject, "other", b"second")], timeout=10)
    js = nc.jetstream()
    assert (await js.stream_info(stream)).state.messages == 2
    assert (await js.get_msg(stream, 1)).data == b"first"


async def test_a_subject_no_stream_stores_fails_the_batch(nc: Client) -> None:
    _stream_name, subject = await _stream(nc)
    publisher = BatchPublisher(nc)
    with pytest.raises(PublishFailed, match="503"):
        await publisher.publish(
            [(subject, "a", b"kept"), ("flowbus.test." + unique("nowhere"), "b", b"lost")], timeout=10
        )
    # The publisher keeps working after a refusal.
    await publisher.publish([(subject, "c", b"next")], timeout=10)


async def test_a_sent_batch_is_confirmed_once_stored(nc: Client) -> None:
    stream, subject = await _stream(nc)
    publisher = BatchPublisher(nc)
    sent = await publisher.send([(subject, f"s-{i}", f"sent {i}".encode()) for i in range(300)])
    await publisher.confirm(sent, timeout=10)
    js = nc.jetstream()
    assert (await js.stream_info(stream)).state.messages == 300
    assert (await js.get_msg(stream, 300)).data == b"sent 299"
    await publisher.confirm(await publisher.send([]), timeout=10)  # nothing to wait for


async def test_a_refusal_fails_the_confirmation_of_a_sent_batch(nc: Client) -> None:
    _stream_name, subject = await _stream(nc)
    publisher = BatchPublisher(nc)
    sent = await publisher.send([("flowbus.test." + unique("nowhere"), "x", b"lost"), (subject, "y", b"kept")])
    with pytest.raises(PublishFailed, match="503"):
        await publisher.confirm(sent, timeout=10)


def test_acknowledgements_are_read_as_stored_or_refused() -> None:
    def ack(data: bytes, headers: dict[str, str] | None = None) -> Msg:
        return Msg(_client=Client(), subject="_INBOX.x.1", data=data, headers=headers)  # never connected

    assert ack_error(ack(b'{"stream":"FLOWBUS_EVENTS","seq":7}')) is None
    assert ack_error(ack(b'{"stream":"FLOWBUS_EVENTS","seq":7,"duplicate":true}')) is None
    refused = ack(b'{"error":{"code":503,"err_code":10077,"description":"maximum messages exceeded"}}')
    assert ack_error(refused) == "503 maximum messages exceeded"
    assert ack_error(ack(b"", {"Status": "503"})) == "status 503"
    assert ack_error(ack(b"")) == "empty acknowledgement"
