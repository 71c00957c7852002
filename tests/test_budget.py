"""The API budget of one OAuth client share: pure arithmetic on an injected clock."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pipeline import Monotonic

from processor.budget import (
    BURST_RECOVERY_PERIOD_S,
    BURST_RECOVERY_S,
    MAX_PAUSE_S,
    MIN_BURST_S,
    MIN_CAPACITY,
    OVERHEAD_HALF_LIFE_S,
    OVERHEAD_MAX,
    OVERHEAD_PRIOR,
    START_LEVEL,
    WINDOW_S,
    ApiBudget,
    partition_share,
)


def test_starts_low_and_refills_at_its_rate_up_to_its_burst() -> None:
    clock = Monotonic()
    budget = ApiBudget(300, burst_s=2.0, monotonic=clock)  # 5/s, 10 at once
    # a replica that (re)starts cannot know what the client spent this minute
    assert budget.level() == pytest.approx(START_LEVEL)
    clock.now += 2.0
    assert budget.level() == pytest.approx(10)
    budget.spend(10)
    assert budget.level() == pytest.approx(0)
    assert budget.wait_s() == pytest.approx(0.2)
    clock.now += 0.2
    assert budget.level() == pytest.approx(1)
    clock.now += 100
    assert budget.level() == pytest.approx(10)  # never more than the burst


def test_spending_beyond_the_level_is_debt_that_delays_what_follows() -> None:
    clock = Monotonic()
    budget = ApiBudget(60, burst_s=1.0, monotonic=clock)  # 1/s, at least 2 held
    budget.spend(4)
    assert budget.level() == pytest.approx(-2)
    assert budget.wait_s() == pytest.approx(3.0)
    assert budget.spent == 4
    budget.refund(1)
    assert (budget.level(), budget.spent) == (pytest.approx(-1), 3)


def test_share_follows_the_partitions_owned() -> None:
    clock = Monotonic()
    budget = ApiBudget(600, burst_s=1.0, monotonic=clock)  # 10/s for the whole client
    budget.set_share(1, 4)
    assert budget.rate_per_s == pytest.approx(2.5)
    assert budget.level() <= 2.5  # the burst shrinks with the share
    budget.set_share(0, 4)
    assert budget.rate_per_s == 0
    assert budget.wait_s(budget.level() + 1) == math.inf
    with pytest.raises(ValueError, match="fraction"):
        budget.set_share(5, 4)


def test_partitions_the_metadata_does_not_name_count_as_configured_or_as_owned() -> None:
    """Known partitions decide the share; unknown ones are taken to be the most of the
    configured count, the highest owned + 1 and the number owned (never the whole rate)."""
    assert partition_share({0, 3}, {0, 1, 2, 3}, 6) == (2, 4)
    assert partition_share({0, 5}, {0, 1, 2, 3}, 6) == (1, 4)  # 5: not in the metadata
    assert partition_share({0, 3}, None, 6) == (2, 6)
    assert partition_share({0, 3}, set(), 2) == (2, 4)  # partition 3 exists
    assert partition_share({0, 1}, None, 1) == (2, 2)
    assert partition_share(set(), None, 6) == (0, 6)


def test_retry_after_pauses_and_restarts_from_empty() -> None:
    clock = Monotonic()
    budget = ApiBudget(600, monotonic=clock)
    budget.pause(3.0)
    assert budget.level() <= 0
    assert budget.paused_for() == pytest.approx(3.0)
    assert budget.wait_s() == pytest.approx(3.0 + 0.1)
    budget.pause(1.0)  # an earlier end never shortens a pause in force
    assert budget.paused_for() == pytest.approx(3.0)
    clock.now += 3.0
    assert budget.level() == pytest.approx(0)  # no burst built up during the pause
    clock.now += 0.1
    assert budget.level() == pytest.approx(1)


def test_refunds_during_a_pause_do_not_build_a_burst_for_its_end() -> None:
    clock = Monotonic()
    budget = ApiBudget(600, burst_s=1.0, monotonic=clock)  # 10/s, 10 at once
    clock.now += 1.0
    budget.spend(5)  # five calls taken; a 429 pauses them before they go out
    budget.pause(2.0)
    budget.refund(5)
    assert budget.spent == 0
    clock.now += 2.0
    assert budget.level() == pytest.approx(0)  # restarted from empty all the same
    budget.spend(1)
    budget.pause(1.0)
    budget.refund(3)  # a debt is paid back, but only up to empty
    assert budget.level() == pytest.approx(0)


def test_a_429_holds_half_of_what_the_service_took_back_to_back() -> None:
    clock = Monotonic()
    budget = ApiBudget(300, burst_s=3.0, monotonic=clock)  # 5/s, 15 at once
    clock.now += 10
    assert budget.level() == pytest.approx(15)
    budget.spend(8)  # at once: refused at the eighth, the service holds fewer than ours
    budget.throttled(1.0)
    assert budget.paused_for() == pytest.approx(1.0)
    assert budget.burst_s == pytest.approx(0.8)  # half of the 8 drawn, at 5/s
    budget.throttled(1.0)  # within the pause: an answer to a call sent with the first
    assert budget.burst_s == pytest.approx(0.8)
    clock.now += 10
    assert budget.level() == pytest.approx(4)  # a full bucket is half what it refused at
    assert budget.drawn_beyond_rate() == 0  # the eight left behind long ago


def test_429s_for_calls_sent_before_the_first_was_taken_in_halve_the_burst_once() -> None:
    """With `Retry-After: 0` (or shorter than the answers take) the pause is over before
    the 429s of the other calls in flight come: they answer the same burst."""
    clock = Monotonic()
    budget = ApiBudget(300, burst_s=3.0, monotonic=clock)  # 5/s, 15 at once
    clock.now += 10
    sent_at = clock.now
    budget.spend(10)  # at once, all refused
    clock.now += 0.2
    budget.throttled(0.0, sent_at=sent_at)
    learned = budget.burst_s
    assert learned == pytest.approx(0.9)  # half of the 9 drawn beyond the rate, at 5/s
    for _ in range(9):
        clock.now += 0.01
        budget.throttled(0.0, sent_at=sent_at)
    assert budget.burst_s == pytest.approx(learned)
    budget.spend(1)  # sent after the first 429 was taken in: its 429 may teach again
    sent_at = clock.now
    clock.now += 0.2
    budget.throttled(0.0, sent_at=sent_at)
    assert budget.burst_s < learned


def test_a_429_after_a_long_draw_still_at_least_halves_the_burst() -> None:
    clock = Monotonic()
    budget = ApiBudget(300, burst_s=3.0, monotonic=clock)
    clock.now += 10
    budget.spend(40)  # far into debt (re-reads and retries)
    budget.throttled(1.0)
    assert budget.burst_s == pytest.approx(1.5)


def test_a_429_with_nothing_drawn_shrinks_the_burst_to_its_least() -> None:
    """Other clients spent the shared budget: the service has no room for any burst."""
    clock = Monotonic()
    budget = ApiBudget(300, burst_s=3.0, monotonic=clock)
    clock.now += 10
    budget.throttled(1.0)
    assert budget.burst_s == pytest.approx(MIN_BURST_S)
    assert budget.capacity == pytest.approx(2)  # still the dearest call


def test_the_burst_grows_back_slowly_without_429s() -> None:
    clock = Monotonic()
    budget = ApiBudget(300, burst_s=3.0, monotonic=clock)
    clock.now += 10
    budget.throttled(1.0)
    clock.now += BURST_RECOVERY_PERIOD_S - 1
    assert budget.burst_s == pytest.approx(MIN_BURST_S)  # not a whole quiet period yet
    clock.now += 1
    assert budget.burst_s == pytest.approx(MIN_BURST_S + BURST_RECOVERY_S)
    clock.now += 10 * BURST_RECOVERY_PERIOD_S
    assert budget.burst_s == pytest.approx(3.0)  # never beyond the configured burst
    assert budget.level() == pytest.approx(15)


@settings(max_examples=60, deadline=None)
@given(
    service_burst=st.integers(5, 15),
    conflict_rate=st.floats(0.0, 0.05),
    seed=st.integers(0, 2**32 - 1),
)
def test_a_service_bucket_smaller_than_ours_costs_one_429_to_learn(
    service_burst: int, conflict_rate: float, seed: int
) -> None:
    """The service admits `service_burst` calls back to back at the same rate (ours holds
    15). Spending all the budget offers, in busy and quiet spells, with a 412's re-read
    and retry (two requests into debt) after some calls: one 429 teaches the budget
    what the service holds, and none follows before the burst starts to grow back."""
    rnd = random.Random(seed)
    clock = Monotonic()
    budget = ApiBudget(300, burst_s=3.0, monotonic=clock)
    service = float(service_burst)
    last = clock.now

    def admitted() -> bool:
        nonlocal service, last
        service = min(service_burst, service + (clock.now - last) * 5.0)
        last = clock.now
        if service < 1:
            return False
        service -= 1
        return True

    refusals = 0
    end = clock.now + BURST_RECOVERY_PERIOD_S - 1
    busy_until = clock.now
    while clock.now < end:
        if clock.now >= busy_until:
            if rnd.random() < 0.5:
                clock.now += rnd.uniform(1, 10)  # a quiet spell: the bucket fills
            busy_until = clock.now + rnd.uniform(2, 20)
        while budget.level() >= 1:
            budget.spend(1)
            requests = [True] + [False] * (2 if rnd.random() < conflict_rate else 0)
            for planned in requests:
                if not planned:
                    budget.spend(1, planned=False)
                if not admitted():
                    refusals += 1
                    budget.throttled(1.0)
                    break
            if budget.paused_for() > 0:
                break
        clock.now += rnd.uniform(0.005, 0.05)
    assert refusals <= 1


@pytest.mark.parametrize("seconds", [math.inf, 1e12, 3e9])
def test_a_pause_longer_than_the_window_holds_calls_for_one_window_only(seconds: float) -> None:
    """An absurd `Retry-After` (`inf`, an epoch time, a date decades ahead) must not stop
    every call, clears included, until a restart: after a minute, calls go again."""
    clock = Monotonic()
    budget = ApiBudget(300, monotonic=clock)
    budget.pause(seconds)
    assert budget.paused_for() == pytest.approx(MAX_PAUSE_S)
    clock.now += MAX_PAUSE_S + 1
    assert budget.paused_for() == 0
    assert budget.level() == pytest.approx(5)  # a second of the rate accrued since


def test_a_pause_of_no_number_pauses_nothing() -> None:
    budget = ApiBudget(300, monotonic=Monotonic())
    budget.pause(math.nan)
    assert budget.paused_for() == 0


@pytest.mark.parametrize("reset", ["1700000060", "inf", "nan", "1e12", "-5", "0"])
def test_window_headers_with_a_reset_beyond_a_window_are_not_followed(reset: str) -> None:
    """Genesys says seconds to the window's reset; anything beyond a minute (an epoch time,
    `inf`) would cap the rate near zero or pause every call for that long."""
    clock = Monotonic()
    budget = ApiBudget(300, monotonic=clock)
    for count in ("280", "300"):  # part of the window left, and none
        budget.observe(
            {
                "inin-ratelimit-count": count,
                "inin-ratelimit-allowed": "300",
                "inin-ratelimit-reset": reset,
            }
        )
    assert budget.paused_for() == 0
    assert budget.rate_per_s == pytest.approx(5.0)


@pytest.mark.parametrize(("count", "allowed"), [("0", "1" + "0" * 400), ("-" + "9" * 400, "300")])
def test_window_headers_with_numbers_no_float_holds_are_ignored(count: str, allowed: str) -> None:
    """More left in the window than a float holds caps nothing; raising, it crashed the
    call whose answer carried it (a 200 reported as a call of unknown outcome)."""
    clock = Monotonic()
    budget = ApiBudget(300, monotonic=clock)
    budget.observe(
        {
            "inin-ratelimit-count": count,
            "inin-ratelimit-allowed": allowed,
            "inin-ratelimit-reset": "10",
        }
    )
    assert budget.paused_for() == 0
    assert budget.rate_per_s == pytest.approx(5.0)


def test_a_metrics_read_changes_nothing_and_agrees_with_the_level() -> None:
    """The token gauge is read on the metrics exporter's thread: `peek` must not bring the
    bucket or the window up to date (only the event loop may), and reads what `level` says."""
    clock = Monotonic()
    budget = ApiBudget(300, monotonic=clock)
    budget.spend(2)
    clock.now += 0.5
    before = (budget._level, budget._since, list(budget._slots), budget._in_window)
    peeked = budget.peek()
    assert (budget._level, budget._since, list(budget._slots), budget._in_window) == before
    assert peeked == pytest.approx(budget.level())
    budget.pause(2.0)
    assert budget.peek() <= 0
    clock.now += WINDOW_S + 5  # what went out left the window: the loop has not looked
    assert budget.peek() == pytest.approx(budget.level())


def test_window_headers_cap_spending_to_this_replicas_part_of_what_is_left() -> None:
    clock = Monotonic()
    budget = ApiBudget(300, burst_s=2.0, monotonic=clock)
    budget.set_share(1, 2)
    budget.observe(
        {
            "inin-ratelimit-count": "280",
            "inin-ratelimit-allowed": "300",
            "inin-ratelimit-reset": "10",
        }
    )
    assert budget.level() <= 10  # half of the 20 left
    assert budget.rate_per_s == pytest.approx(1.0)  # 10 over the 10 s left
    budget.observe(
        {
            "inin-ratelimit-count": "300",
            "inin-ratelimit-allowed": "300",
            "inin-ratelimit-reset": "4",
        }
    )
    assert budget.paused_for() == pytest.approx(4.0)
    clock.now += 11
    assert budget.rate_per_s == pytest.approx(2.5)  # the window reset: the share again
    budget.observe({"inin-ratelimit-count": "x"})  # unusable headers are ignored
    assert budget.rate_per_s == pytest.approx(2.5)


def test_a_rebalance_within_the_services_window_moves_this_replicas_part_of_its_cap() -> None:
    """The `inin-ratelimit-*` headers count the whole OAuth client: after a rebalance this
    replica spends its new share of what the window leaves, not its old share's part."""
    clock = Monotonic()
    budget = ApiBudget(6000, burst_s=2.0, monotonic=clock)  # 100/s for the whole client
    budget.set_share(1, 4)
    budget.observe(
        {
            "inin-ratelimit-count": "5800",
            "inin-ratelimit-allowed": "6000",
            "inin-ratelimit-reset": "20",
        }
    )
    assert budget.rate_per_s == pytest.approx(2.5)  # a quarter of the 200 over 20 s
    clock.now += 4.0  # the client spent at its capped rate: 160 left, over 16 s
    budget.set_share(1, 1)  # a scale-in: all partitions are this replica's now
    assert budget.rate_per_s == pytest.approx(10.0)  # the whole client's 200 over 20 s
    assert budget.level() == pytest.approx(START_LEVEL + 4 * 2.5)  # what it had accrued
    clock.now += 2.0
    assert budget.level() == pytest.approx(START_LEVEL + 4 * 2.5 + 2 * 10)
    budget.set_share(1, 8)  # a scale-out: an eighth of what is left (140 over 14 s)
    assert budget.rate_per_s == pytest.approx(1.25)
    assert budget.level() == pytest.approx(140 / 8)  # no more in hand than its part
    clock.now += 14.0  # the window reset: the share's rate again
    assert budget.rate_per_s == pytest.approx(12.5)


