"""Bounded memory of recent events, to drop exact duplicates (at-least-once input)."""

from __future__ import annotations

from collections.abc import Hashable


class EventIdMemory:
    """Remembers at least the last `capacity` distinct event keys (the store's: session
    and event id), and at most twice that.

    Two generations of sets: keys go into the current one; once it holds `capacity` it
    becomes the previous generation and the one before is dropped whole. Membership asks
    both. Cheaper per key than an exact least-recently-added order (no per-key eviction),
    and memory stays bounded whatever the input rate.
    """

    __slots__ = ("_capacity", "_current", "_previous")

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self._capacity = capacity
        self._current: set[Hashable] = set()
        self._previous: set[Hashable] = set()

    def add(self, key: Hashable) -> bool:
        """Record `key`; False when it was already remembered (a duplicate)."""
        current = self._current
        if key in current or key in self._previous:
            return False
        current.add(key)
        if len(current) >= self._capacity:
            self._previous = current
            self._current = set()
        return True

    def __contains__(self, key: object) -> bool:
        return key in self._current or key in self._previous

    def __len__(self) -> int:
        return len(self._current) + len(self._previous)
