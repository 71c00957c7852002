"""No call after the process stalled, until the group had time to say it moved on.

A process that stops running for longer than the group's session timeout (CPU throttling,
a VM pause, SIGSTOP) has lost its partitions: another replica owns them, has restored their
stores and calls Genesys for their sessions. Woken, this one still believes what it knew:
its timers fire at once, and a refresh or a set of an indicator the new owner has cleared
would go out (its 412 re-read would even re-apply it), before its next heartbeat tells it
that it is no longer a member. So after a stall long enough to have cost the membership,
calls are held for a few heartbeat intervals: by then the rebalance has revoked the
partitions (their workers close and nothing of theirs goes out), or the membership held.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

TICK_S = 0.5
"""How often `watch` notes that the event loop runs."""


class StallGuard:
    """Tells the scheduler to hold calls after the process stood still (see the module).

    `stall_s`: a gap between two looks at the clock longer than this is a stall that may
    have cost the group membership. `hold_s`: how long calls are held after one.
    """

    def __init__(
        self, stall_s: float, hold_s: float, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        if not 0 < TICK_S < stall_s:
            raise ValueError(f"stall_s must be more than {TICK_S}")
        self._stall_s = stall_s
        self._hold_s = hold_s
        self._now = monotonic
        self._seen = monotonic()
        self._hold_until = -1.0
        self.stalls = 0
        """Stalls detected so far."""

    def tick(self) -> None:
        """The event loop runs now."""
        self._look(self._now())

    def hold_left(self) -> float:
        """Seconds calls must still wait (0: none); a stall no tick saw yet counts."""
        now = self._now()
        self._look(now)
        return max(0.0, self._hold_until - now)

    async def watch(self) -> None:
        """Tick until cancelled: a tick that comes late is a stall."""
        while True:
            self.tick()
            await asyncio.sleep(TICK_S)  # the watch's period, not synchronisation

    def _look(self, now: float) -> None:
        gap = now - self._seen
        self._seen = max(self._seen, now)
        if gap > self._stall_s:
            self.stalls += 1
            self._hold_until = now + self._hold_s
            log.warning(
                "the process stood still for %.1f s (the group may have moved its partitions"
                " on): no calls for %.1f s, until the group has said so",
                gap,
                self._hold_s,
            )
