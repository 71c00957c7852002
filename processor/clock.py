"""Time sources. Logic takes a `Clock` so that tests can drive time by hand."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    """Wall-clock time in epoch milliseconds."""

    def now_ms(self) -> int:
        """Current time, epoch milliseconds."""
        ...


class SystemClock:
    """The real wall clock."""

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000


class ManualClock:
    """A clock that only moves when told to (tests, simulations)."""

    def __init__(self, start_ms: int = 1_700_000_000_000) -> None:
        self._now = start_ms

    def now_ms(self) -> int:
        return self._now

    def advance(self, ms: int) -> int:
        """Move forward by `ms` and return the new time."""
        if ms < 0:
            raise ValueError("a clock never goes backwards")
        self._now += ms
        return self._now

    def set(self, now_ms: int) -> None:
        """Jump to `now_ms` (never backwards)."""
        if now_ms < self._now:
            raise ValueError("a clock never goes backwards")
        self._now = now_ms


async def wait_unless_stopped(stop: asyncio.Event, seconds: float) -> None:
    """Wait `seconds` (a backoff), or less if `stop` is set meanwhile."""
    try:
        async with asyncio.timeout(seconds):
            await stop.wait()
    except TimeoutError:
        pass
