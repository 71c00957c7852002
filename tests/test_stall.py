"""`StallGuard`: a stall long enough to cost the group membership holds calls; pure, on an
injected monotonic clock."""

from __future__ import annotations

import asyncio

import pytest
from pipeline import Monotonic, eventually

from processor.budget import ApiBudget
from processor.clock import ManualClock
from processor.domain import Status
from processor.models import TypingEvent
from processor.runtime.scheduler import Scheduler
from processor.runtime.stall import TICK_S, StallGuard
from processor.state import EngineConfig, PartitionStore, Work


def test_a_loop_that_keeps_running_never_holds_calls() -> None:
    clock = Monotonic()
    guard = StallGuard(5.0, 2.0, clock)
    for _ in range(100):
        clock.now += TICK_S * 3  # late ticks, but far from a stall
        guard.tick()
        assert guard.hold_left() == 0
    assert guard.stalls == 0


def test_a_stall_holds_calls_for_the_hold_then_lets_them_go() -> None:
    clock = Monotonic()
    guard = StallGuard(5.0, 2.0, clock)
    clock.now += 5.5  # nothing ran: the last heartbeat may have been 6 s ago
    guard.tick()
    assert guard.hold_left() == pytest.approx(2.0)
    assert guard.stalls == 1
    clock.now += 1.5
    guard.tick()
    assert guard.hold_left() == pytest.approx(0.5)
    clock.now += 0.5
    assert guard.hold_left() == 0
    assert guard.stalls == 1


def test_the_scheduler_sees_a_stall_before_any_tick_after_it() -> None:
    """Woken, the scheduler may run before the watch does: it must hold all the same."""
    clock = Monotonic()
    guard = StallGuard(5.0, 2.0, clock)
    clock.now += 30
    assert guard.hold_left() == pytest.approx(2.0)
    guard.tick()  # the watch, late: the same stall, not a second one
    assert guard.stalls == 1


def test_a_stall_threshold_below_the_watch_period_is_refused() -> None:
    with pytest.raises(ValueError, match="stall_s"):
        StallGuard(TICK_S / 2, 1.0)


class _Sink:
    def __init__(self, budget: ApiBudget) -> None:
        self.budget = budget

    def cached_etag(self, session_id: str) -> str:
        return "etag"  # every session read already: a set costs one call


class _Reconciler:
    free_slots = 8
    free_set_slots = 8

    def __init__(self, budget: ApiBudget) -> None:
        self.sink = _Sink(budget)

    def on_capacity(self, callback: object) -> object:
        return lambda: None


class _Worker:
    accepting = True

    def __init__(self, store: PartitionStore) -> None:
        self.store = store
        self.launched: list[Work] = []

    def launch(self, work: Work, prepaid: int) -> None:
        self.launched.append(work)


async def test_the_scheduler_holds_calls_after_a_stall_and_sends_them_when_it_ends() -> None:
    monotonic = Monotonic()
    guard = StallGuard(5.0, 0.2, monotonic)
    clock = ManualClock()
    store = PartitionStore(0, EngineConfig(), clock)
    worker = _Worker(store)
    budget = ApiBudget(6000, monotonic=Monotonic())
    scheduler = Scheduler(_Reconciler(budget), clock, stall_guard=guard)  # type: ignore[arg-type]
    scheduler.attach(0, worker)
    running = asyncio.create_task(scheduler.run())
    try:
        await eventually(lambda: scheduler.rounds >= 1, 5, "the scheduler idle, waiting")
        monotonic.now += 10  # the process stood still
        event = TypingEvent.model_construct(
            event_id="e1",
            session_id="s1",
            status=Status.TYPING,
            occurred_at=clock.now_ms(),
            timeout_ms=None,
            participant=None,
            channel=None,
            target=None,
        )
        store.on_event(event, 0)
        scheduler.plan_now()  # as a worker does once its turn queued work
        assert worker.launched == []
        assert store.is_queued("s1")
        monotonic.now += 0.2  # the hold is over: the scheduler, waiting for it, sends
        await eventually(lambda: len(worker.launched) == 1, 5, "the held set sent")
        assert guard.stalls == 1
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
