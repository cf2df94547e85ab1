"""Untrusted JSON bytes, refused before a parser sees them when too big or too deeply nested.

Every decoder of bytes a client could have sent goes through ``PayloadLimits``:
the faststream decoder of every service, the fast lane, the heartbeat
subjects (both through faststream's decoder), the scheduler's replan hints and
the gateway's HTTP bodies, WebSocket frames and JSON literals. ``json.loads``
recurses once per level and raised RecursionError (a traceback, then
INTERNAL) past about a thousand; the scan here counts ``[`` and ``{`` outside
strings in C-speed passes, so a payload nested deeper than
``nats.max_json_depth`` is a VALIDATION_ERROR whoever parses it
(docs/semantics.md, "Limits").
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from itertools import accumulate, count
from operator import sub
from typing import Any

from flowbus.schemas.common import ErrorCode, FlowbusError
from flowbus.settings import Settings

# A JSON string: from a quote to the next unescaped one, or to the end when
# none follows (unterminated: everything after it is inside). It always
# matches from a quote, so the scan stays linear on any input.
_STRING = re.compile(rb'"[^"\\]*+(?:\\.?[^"\\]*+)*+(?:"|\Z)', re.DOTALL)
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")
# An opening bracket as 2, a closing one as 0: after i brackets their sum is the depth plus i.
_STEPS = bytes.maketrans(b"[{]}", b"\x02\x02\x00\x00")


def json_nesting(data: bytes) -> int:
    """How deeply ``data`` nests arrays and objects (a scalar: 0), counted from
    the brackets outside strings without parsing; meaningful for JSON only."""
    steps = _STRING.sub(b"", data).translate(_STEPS, _NOT_BRACKET)
    # Iterators written in C all the way: about 0.1 s for a megabyte of brackets,
    # twice what json.loads takes for them, and nothing for a typical command
    # (see nested_deeper_than).
    return max(0, max(map(sub, accumulate(steps), count(1)), default=0))


def nested_deeper_than(data: bytes, limit: int) -> bool:
    # Fewer brackets than the limit cannot nest past it: most commands stop here.
    if data.count(b"[") + data.count(b"{") <= limit:
        return False
    return json_nesting(data) > limit


class PayloadRefused(FlowbusError):
    """A payload refused before it was parsed: over the size or the nesting limit."""

    code = ErrorCode.VALIDATION_ERROR


@dataclass(frozen=True)
class PayloadLimits:
    max_bytes: int
    max_depth: int

    @classmethod
    def of(cls, settings: Settings, max_bytes: int | None = None) -> PayloadLimits:
        """The command limits (``nats.max_command_bytes``, ``nats.max_json_depth``), or another size cap."""
        nats = settings.nats
        return cls(nats.max_command_bytes if max_bytes is None else max_bytes, nats.max_json_depth)

    def check(self, data: bytes) -> None:
        """Raise ``PayloadRefused`` when ``data`` is over either limit."""
        if len(data) > self.max_bytes:
            raise PayloadRefused(f"payload of {len(data)} bytes exceeds the limit of {self.max_bytes} bytes")
        if nested_deeper_than(data, self.max_depth):
            raise PayloadRefused(f"payload nested deeper than {self.max_depth} levels")

    def loads(self, data: bytes | str) -> Any:
        """The JSON value of ``data`` (UTF-8 only); ``PayloadRefused`` over a
        limit, ``ValueError`` when it is not JSON."""
        raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
        self.check(raw)
        # Decoded first: json.loads would take UTF-16 and UTF-32 bytes too,
        # whose quote bytes the scan above does not see as quotes.
        text = raw.decode("utf-8") if isinstance(data, bytes) else data
        return json.loads(text)
