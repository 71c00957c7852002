"""How early the clear of an expiring webchat indicator goes out.

A clear is shown when it lands, one request's latency after it is sent. Sent at the
deadline, every expiry shows that latency as phantom typing; sent one typical latency
early, it lands about when the deadline passes. The estimate is the median of the store's
recent PATCH round trips (a median: one slow retry must not move it), bounded so that
only events in the last sliver of a timeout can come after an early clear.
"""

from __future__ import annotations

from collections import deque

# Round trips the median is taken over (recent enough to follow a slower API).
_SAMPLES = 31
# At most this share of an indicator's timeout (1/20: an event later than 95% of the
# timeout after the last one is what an early clear can cut short).
_TIMEOUT_SHARE = 20


class ClearLead:
    """Median recent PATCH latency, as the lead of expiry clears; pure and O(samples)."""

    def __init__(self, max_ms: int) -> None:
        self._max = max_ms
        self._recent: deque[float] = deque(maxlen=_SAMPLES)
        self._lead = 0

    def observe(self, latency_ms: float) -> None:
        """Record one PATCH's round trip (send to answer)."""
        if self._max <= 0 or latency_ms < 0:
            return
        self._recent.append(latency_ms)
        ordered = sorted(self._recent)
        self._lead = min(self._max, int(ordered[len(ordered) // 2]))

    def for_timeout(self, timeout_ms: int) -> int:
        """Lead for an indicator of that timeout: the estimate, within its share of it."""
        return min(self._lead, timeout_ms // _TIMEOUT_SHARE)
