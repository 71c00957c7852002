"""Runs sink calls with bounded total concurrency; one call at a time per session.

The per-session rule is the store's (it never hands out work for a session with a call in
flight); this class bounds the total and wakes partition workers when capacity frees up.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol

from processor.domain import Indicator, SinkResult

log = logging.getLogger(__name__)


class Sink(Protocol):
    """What the reconciler needs of the Genesys sink."""

    async def apply(self, session_id: str, desired: Indicator | None) -> SinkResult:
        """Make the remote indicator equal `desired` (None = clear; clears go first)."""
        ...


Deliver = Callable[[SinkResult], None]


class Reconciler:
    """Bounded pool of in-flight Genesys calls shared by every partition of a process."""

    def __init__(self, sink: Sink, max_in_flight: int) -> None:
        self._sink = sink
        self._capacity = max_in_flight
        # Sets waiting for API budget must not take every slot: a clear could then not
        # even reach the sink's queue, where clears go first (I1).
        self._set_capacity = max(1, max_in_flight - max(1, max_in_flight // 4))
        self._tasks: set[asyncio.Task[None]] = set()
        self._sets: set[asyncio.Task[None]] = set()
        self._listeners: list[Callable[[], None]] = []

    @property
    def in_flight(self) -> int:
        """Calls running now."""
        return len(self._tasks)

    @property
    def free_slots(self) -> int:
        """How many more calls may start now."""
        return max(0, self._capacity - len(self._tasks))

    @property
    def free_set_slots(self) -> int:
        """How many more sets or refreshes may start now (the rest is kept for clears)."""
        return max(0, min(self.free_slots, self._set_capacity - len(self._sets)))

    def on_capacity(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call `listener` whenever a call finishes; returns a function that unsubscribes."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def launch(self, session_id: str, desired: Indicator | None, deliver: Deliver) -> None:
        """Start one call; `deliver` receives its result on the event loop."""
        self._tasks.add(task := asyncio.create_task(self._run(session_id, desired, deliver)))
        if desired is not None:
            self._sets.add(task)
        task.add_done_callback(self._finished)

    async def _run(self, session_id: str, desired: Indicator | None, deliver: Deliver) -> None:
        deliver(await self._sink.apply(session_id, desired))

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._sets.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            log.error("sink call crashed", exc_info=error)
        for listener in list(self._listeners):
            listener()

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no call is in flight or the timeout passes; True when idle."""
        if not self._tasks:
            return True
        await asyncio.wait(set(self._tasks), timeout=timeout_s)
        return not self._tasks

    async def aclose(self) -> None:
        """Cancel whatever still runs (shutdown after the grace period)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
