"""Bounds where the data is born: whatever the model accepts, the changelog can store."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from processor.clock import ManualClock
from processor.codec import decode_event
from processor.domain import Outcome, SinkResult
from processor.models import MAX_EPOCH_MS, DeadLetter, DlqReason, TypingEvent
from processor.state import EngineConfig, PartitionStore
from processor.state.changelog import decode

NOW = 1_700_000_000_000
APPLIED = SinkResult(Outcome.APPLIED, http_status=200, attempts=1)

extreme_ints = st.integers() | st.sampled_from(
    [
        -1,
        0,
        499,
        500,
        60_000,
        60_001,
        NOW,
        MAX_EPOCH_MS,
        MAX_EPOCH_MS + 1,
        2**63 - 1,
        2**63,
        2**64 - 1,
        2**64,
    ]
)


@settings(max_examples=300, deadline=None)
@given(
    occurred_at=extreme_ints,
    timeout_ms=st.none() | extreme_ints,
    status=st.sampled_from(["typing", "paused", "stopped"]),
    now=st.sampled_from([NOW, MAX_EPOCH_MS]),
)
def test_every_accepted_event_reaches_the_changelog(
    occurred_at: int, timeout_ms: int | None, status: str, now: int
) -> None:
    document = {
        "event_id": "e1",
        "session_id": "s1",
        "status": status,
        "occurred_at": occurred_at,
        "timeout_ms": timeout_ms,
    }
    decoded = decode_event(
        b"s1", json.dumps(document).encode(), topic="in", partition=0, offset=0, now_ms=now
    )
    if isinstance(decoded, DeadLetter):
        assert decoded.reason in (
            DlqReason.OCCURRED_AT_OUT_OF_RANGE,
            DlqReason.TIMEOUT_OUT_OF_RANGE,
            DlqReason.INVALID_TYPE,  # integers beyond 64 bits arrive as floats
        )
        assert not (0 <= occurred_at <= MAX_EPOCH_MS and timeout_ms in (None, 500))
        return
    assert isinstance(decoded, TypingEvent)
    assert 0 <= decoded.occurred_at <= MAX_EPOCH_MS
    store = PartitionStore(0, EngineConfig(), ManualClock(now))
    store.on_event(decoded, 0)
    for work in store.take_work(10):
        store.on_result(work, APPLIED)
    for key, value in store.drain().changelog:
        if value is not None:
            assert decode(key, value).sid == "s1"
