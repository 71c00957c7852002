"""`StallGuard`: a stall long enough to cost the group membership holds calls; pure, on an
injected monotonic clock."""

from __future__ import annotations

import pytest

from processor.runtime.stall import TICK_S, StallGuard


class Monotonic:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def test_a_loop_that_keeps_running_never_holds_calls() -> None:
    clock = Monotonic()
    guard = StallGuard(5.0, 2.0, clock)
    for _ in range(100):
        clock.now += TICK_S * 3  # late ticks, but far from a stall
        guard.tick()
        assert not guard.holding()
    assert guard.stalls == 0


def test_a_stall_holds_calls_for_the_hold_then_lets_them_go() -> None:
    clock = Monotonic()
    guard = StallGuard(5.0, 2.0, clock)
    clock.now += 5.5  # nothing ran: the last heartbeat may have been 6 s ago
    guard.tick()
    assert guard.holding()
    assert guard.stalls == 1
    clock.now += 1.9
    guard.tick()
    assert guard.holding()
    clock.now += 0.1
    assert not guard.holding()
    assert guard.stalls == 1


def test_the_scheduler_sees_a_stall_before_any_tick_after_it() -> None:
    """Woken, the scheduler may run before the watch does: it must hold all the same."""
    clock = Monotonic()
    guard = StallGuard(5.0, 2.0, clock)
    clock.now += 30
    assert guard.holding()
    guard.tick()  # the watch, late: the same stall, not a second one
    assert guard.stalls == 1


def test_a_stall_threshold_below_the_watch_period_is_refused() -> None:
    with pytest.raises(ValueError, match="stall_s"):
        StallGuard(TICK_S / 2, 1.0)