@settings(max_examples=200)
@given(
    rate=st.integers(1, 6000),
    steps=st.lists(st.tuples(st.floats(0, 5), st.integers(0, 3)), max_size=60),
)
def test_spending_only_what_is_there_never_exceeds_burst_plus_rate(
    rate: int, steps: list[tuple[float, int]]
) -> None:
    """A scheduler that spends only whole tokens it has stays within burst + rate x time."""
    clock = Monotonic()
    budget = ApiBudget(rate, monotonic=clock)
    start = clock.now
    burst = budget.capacity
    for gap, wanted in steps:
        clock.now += gap
        for _ in range(wanted):
            if budget.level() >= 1:
                budget.spend()
        elapsed = clock.now - start
        assert budget.spent <= burst + rate / 60 * elapsed + 1e-6


def _most_in_any_window(times: list[float], window_s: float) -> int:
    """Most of `times` (sorted) within any half-open span of `window_s`."""
    most = start = 0
    for end, at in enumerate(times):
        while times[start] <= at - window_s:
            start += 1
        most = max(most, end - start + 1)
    return most


def test_the_burst_never_adds_to_a_minutes_allowance() -> None:
    """Spending greedily from a full bucket: the burst goes at once, and the minute that
    contains it gets no more than its allowance; the rate is kept over time."""
    clock = Monotonic()
    budget = ApiBudget(300, burst_s=3.0, monotonic=clock)  # 5/s, 15 at once
    clock.now += 3.0  # full
    times: list[float] = []
    for _ in range(2400):  # two minutes in 50 ms steps
        while budget.level() >= 1:
            budget.spend()
            times.append(clock.now)
        clock.now += 0.05
    assert _most_in_any_window(times, WINDOW_S) == 300
    assert len(times) >= 595  # the cap costs the burst, not the rate
    # the window, not the bucket, says when to go on: the burst's slot must leave it
    budget = ApiBudget(300, burst_s=3.0, monotonic=clock)
    clock.now = 1000.0  # full
    assert budget.level() == pytest.approx(15)
    budget.spend(15)
    for _ in range(57 * 5):
        clock.now += 0.2
        budget.spend()
    assert budget.level() <= 0 < budget.wait_s()
    assert clock.now + budget.wait_s() == pytest.approx(1000.0 + WINDOW_S + 0.1)


