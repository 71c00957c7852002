"""Client-wide call budget: a token bucket, 429 pauses, clears served before sets."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum


class Priority(IntEnum):
    """Order in which waiting calls get budget; lower goes first."""

    HIGH = 0
    """Clears: a phantom indicator is worse than a late one (DESIGN I1)."""
    NORMAL = 1
    """Sets and refreshes."""


class TokenBucket:
    """Pure token-bucket arithmetic on times passed in by the caller.

    `rate_per_s` tokens accrue per second up to `capacity`. A pause moves the start of
    accrual into the future, so nothing is spent until it ends and no burst builds up
    during it.
    """

    def __init__(self, rate_per_s: float, capacity: int, now: float) -> None:
        if rate_per_s <= 0 or capacity < 1:
            raise ValueError("bucket needs rate_per_s > 0 and capacity >= 1")
        self._rate = rate_per_s
        self._capacity = float(capacity)
        self._tokens = float(capacity)
        self._since = now

    @property
    def resumes_at(self) -> float:
        """Time from which tokens accrue again (in the future while paused)."""
        return self._since

    def _refill(self, now: float) -> None:
        if now > self._since:
            self._tokens = min(self._capacity, self._tokens + (now - self._since) * self._rate)
            self._since = now

    def wait_time(self, now: float) -> float:
        """Seconds until one token is available (0 when one is available now)."""
        self._refill(now)
        paused = max(0.0, self._since - now)
        if self._tokens >= 1.0:
            return paused
        return paused + (1.0 - self._tokens) / self._rate

    def try_take(self, now: float) -> bool:
        """Spend one token if one is available now."""
        if self.wait_time(now) > 0:
            return False
        self._tokens -= 1.0
        return True

    def pause_until(self, until: float) -> None:
        """Spend nothing before `until` and restart accrual from empty there."""
        if until > self._since:
            self._tokens = 0.0
            self._since = until


@dataclass(order=True)
class _Waiter:
    priority: int
    seq: int
    wake: asyncio.Event = field(compare=False, default_factory=asyncio.Event)
    gone: bool = field(compare=False, default=False)


class RateLimiter:
    """The budget of one OAuth client, shared by all its concurrent calls.

    Waiting callers are served by priority, then in arrival order. Only the head of the
    queue sleeps on the clock; the others sleep until the head hands over.
    """

    def __init__(
        self,
        rate_per_minute: int,
        burst: int,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._now = monotonic
        self._bucket = TokenBucket(rate_per_minute / 60.0, burst, monotonic())
        self._queue: list[_Waiter] = []
        self._seq = itertools.count()
        self.on_wait: Callable[[float], None] | None = None
        """Observer of waits: called with the seconds a caller had to wait for budget."""

    @property
    def waiting(self) -> int:
        """Callers waiting for budget."""
        return sum(1 for waiter in self._queue if not waiter.gone)

    def paused_for(self) -> float:
        """Seconds left of a 429 pause (0 when not paused)."""
        return max(0.0, self._bucket.resumes_at - self._now())

    def pause(self, seconds: float) -> None:
        """Stop every call of this client for `seconds` (a 429's `Retry-After`)."""
        self._bucket.pause_until(self._now() + max(0.0, seconds))
        self._wake_head()

    async def acquire(
        self, priority: Priority = Priority.NORMAL, max_wait_s: float | None = None
    ) -> bool:
        """Wait for budget for one call; False when none comes within `max_wait_s` seconds.

        Returns False at once when the budget is known to come too late, rather than
        sleeping until the deadline first.
        """
        now = self._now()
        if self._head() is None and self._bucket.try_take(now):
            return True
        started = now
        deadline = None if max_wait_s is None else now + max_wait_s
        waiter = _Waiter(int(priority), next(self._seq))
        heapq.heappush(self._queue, waiter)
        try:
            while True:
                waiter.wake.clear()
                now = self._now()
                delay: float | None = None
                if self._head() is waiter:
                    delay = self._bucket.wait_time(now)
                    if delay <= 0:
                        self._bucket.try_take(now)
                        return True
                if deadline is not None:
                    remaining = deadline - now
                    # The head knows already that budget comes too late: no point waiting.
                    if remaining <= 0 or (delay is not None and delay > remaining):
                        return False
                    delay = remaining if delay is None else delay
                await _wait(waiter.wake, delay)
        finally:
            waiter.gone = True
            self._wake_head()
            if self.on_wait is not None:
                self.on_wait(self._now() - started)

    def _head(self) -> _Waiter | None:
        while self._queue and self._queue[0].gone:
            heapq.heappop(self._queue)
        return self._queue[0] if self._queue else None

    def _wake_head(self) -> None:
        head = self._head()
        if head is not None:
            head.wake.set()


async def _wait(event: asyncio.Event, seconds: float | None) -> None:
    """Until `event` is set or `seconds` pass, whichever comes first."""
    if seconds is None:
        await event.wait()
        return
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        pass
