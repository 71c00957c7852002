"""Deadline timers: buckets of session ids plus a heap of bucket times.

A calendar queue rather than a heap of per-timer tuples: one list slot per timer instead
of a tuple and its ints (memory matters with a million sessions), while the heap over
distinct bucket times keeps "what is due" O(log buckets + due). Cancellation is lazy:
the owner remembers which bucket its live entry is in and ignores entries that do not
match when they fire, so rescheduling never searches.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator


class TimerWheel:
    """Timers keyed by session id, fired no earlier than asked and at most `resolution` late."""

    __slots__ = ("_buckets", "_heap", "_resolution")

    def __init__(self, resolution_ms: int) -> None:
        if resolution_ms < 1:
            raise ValueError("resolution_ms must be >= 1")
        self._resolution = resolution_ms
        self._buckets: dict[int, list[str]] = {}
        self._heap: list[int] = []

    def slot(self, at_ms: int) -> int:
        """The bucket time a timer for `at_ms` fires at: the first bucket edge >= `at_ms`."""
        r = self._resolution
        return -(-at_ms // r) * r

    def schedule(self, key: str, at_ms: int) -> int:
        """Add a timer for `key` at `at_ms`; returns its bucket time (the cancellation handle)."""
        bucket = self.slot(at_ms)
        entries = self._buckets.get(bucket)
        if entries is None:
            self._buckets[bucket] = [key]
            heapq.heappush(self._heap, bucket)
        else:
            entries.append(key)
        return bucket

    def next_due(self) -> int | None:
        """Earliest bucket time with entries (some may be cancelled), or None."""
        return self._heap[0] if self._heap else None

    def pop_due(self, now_ms: int) -> Iterator[tuple[int, list[str]]]:
        """Remove and yield `(bucket, keys)` for every bucket due at `now_ms`, oldest first."""
        heap = self._heap
        buckets = self._buckets
        while heap and heap[0] <= now_ms:
            bucket = heapq.heappop(heap)
            yield bucket, buckets.pop(bucket)

    def __len__(self) -> int:
        """Number of entries, cancelled ones included."""
        return sum(len(entries) for entries in self._buckets.values())