@settings(max_examples=200)
@given(
    rate=st.integers(1, 1200),
    share=st.tuples(st.integers(1, 256), st.integers(1, 256)).map(sorted),
    warm_s=st.sampled_from([0.0, 30.0, 600.0]),
    steps=st.lists(
        st.tuples(st.floats(0, 20), st.integers(0, 4), st.sampled_from([1, 2])), max_size=80
    ),
)
def test_spending_only_what_is_there_never_exceeds_the_allowance_in_any_minute(
    rate: int, share: list[int], warm_s: float, steps: list[tuple[float, int, int]]
) -> None:
    """Cold (its start level) or after a quiet spell, calls of one or two requests: any
    minute gets at most the share's calls, or the dearest call when the share is less."""
    clock = Monotonic()
    budget = ApiBudget(rate, monotonic=clock)
    budget.set_share(*share)
    clock.now += warm_s
    times: list[float] = []
    for gap, wanted, cost in steps:
        clock.now += gap
        for _ in range(wanted):
            if budget.level() >= cost:
                budget.spend(cost)
                times += [clock.now] * cost
    share_calls = rate * share[0] / share[1]
    assert _most_in_any_window(times, WINDOW_S) <= max(share_calls, MIN_CAPACITY) + 1e-9


def test_the_window_says_what_it_lets_out_now_and_when_the_rest_follows() -> None:
    clock = Monotonic()
    budget = ApiBudget(6, monotonic=clock)  # 6 a minute, 2 at once
    budget.spend(2)
    clock.now += 10.0
    budget.spend(3)  # into the bucket's debt
    assert budget.window_room() == pytest.approx(1)
    assert [(round(after, 3), n) for after, n in budget.window_releases()] == [
        (50.1, 2),
        (60.1, 3),
    ]
    budget.refund(1)  # one did not go out after all
    assert budget.window_releases()[-1][1] == 2
    clock.now += 50.1
    assert budget.window_room() == pytest.approx(4)
    assert len(budget.window_releases()) == 1


