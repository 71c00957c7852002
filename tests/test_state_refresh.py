"""Refresh timing under continuous typing (I2 and its cost), over random event gaps.

One session types: live events (`occurred_at` = now) with gaps shorter than the timeout.
A simulated sink applies each call after a fixed latency (half the lead at most). The
properties:
- I2: Genesys' `expiresAt` never lapses while the participant types, and ends at the last
  deadline;
- economy: refreshes come from events only; any two refreshes after a given one are at
  least `timeout - lead` later, and while events come at least every quarter timeout,
  consecutive calls are at least half a timeout apart.
No rule with a positive lead can promise more for arbitrary gaps: an event just after a
refresh, and the next one `timeout - lead` later, force two calls per `timeout - lead`.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from processor.clock import ManualClock
from processor.domain import Outcome, SinkResult, Status
from processor.models import TypingEvent
from processor.state import EngineConfig, PartitionStore, Work, WorkKind

T0 = 1_700_000_000_000
TIMEOUT = 4000
CONFIG = EngineConfig()
LEAD = int(TIMEOUT * CONFIG.refresh_fraction)
APPLIED = SinkResult(Outcome.APPLIED, http_status=200, attempts=1)


@dataclass
class Timeline:
    """What the simulated Genesys showed, and when each call was sent."""

    sent: list[tuple[int, Work]] = field(default_factory=list)
    shown_until: int = 0  # remote expiresAt (0 = nothing shown)
    lapses: list[tuple[int, int]] = field(default_factory=list)  # (landed at, expired at)


def simulate(gaps: list[int], latency: int) -> tuple[Timeline, list[int]]:
    """Drive a store through live events `gaps` apart; returns the timeline and deadlines."""
    clock = ManualClock(T0)
    store = PartitionStore(0, CONFIG, clock)
    timeline = Timeline()
    deadlines: list[int] = []
    event_times = list(itertools.accumulate(gaps, initial=T0))
    landing: tuple[int, Work] | None = None
    end = event_times[-1] + TIMEOUT + 2 * CONFIG.clear_slack_ms
    pending = iter(enumerate(event_times))
    upcoming = next(pending, None)
    while True:
        wake = store.next_wakeup_ms()
        points = [end] if wake is None else [wake]
        if landing is not None:
            points.append(landing[0])
        if upcoming is not None:
            points.append(upcoming[1])
        now = min(points)
        if now >= end:
            break
        clock.set(max(now, clock.now_ms()))
        now = clock.now_ms()
        if landing is not None and landing[0] <= now:
            work = landing[1]
            landing = None
            if work.desired is not None:
                if timeline.shown_until and now >= timeline.shown_until:
                    timeline.lapses.append((now, timeline.shown_until))
                timeline.shown_until = work.desired.expires_at
            else:
                timeline.shown_until = 0
            store.on_result(work, APPLIED)
        if upcoming is not None and upcoming[1] <= now:
            index, at = upcoming
            store.on_event(
                TypingEvent.model_construct(
                    event_id=f"e{index}",
                    session_id="s1",
                    status=Status.TYPING,
                    occurred_at=at,
                    timeout_ms=TIMEOUT,
                    participant=None,
                    channel=None,
                ),
                index,
            )
            session = store.session("s1")
            assert session is not None
            deadlines.append(session.deadline)
            upcoming = next(pending, None)
        if wake is not None and wake <= now:
            store.on_tick()
        if landing is None:
            for work in store.take_work(1):
                timeline.sent.append((now, work))
                landing = (now + latency, work)
        store.drain()
    return timeline, deadlines


def typing_run(gaps: list[int], latency: int) -> list[int]:
    """Simulate, check I2, and return when each set or refresh was sent."""
    timeline, deadlines = simulate(gaps, latency)
    assert timeline.lapses == [], "expiresAt lapsed while the participant kept typing"
    sets = [(at, w.desired) for at, w in timeline.sent if w.desired is not None]
    assert sets[-1][1].expires_at == deadlines[-1], "the last deadline never reached Genesys"
    assert timeline.sent[-1][1].kind is WorkKind.CLEAR  # and it is cleared after it
    return [at for at, _ in sets]


@settings(max_examples=150, deadline=None)
@given(
    # gap + latency below the timeout: an event later than that leaves no call time to
    # carry its deadline before the previous `expiresAt`, whatever the rule
    gaps=st.lists(st.integers(1, TIMEOUT - LEAD // 2 - 1), min_size=1, max_size=40),
    latency=st.integers(0, LEAD // 2),
)
def test_any_gaps_shorter_than_the_timeout_never_lapse_and_refresh_at_most_twice_per_window(
    gaps: list[int], latency: int
) -> None:
    sets = typing_run(gaps, latency)
    assert len(sets) <= len(gaps) + 1, "a refresh without a new event"
    for first, third in zip(sets, sets[2:], strict=False):
        assert third - first >= TIMEOUT - LEAD, f"three calls within {third - first} ms"


@settings(max_examples=150, deadline=None)
@given(
    gaps=st.lists(st.integers(1, TIMEOUT // 4), min_size=1, max_size=120),
    latency=st.integers(0, LEAD // 2),
)
def test_events_every_quarter_timeout_cost_at_most_one_refresh_per_half_timeout(
    gaps: list[int], latency: int
) -> None:
    sets = typing_run(gaps, latency)
    for earlier, later in itertools.pairwise(sets):
        assert later - earlier >= TIMEOUT // 2, f"calls {later - earlier} ms apart"
