"""Log batches fit the LOGS stream's message limit: every valid record fits a
batch on its own, the shippers' packing cuts records into batches that fit, and
a batch that would not fit is refused; the settings keep the limit above it."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from flowbus.schemas.runs import (
    LOG_BATCH_MAX_BYTES,
    LOG_BATCH_MAX_RECORDS,
    LOG_INFO_MAX_BYTES,
    LOG_MESSAGE_MAX_CHARS,
    LogBatch,
    LogRecord,
    pack_log_batch,
)
from flowbus.settings import NatsTuning

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def record(message: str, *, name: str = "flow", info: dict[str, object] | None = None) -> LogRecord:
    return LogRecord.model_validate(
        {"flow_run_id": "run-1", "timestamp": NOW, "name": name, "level": "INFO", "message": message, "info": info}
    )


def test_the_largest_valid_record_fits_a_batch_alone() -> None:
    # Control characters take 6 bytes of JSON each (\u0001): the worst case.
    info = {"k": "\x01" * (LOG_INFO_MAX_BYTES // 6 - 10)}
    largest = LogRecord.model_validate(
        {
            "flow_run_id": "\x01" * 255,
            "task_run_id": "\x01" * 255,
            "timestamp": NOW,
            "name": "\x01" * 255,
            "level": "CRITICAL",
            "message": "\x01" * LOG_MESSAGE_MAX_CHARS,
            "info": info,
        }
    )
    size = len(largest.model_dump_json().encode())
    assert size <= largest.max_json_bytes() < LOG_BATCH_MAX_BYTES
    payload, count = pack_log_batch([largest])
    assert count == 1
    assert len(payload) < LOG_BATCH_MAX_BYTES
    assert LogBatch.model_validate_json(payload).records == [largest]


def test_packing_cuts_long_records_into_batches_that_fit() -> None:
    records = [record(f"{i}:" + "é" * 60_000) for i in range(40)]
    batches: list[LogRecord] = []
    rest = records
    while rest:
        payload, count = pack_log_batch(rest)
        assert len(payload) <= LOG_BATCH_MAX_BYTES
        batch = LogBatch.model_validate_json(payload)
        assert len(batch.records) == count
        assert payload == batch.model_dump_json().encode()  # the packing is the batch's own JSON
        batches.extend(batch.records)
        rest = rest[count:]
    assert batches == records


def test_packing_caps_a_batch_at_1000_records() -> None:
    payload, count = pack_log_batch([record("short")] * 1500)
    assert count == LOG_BATCH_MAX_RECORDS
    assert len(LogBatch.model_validate_json(payload).records) == LOG_BATCH_MAX_RECORDS


def test_a_batch_over_the_byte_limit_is_refused() -> None:
    with pytest.raises(ValidationError, match="bytes of JSON"):
        LogBatch(records=[record("x" * LOG_MESSAGE_MAX_CHARS)] * 11)
    # Just under the limit is fine.
    LogBatch(records=[record("x" * LOG_MESSAGE_MAX_CHARS)] * 10)


def test_an_oversize_info_is_refused() -> None:
    with pytest.raises(ValidationError, match="info takes at most"):
        record("m", info={"k": "x" * LOG_INFO_MAX_BYTES})


def test_the_logs_stream_limit_must_hold_a_full_batch() -> None:
    with pytest.raises(ValidationError, match="logs_max_msg_bytes"):
        NatsTuning(logs_max_msg_bytes=LOG_BATCH_MAX_BYTES)


def test_the_events_stream_limit_must_hold_two_commands() -> None:
    with pytest.raises(ValidationError, match="events_max_msg_bytes"):
        NatsTuning(max_command_bytes=4 << 20)
    NatsTuning(max_command_bytes=4 << 20, events_max_msg_bytes=9 << 20)
