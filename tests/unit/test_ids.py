"""Row ids: version 7 UUIDs, unique and in creation order."""

from __future__ import annotations

import uuid

from flowbus.ids import uuid7


def test_ids_are_version_7_uuids_in_creation_order() -> None:
    ids = [uuid7() for _ in range(20_000)]  # more than fit in one millisecond's sequence
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids), "each id sorts after the one before (indexes grow at their right edge)"
    parsed = uuid.UUID(ids[0])
    assert str(parsed) == ids[0]
    assert parsed.version == 7
    assert parsed.variant == uuid.RFC_4122
