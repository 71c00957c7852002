"""Spends the Genesys API budget across every partition of the process (DESIGN §4b).

One task per process. Whenever something may have changed (a worker queued work, a call
finished, budget accrued), it asks the `Planner` what to send now, takes that work from
the partitions' stores and hands it to their workers, which put its intent on the
changelog and then launch the call. Work that is not sent stays in the stores, where it
keeps following the latest state at no cost.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from typing import Protocol

from processor.clock import Clock
from processor.planner import Capacity, Planner
from processor.state import NextCall, PartitionStore, Work
from processor.state.session import Session

from .reconciler import Reconciler

log = logging.getLogger(__name__)

# Shortest pause between rounds while work waits: bounds planning cost when tokens trickle.
MIN_ROUND_GAP_S = 0.005
# Longest pause while work waits, in case no one pokes (budget figures change with time).
MAX_ROUND_GAP_S = 1.0


class Dispatcher(Protocol):
    """A partition worker as the scheduler sees it."""

    @property
    def store(self) -> PartitionStore:
        """The partition's state store."""
        ...

    @property
    def accepting(self) -> bool:
        """True while the worker is restored and not closing."""
        ...

    def launch(self, work: Work, prepaid: int) -> None:
        """Record `work`'s intent on the changelog, then send it; its reconciler slot is
        held from now on (a round planned before it goes out does not hand it out again)."""
        ...


class Scheduler:
    """Decides, round by round, which calls go out (see the module docstring)."""

    def __init__(
        self,
        reconciler: Reconciler,
        clock: Clock,
        planner: Planner | None = None,
        on_wait: Callable[[float], None] | None = None,
        held: Callable[[], bool] = lambda: False,
    ) -> None:
        """`held`: True while no work may be taken (the membership lease has lapsed: the
        partitions may be another replica's by now); a caller that ends it pokes."""
        self._reconciler = reconciler
        self._held = held
        self._budget = reconciler.sink.budget
        self._clock = clock
        self._planner = planner or Planner()
        self._workers: dict[int, Dispatcher] = {}
        self._poked = asyncio.Event()
        self._on_wait = on_wait
        self._unsubscribe = reconciler.on_capacity(self.poke)
        self.rounds = 0
        """Planning rounds so far (for tests and the benchmarks)."""

    def attach(self, partition: int, worker: Dispatcher) -> None:
        """Spend budget on `worker`'s partition too."""
        self._workers[partition] = worker
        self.poke()

    def detach(self, partition: int) -> None:
        """Stop spending on `partition` (revoked)."""
        self._workers.pop(partition, None)

    def poke(self) -> None:
        """Something may be sendable now: plan a round soon."""
        self._poked.set()

    def plan_now(self) -> None:
        """A worker queued work: plan a round at once when budget and a slot are at hand,
        so that its calls go out in the worker's current turn (else soon, as `poke`)."""
        if self._budget.level() >= 1 and self._reconciler.free_slots > 0 and not self._held():
            self.plan_round()
        else:
            self._poked.set()

    def _cost(self, session: Session) -> int:
        # A webchat change without a cached ETag reads the session first; anything else
        # (a read-back of an unresolved intent, a messaging call) is one request.
        if (
            PartitionStore.next_call(session) is NextCall.WEBCHAT
            and self._reconciler.sink.cached_etag(session.sid) is None
        ):
            return 2
        return 1

    def plan_round(self) -> tuple[int, bool]:
        """Plan and launch one round; (calls launched, whether work is left waiting)."""
        self.rounds += 1
        workers = [(p, w) for p, w in self._workers.items() if w.accepting]
        stores = [w.store for _, w in workers]
        if not stores:
            return 0, False
        if self._held():
            # the partitions may be another replica's by now: wait for the group to say
            return 0, any(store.queued_work for store in stores)
        by_store = {id(w.store): w for _, w in workers}
        budget = self._budget
        reconciler = self._reconciler
        now = self._clock.now_ms()
        capacity = Capacity.of(budget, now, reconciler.free_slots, reconciler.free_set_slots)
        launched = 0
        for pick in self._planner.plan(stores, capacity, now, self._cost):
            work = pick.store.take(pick.session_id)
            if work is None:
                continue
            budget.spend(pick.cost)
            by_store[id(pick.store)].launch(work, pick.cost)
            launched += 1
        waiting = any(store.queued_work for store in stores)
        return launched, waiting

    async def run(self) -> None:
        """Plan rounds until cancelled."""
        try:
            while True:
                self._poked.clear()
                launched, waiting = self.plan_round()
                timeout: float | None = None
                # (held: the lease's renewal pokes; the gap bounds a missed one)
                held = waiting and self._held()
                if held:
                    timeout = MAX_ROUND_GAP_S
                elif waiting and self._reconciler.free_slots > 0:
                    # wait for the next whole token (or a poke: new work, a freed slot)
                    level = self._budget.level()
                    timeout = self._budget.wait_s(max(1.0, math.floor(level) + 1))
                    timeout = min(MAX_ROUND_GAP_S, max(MIN_ROUND_GAP_S, timeout))
                started = time.monotonic()
                if timeout is None:
                    await self._poked.wait()
                else:
                    try:
                        async with asyncio.timeout(timeout):
                            await self._poked.wait()
                    except TimeoutError:
                        pass
                if waiting and not launched and not held and self._on_wait is not None:
                    self._on_wait(time.monotonic() - started)
        finally:
            self._unsubscribe()
