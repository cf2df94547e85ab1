"""Identifiers: time-ordered UUIDs (version 7, RFC 9562) for every row and key flowbus mints.

A random UUID (version 4) sends each insert to a random leaf of every index
it is part of (the primary key, the task runs' and the history's
``flow_run_id``): a batch of a hundred runs dirtied hundreds of pages, and
SQLite wrote each whole page to its write-ahead log at commit. A version 7
UUID starts with the time in milliseconds, so new rows land at the right
edge of those indexes, a few pages per batch. It is still a UUID of 36
characters, unique across processes (62 random bits each), and sorts by
creation time. Nothing reads meaning into it: ids are opaque to clients.
"""

from __future__ import annotations

import random
import threading
import time

_MAX_SEQUENCE = 0xFFF
_lock = threading.Lock()
_last_ms = 0
_sequence = 0


def uuid7() -> str:
    """A new version 7 UUID as its canonical string, monotonic within this process."""
    global _last_ms, _sequence
    now_ms = time.time_ns() // 1_000_000
    with _lock:
        if now_ms > _last_ms:
            _last_ms, _sequence = now_ms, random.getrandbits(8)
        elif _sequence < _MAX_SEQUENCE:
            _sequence += 1
        else:  # 4,096 ids in one millisecond: borrow the next one
            _last_ms, _sequence = _last_ms + 1, 0
        ms, sequence = _last_ms, _sequence
    value = (ms << 80) | (0x7 << 76) | (sequence << 64) | (0b10 << 62) | random.getrandbits(62)
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
