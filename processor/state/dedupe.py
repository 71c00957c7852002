"""Bounded memory of recent event ids, to drop exact duplicates (at-least-once input)."""

from __future__ import annotations

from collections import deque


class EventIdMemory:
    """Remembers the last `capacity` distinct event ids, oldest forgotten first.

    A set answers membership; a deque keeps insertion order so that the oldest id can be
    forgotten in O(1). Memory stays bounded whatever the input rate.
    """

    __slots__ = ("_capacity", "_order", "_seen")

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self._capacity = capacity
        self._seen: set[str] = set()
        self._order: deque[str] = deque()

    def add(self, event_id: str) -> bool:
        """Record `event_id`; False when it was already remembered (a duplicate)."""
        seen = self._seen
        if event_id in seen:
            return False
        seen.add(event_id)
        order = self._order
        order.append(event_id)
        if len(order) > self._capacity:
            seen.discard(order.popleft())
        return True

    def __contains__(self, event_id: object) -> bool:
        return event_id in self._seen

    def __len__(self) -> int:
        return len(self._order)