def test_a_new_share_starts_the_rolling_count_afresh() -> None:
    """After a scale-out, a replica that spent its whole minute goes on at its new share's
    rate instead of stopping (clears included) until that minute has passed."""
    clock = Monotonic()
    budget = ApiBudget(300, monotonic=clock)
    for _ in range(300):
        clock.now += 0.2
        if budget.level() >= 1:
            budget.spend()
    assert budget.window_room() < 5
    budget.set_share(1, 2)
    clock.now += 0.4
    assert budget.level() >= 1
    assert budget.window_room() == pytest.approx(budget.allowance)
    budget.set_share(1, 2)  # the same share again: the count is kept
    budget.spend()
    budget.set_share(1, 2)
    assert budget.window_room() == pytest.approx(budget.allowance - 1)


def test_overhead_counts_unplanned_requests_per_planned_one_and_forgets_them() -> None:
    """A 412's re-read and retry, spent by the sink, are what the planner did not plan:
    `overhead` says how many come per planned call, recently, so that sets leave room."""
    clock = Monotonic()
    budget = ApiBudget(6000, monotonic=clock)
    assert budget.overhead == 0.0
    budget.spend(1, planned=False)
    # one early 412 is not taken for 100%: ten planned calls are assumed before any
    assert budget.overhead == pytest.approx(1 / OVERHEAD_PRIOR)
    for _ in range(90):
        budget.spend()
    for _ in range(19):
        budget.spend(planned=False)
    assert budget.overhead == pytest.approx(20 / (90 + OVERHEAD_PRIOR))
    budget.refund(40)  # prepaid tokens that did not go out were planned
    assert budget.overhead == pytest.approx(20 / (50 + OVERHEAD_PRIOR))
    clock.now += OVERHEAD_HALF_LIFE_S
    assert budget.overhead == pytest.approx(10 / (25 + OVERHEAD_PRIOR))
    for _ in range(1000):
        budget.spend(planned=False)
    assert budget.overhead == OVERHEAD_MAX
    clock.now += 20 * OVERHEAD_HALF_LIFE_S
    assert budget.overhead < 0.001


def test_a_refund_of_unplanned_tokens_takes_them_off_the_overhead() -> None:
    """The sink's own requests that did not go out (a connection never made) are given
    back as unplanned: `overhead` must not count them, nor charge them to planned ones."""
    clock = Monotonic()
    budget = ApiBudget(6000, monotonic=clock)
    for _ in range(10):
        budget.spend()
    budget.spend(3, planned=False)
    assert budget.overhead == pytest.approx(3 / (10 + OVERHEAD_PRIOR))
    budget.refund(2, planned=False)
    assert budget.overhead == pytest.approx(1 / (10 + OVERHEAD_PRIOR))
    assert budget.spent == 11
