"""Bounded memory of recent event ids, to drop exact duplicates (at-least-once input)."""

from __future__ import annotations


class EventIdMemory:
    """Remembers at least the last `capacity` distinct event ids, and at most twice that.

    Two generations of sets: ids go into the current one; once it holds `capacity` ids it
    becomes the previous generation and the one before is dropped whole. Membership asks
    both. Cheaper per id than an exact least-recently-added order (no per-id eviction),
    and memory stays bounded whatever the input rate.
    """

    __slots__ = ("_capacity", "_current", "_previous")

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self._capacity = capacity
        self._current: set[str] = set()
        self._previous: set[str] = set()

    def add(self, event_id: str) -> bool:
        """Record `event_id`; False when it was already remembered (a duplicate)."""
        current = self._current
        if event_id in current or event_id in self._previous:
            return False
        current.add(event_id)
        if len(current) >= self._capacity:
            self._previous = current
            self._current = set()
        return True

    def __contains__(self, event_id: object) -> bool:
        return event_id in self._current or event_id in self._previous

    def __len__(self) -> int:
        return len(self._current) + len(self._previous)
