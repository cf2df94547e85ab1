"""The depth scan of flowbus.runtime.payload: brackets inside strings do not count,
escapes are followed, the limit is inclusive, and anything that is not JSON is
scanned without error (and refused by the parser after it)."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import pytest
from pydantic import ValidationError

from flowbus.runtime.payload import PayloadLimits, PayloadRefused, json_nesting, nested_deeper_than
from flowbus.schemas.common import ErrorCode
from flowbus.settings import NatsTuning


def _nested(depth: int, leaf: Any = 1) -> Any:
    value = leaf
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


@pytest.mark.parametrize("depth", [0, 1, 2, 5, 63, 64, 65, 300])
def test_the_scan_agrees_with_the_structure(depth: int) -> None:
    assert json_nesting(json.dumps(_nested(depth)).encode()) == depth


@pytest.mark.parametrize(
    ("text", "depth"),
    [
        ('"[[[{{{"', 0),
        ('["]]]]", ["[[["]]', 2),
        ('{"a[": "}}}", "b": [1, "{"]}', 2),
        # An escaped quote does not end the string; an escaped backslash does not escape the quote after it.
        (r'["\"[[[[", []]', 2),
        (r'["\\", [[]]]', 3),
        (r'["\\\"]]]", [[]]]', 3),
        ('["\\u005b\\u007b", [1]]', 2),
        ('"snow ❄ [["', 0),
    ],
)
def test_brackets_inside_strings_do_not_count(text: str, depth: int) -> None:
    assert json.loads(text) is not None  # each case is JSON
    assert json_nesting(text.encode()) == depth


def test_the_limit_is_inclusive() -> None:
    at = json.dumps(_nested(64)).encode()
    over = json.dumps(_nested(65)).encode()
    assert not nested_deeper_than(at, 64)
    assert nested_deeper_than(over, 64)
    limits = PayloadLimits(1 << 20, 64)
    assert limits.loads(at) == _nested(64)
    with pytest.raises(PayloadRefused) as refused:
        limits.loads(over)
    assert refused.value.code is ErrorCode.VALIDATION_ERROR
    assert refused.value.message == "payload nested deeper than 64 levels"


def test_a_string_full_of_brackets_is_not_deep() -> None:
    body = json.dumps({"text": "[" * 10_000 + "{" * 10_000}).encode()
    assert not nested_deeper_than(body, 64)
    assert PayloadLimits(1 << 20, 64).loads(body)["text"].startswith("[[[")


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"this is not json", id="text"),
        pytest.param(b'"unterminated [[[[', id="unterminated-string"),
        pytest.param(b'["ends in a backslash\\', id="trailing-backslash"),
        pytest.param(b"]]]]][[[", id="closing-first"),
        pytest.param(b"\xff\xfe\x00[[[", id="not-utf8"),
        pytest.param(b'"\\"\\"\\"' * 50_000, id="escaped-quotes"),
    ],
)
def test_what_is_not_json_scans_and_then_fails_to_parse(body: bytes) -> None:
    assert json_nesting(body) >= 0
    with pytest.raises((json.JSONDecodeError, UnicodeDecodeError)):
        PayloadLimits(1 << 20, 64).loads(body)


def test_random_bytes_scan_quickly_and_never_parse() -> None:
    limits = PayloadLimits(2 << 20, 64)
    for _ in range(20):
        body = os.urandom(64 << 10)
        with pytest.raises((UnicodeDecodeError, PayloadRefused)):
            limits.loads(body)


def test_deep_nesting_is_refused_without_recursing() -> None:
    body = b"[" * 500_000 + b"]" * 500_000
    started = time.perf_counter()
    with pytest.raises(PayloadRefused):
        PayloadLimits(2 << 20, 64).loads(body)
    # Generous on a shared machine: the scan takes about a tenth of this.
    assert time.perf_counter() - started < 1.0


def test_utf16_json_is_not_taken() -> None:
    # json.loads would take these bytes, whose quotes and brackets the scan reads differently.
    with pytest.raises(UnicodeDecodeError):
        PayloadLimits(1 << 20, 64).loads(json.dumps(["x"]).encode("utf-16"))


def test_size_is_checked_first() -> None:
    with pytest.raises(PayloadRefused) as refused:
        PayloadLimits(10, 64).loads(b"[" * 11)
    assert refused.value.message == "payload of 11 bytes exceeds the limit of 10 bytes"


def test_text_is_measured_in_utf8() -> None:
    limits = PayloadLimits(8, 64)
    assert limits.loads('"❄❄"') == "❄❄"  # 8 bytes
    with pytest.raises(PayloadRefused):
        limits.loads('"❄❄❄"')


def test_the_depth_setting_is_bounded() -> None:
    assert NatsTuning().max_json_depth == 64
    for bad in (10, 10_000):
        with pytest.raises(ValidationError, match="max_json_depth"):
            NatsTuning(max_json_depth=bad)
