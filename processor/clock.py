"""Time sources, and waits bounded by a stop. Logic takes a `Clock` so that tests can drive
time by hand."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from typing import Any, Protocol


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


async def wait_unless_stopped(stop: asyncio.Event, seconds: float, *also: asyncio.Event) -> None:
    """Wait `seconds` (a backoff), or less if `stop`, or one of `also` (a revocation that
    waits for no backoff), is set meanwhile."""
    waits = [asyncio.ensure_future(event.wait()) for event in (stop, *also)]
    try:
        await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
        await asyncio.gather(*waits, return_exceptions=True)


async def within_grace(
    work: Coroutine[Any, Any, None], stop: asyncio.Event, grace_s: float
) -> bool:
    """Run `work` for as long as it takes until `stop` is set, then for at most `grace_s`
    more; False when it was cancelled for taking longer. Its exceptions propagate."""
    running = asyncio.ensure_future(work)
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({running, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not running.done():
            await asyncio.wait({running}, timeout=grace_s)
        if not running.done():
            return False
        await running
        return True
    finally:
        stopping.cancel()
        if not running.done():  # past the grace, or cancelled from outside
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)
