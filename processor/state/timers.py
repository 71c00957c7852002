"""Deadline timers: buckets of session ids plus a heap of bucket times.

A calendar queue rather than a heap of per-timer tuples: one list slot per timer instead
of a tuple and its ints (memory matters with a million sessions), while the heap over
distinct bucket times keeps "what is due" O(log buckets + due). Cancellation is lazy:
the owner remembers which bucket its live entry is in and ignores entries that do not
match when they fire, so rescheduling never searches. The owner says when it leaves an
entry behind (`cancel`), and once such entries outnumber the live ones (and are at least
`COMPACT_MIN_ENTRIES`), they are dropped in one pass that asks the owner which entries
are live: a session that reschedules often (an eviction timer set at the end of every
burst, cancelled by the next one) no longer leaves an entry per reschedule until its
time comes, and the pass costs O(1) per cancellation, amortised.
"""

from __future__ import annotations

import heapq
import inspect
import weakref
from collections.abc import Callable, Iterator

COMPACT_MIN_ENTRIES = 1024
"""Cancelled entries kept at least before a compaction (a pass over a few is not worth it)."""

Live = Callable[[str, int], bool]
"""`live(key, bucket)`: True when the entry of `key` in `bucket` is still wanted."""


class TimerWheel:
    """Timers keyed by session id, fired no earlier than asked and at most `resolution` late.

    With `live`, entries the owner has `cancel`led are dropped once they outnumber the
    live ones; without it they stay until they fire (and are ignored then). A `live` that
    is a method of the owner is held weakly: the owner holds the wheel, and a cycle
    between them would outlive the owner where collections are frozen (`gc.freeze`).
    """

    __slots__ = ("_buckets", "_cancelled", "_heap", "_live", "_resolution", "_size")

    def __init__(self, resolution_ms: int, live: Live | None = None) -> None:
        if resolution_ms < 1:
            raise ValueError("resolution_ms must be >= 1")
        self._resolution = resolution_ms
        self._buckets: dict[int, list[str]] = {}
        self._heap: list[int] = []
        self._live: Callable[[], Live | None] | None = None
        if inspect.ismethod(live):
            self._live = weakref.WeakMethod(live)
        elif live is not None:
            self._live = lambda: live
        self._size = 0  # entries held, cancelled ones included
        self._cancelled = 0  # of which cancelled (at most: some may have fired since)

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
        self._size += 1
        return bucket

    def cancel(self) -> None:
        """The owner no longer wants one of the entries held (it will ignore it when it
        fires); compacts when the cancelled outnumber the live. Call it once `live` no
        longer names the entry (after scheduling its replacement, say).

        Safe while `pop_due` is being iterated: a compaction works in place and leaves
        the buckets already popped alone.
        """
        self._cancelled += 1
        self._maybe_compact()

    def _maybe_compact(self) -> None:
        cancelled = self._cancelled
        if (
            cancelled >= COMPACT_MIN_ENTRIES
            and cancelled > self._size - cancelled
            and self._live is not None
        ):
            self.compact()

    def compact(self) -> None:
        """Drop every entry `live` says is no longer wanted (and repeats of a live one in
        its bucket). O(entries held)."""
        live = None if self._live is None else self._live()
        if live is None:
            return
        buckets = self._buckets
        size = 0
        for bucket in list(buckets):
            entries = buckets[bucket]
            if len(entries) == 1:
                kept = entries if live(entries[0], bucket) else []
            else:
                seen: set[str] = set()
                kept = []
                for key in entries:
                    if key not in seen and live(key, bucket):
                        seen.add(key)
                        kept.append(key)
            if kept:
                buckets[bucket] = kept
                size += len(kept)
            else:
                del buckets[bucket]
        heap = self._heap
        heap[:] = list(buckets)  # in place: a `pop_due` under way goes on with it
        heapq.heapify(heap)
        self._size = size
        self._cancelled = 0

    def next_due(self) -> int | None:
        """Earliest bucket time with entries (some may be cancelled), or None."""
        return self._heap[0] if self._heap else None

    def pop_due(self, now_ms: int) -> Iterator[tuple[int, list[str]]]:
        """Remove and yield `(bucket, keys)` for every bucket due at `now_ms`, oldest first
        (cancelled entries included: the owner ignores them)."""
        heap = self._heap
        buckets = self._buckets
        while heap and heap[0] <= now_ms:
            bucket = heapq.heappop(heap)
            keys = buckets.pop(bucket)
            self._size -= len(keys)
            # (cancelled ones among them leave too: never count more than remain, and the
            # live ones that left may leave the cancelled outnumbering the rest)
            if self._cancelled > self._size:
                self._cancelled = self._size
            self._maybe_compact()
            yield bucket, keys

    def __len__(self) -> int:
        """Number of entries, cancelled ones included."""
        return self._size
