"""The state engine with messaging targets (DESIGN §2b): durations, refreshes without a gap,
no call for `stopped`, lapses recorded, target moves, and intents across a crash."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processor.clock import ManualClock
from processor.domain import (
    AgentTypingTarget,
    ChangeReason,
    Decision,
    OpenMessagingTarget,
    Outcome,
    SinkResult,
    Status,
)
from processor.models import CrmStatus, TypingEvent
from processor.state import EngineConfig, PartitionStore, Work, WorkKind
from processor.state.store import messaging_target

T0 = 1_700_000_000_000
CONV = "c0b5a0d4-5a3f-4a1e-8d6b-6b7a1c2d3e4f"
COMM = "0e9a2b1c-3d4e-4f50-8a6b-7c8d9e0f1a2b"
INTEGRATION = "2f0c6a4e-8d8b-4c8e-9a55-0d4c5b7a1e21"
AGENT = {"kind": "agent_typing", "conversation_id": CONV, "communication_id": COMM}
OPEN = {"kind": "open_messaging", "integration_id": INTEGRATION, "from_id": "cust-1"}
APPLIED = SinkResult(Outcome.APPLIED, http_status=202, attempts=1)
_ids = itertools.count()


def ev(
    sid: str,
    status: Status,
    at: int,
    target: dict[str, Any] | None = AGENT,
    timeout: int | None = None,
    eid: str | None = None,
) -> TypingEvent:
    return TypingEvent.model_validate(
        {
            "event_id": eid or f"e{next(_ids)}",
            "session_id": sid,
            "status": status.value,
            "occurred_at": at,
            "timeout_ms": timeout,
            "target": target,
        }
    )


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
def store(clock: ManualClock) -> PartitionStore:
    return PartitionStore(0, EngineConfig(messaging_max_duration_ms=5000), clock)


def test_a_set_sends_the_time_to_the_deadline_clamped(
    store: PartitionStore, clock: ManualClock
) -> None:
    store.on_event(ev("s1", Status.TYPING, T0, timeout=20_000), 1)
    [work] = store.take_work(5)
    assert work.target == AgentTypingTarget(CONV, COMM)
    assert work.duration_ms == 5000  # at most the configured maximum
    assert work.desired is not None
    assert work.desired.expires_at == T0 + 5000
    store.on_result(work, APPLIED)
    clock.advance(1000)
    store.on_event(ev("s2", Status.TYPING, clock.now_ms() - 2500, timeout=3000), 2)
    [short] = store.take_work(5)
    assert short.duration_ms == 1000  # 500 ms left, but never less than a second


def test_refreshes_keep_it_shown_while_typing_goes_on_then_it_lapses(
    store: PartitionStore, clock: ManualClock
) -> None:
    store.on_event(ev("s1", Status.TYPING, T0, timeout=5000), 1)
    [first] = store.take_work(5)
    store.on_result(first, APPLIED)
    shown_until = T0 + 5000
    calls = [first]
    offset = 2
    # keystrokes every 700 ms for 12 s: the indicator must never lapse meanwhile
    while clock.now_ms() < T0 + 12_000:
        clock.advance(100)
        if (clock.now_ms() - T0) % 700 == 0:
            store.on_event(ev("s1", Status.TYPING, clock.now_ms(), timeout=5000), offset)
            offset += 1
        store.on_tick()
        for work in store.take_work(5):
            assert work.kind is WorkKind.REFRESH
            assert clock.now_ms() < shown_until, "a refresh came after the indicator lapsed"
            store.on_result(work, APPLIED)
            assert work.desired is not None
            shown_until = work.desired.expires_at
            calls.append(work)
    out = store.drain()
    assert [c.version for c in out.changes] == list(range(1, len(calls) + 1))
    assert all(c.status is CrmStatus.TYPING for c in out.changes)  # one record per call
    # typing stops: no call, and the indicator lapses at "shown until"
    deadline = store.session("s1").deadline  # type: ignore[union-attr]
    clock.set(deadline + 1)
    store.on_tick()
    assert store.take_work(5) == []
    clock.set(max(shown_until, deadline) + 10)
    store.on_tick()
    out = store.drain()
    assert [(c.status, c.reason, c.version) for c in out.changes] == [
        (CrmStatus.CLEARED, ChangeReason.EXPIRED, len(calls) + 1)
    ]
    assert [a.result for a in out.audits] == [Decision.LAPSED]
    assert shown_until <= deadline + 1000  # shown until at most a second past the deadline


def test_stopped_costs_no_call_and_is_decided_when_the_indicator_lapses(
    store: PartitionStore, clock: ManualClock
) -> None:
    store.on_event(ev("s1", Status.TYPING, T0, target=OPEN), 1)
    [work] = store.take_work(5)
    store.on_result(work, APPLIED)
    store.drain()
    clock.advance(500)
    store.on_event(ev("s1", Status.STOPPED, clock.now_ms(), target=OPEN, eid="stop"), 2)
    assert store.take_work(5) == []
    assert store.drain().audits == []  # the stop waits for the lapse
    assert work.desired is not None
    clock.set(work.desired.expires_at)
    store.on_tick()
    out = store.drain()
    assert [(c.status, c.reason) for c in out.changes] == [
        (CrmStatus.CLEARED, ChangeReason.STOPPED)
    ]
    assert [(a.event_id, a.result) for a in out.audits] == [("stop", Decision.LAPSED)]
    assert store.take_work(5) == []


def test_the_lapse_is_recorded_when_the_request_that_landed_stops_showing_it(
    store: PartitionStore, clock: ManualClock
) -> None:
    """The call's request that landed went out late (a retry) and, sending at least a
    second, shows typing past what the work asked for: the store records what the sink
    says it shows, and the CRM hears `cleared` when that lapses, not while still shown."""
    store.on_event(ev("s1", Status.TYPING, T0, timeout=1500), 1)
    [work] = store.take_work(5)
    assert work.desired is not None
    asked_until = work.desired.expires_at
    assert asked_until == T0 + 1500
    clock.advance(800)
    shown_until = clock.now_ms() + 1000  # the retry's second, from when it went out
    store.on_result(work, SinkResult(Outcome.APPLIED, 202, 2, shown_until_ms=shown_until))
    [typing] = store.drain().changes
    assert (typing.status, typing.expires_at) == (CrmStatus.TYPING, shown_until)
    clock.set(asked_until + 10)
    store.on_tick()
    assert store.drain().changes == []  # still shown
    clock.set(shown_until)
    store.on_tick()
    out = store.drain()
    assert [(c.status, c.reason, c.applied_at) for c in out.changes] == [
        (CrmStatus.CLEARED, ChangeReason.EXPIRED, shown_until)
    ]
    assert [a.result for a in out.audits] == [Decision.LAPSED]


def test_not_found_forgets_the_session(store: PartitionStore) -> None:
    store.on_event(ev("s1", Status.TYPING, T0), 1)
    [work] = store.take_work(5)
    store.on_result(work, SinkResult(Outcome.SESSION_NOT_FOUND, http_status=404))
    assert [a.result for a in store.drain().audits] == [Decision.SESSION_NOT_FOUND]
    assert store.session("s1") is None


def test_moving_a_shown_webchat_indicator_clears_it_first(
    store: PartitionStore, clock: ManualClock
) -> None:
    store.on_event(ev("s1", Status.TYPING, T0, target=None), 1)
    [webchat] = store.take_work(5)
    assert webchat.target is None
    store.on_result(webchat, APPLIED)
    clock.advance(300)
    store.on_event(ev("s1", Status.TYPING, clock.now_ms(), target=AGENT), 2)
    [clear] = store.take_work(5)
    assert (clear.kind, clear.target, clear.desired) == (WorkKind.CLEAR, None, None)
    store.on_result(clear, APPLIED)
    [moved] = store.take_work(5)
    assert (moved.kind, moved.target) == (WorkKind.SET, AgentTypingTarget(CONV, COMM))
    store.on_result(moved, APPLIED)
    statuses = [(c.status, c.version) for c in store.drain().changes]
    assert statuses == [(CrmStatus.TYPING, 1), (CrmStatus.CLEARED, 2), (CrmStatus.TYPING, 3)]


def test_a_stale_event_that_names_another_target_moves_what_is_wanted_there_at_once(
    store: PartitionStore, clock: ManualClock
) -> None:
    """An event already expired when processed sets nothing (I5), but it is the latest
    word on where the session's indicator goes: the typing still wanted (from an earlier
    event) moves there at once, as with a live event. It used to move the target and queue
    nothing, so the indicator stayed missing on the new target (and a shown webchat one
    uncleared) until the old deadline."""
    store.on_event(ev("s1", Status.TYPING, T0, target=None, timeout=20_000), 1)
    store.on_result(store.take_work(5)[0], APPLIED)  # shown on the webchat session
    clock.advance(1000)
    store.on_event(ev("s1", Status.TYPING, T0, target=AGENT, timeout=500), 2)  # stale
    assert [a.result for a in store.drain().audits][-1] is Decision.STALE
    assert store.desired("s1") is Status.TYPING  # the first event's typing goes on
    [clear] = store.take_work(5)  # the webchat indicator first
    assert (clear.kind, clear.target, clear.desired) == (WorkKind.CLEAR, None, None)
    store.on_result(clear, APPLIED)
    [moved] = store.take_work(5)
    assert (moved.kind, moved.target) == (WorkKind.SET, AgentTypingTarget(CONV, COMM))
    store.on_result(moved, APPLIED)
    clock.advance(1000)
    store.on_event(ev("s1", Status.TYPING, T0, target=OPEN, timeout=500), 3)  # stale again
    [again] = store.take_work(5)  # a messaging indicator cannot be taken down: it lapses
    assert (again.kind, again.target) == (
        WorkKind.SET,
        messaging_target(ev("x", Status.TYPING, T0, OPEN)),
    )


def test_moving_away_from_a_messaging_target_records_its_lapse(
    store: PartitionStore, clock: ManualClock
) -> None:
    store.on_event(ev("s1", Status.TYPING, T0, target=AGENT), 1)
    store.on_result(store.take_work(5)[0], APPLIED)
    clock.advance(300)
    store.on_event(ev("s1", Status.TYPING, clock.now_ms(), target=OPEN), 2)
    [moved] = store.take_work(5)
    assert moved.target is not None
    assert moved.kind is WorkKind.SET
    changes = [(c.status, c.reason) for c in store.drain().changes]
    assert changes == [
        (CrmStatus.TYPING, ChangeReason.EVENT),
        (CrmStatus.CLEARED, ChangeReason.EVENT),
    ]


def test_a_restored_messaging_intent_counts_as_landed(clock: ManualClock) -> None:
    config = EngineConfig()
    store = PartitionStore(0, config, clock)
    store.on_event(ev("s1", Status.TYPING, T0, eid="cause"), 7)
    [work] = store.take_work(5)
    log = store.drain().changelog  # the intent is on the changelog before the call
    restored = PartitionStore.restore(0, config, clock, log)
    out = restored.drain()
    assert [(c.status, c.version) for c in out.changes] == [(CrmStatus.TYPING, 1)]
    assert [(a.event_id, a.result) for a in out.audits] == [("cause", Decision.APPLIED)]
    session = restored.session("s1")
    assert session is not None
    assert session.intent is None
    assert session.remote_expires == work.issued_at + work.duration_ms
    restored.on_event(ev("s1", Status.TYPING, T0 + 10, timeout=60_000), 8)
    clock.advance(4500)  # within the lead of "shown until"
    restored.on_tick()
    [refresh] = restored.take_work(5)
    assert refresh.version == 2  # versions never repeat


def test_a_messaging_intent_restored_after_the_session_idled_out_is_recorded_then_forgotten(
    clock: ManualClock,
) -> None:
    """The owner died with the call out and the partition came back more than the idle
    eviction later: the restore records the call as landed, and its first tick the lapse
    (after any replay), then forgets the session (the restore used to fail, changing the
    sessions it was iterating)."""
    config = EngineConfig()
    store = PartitionStore(0, config, clock)
    store.on_event(ev("s1", Status.TYPING, T0, eid="cause"), 7)
    store.on_event(ev("s2", Status.TYPING, T0, eid="other"), 8)
    store.take_work(5)
    log = store.drain().changelog
    clock.advance(config.idle_evict_ms + 10_000)
    restored = PartitionStore.restore(0, config, clock, log)
    wake = restored.next_wakeup_ms()
    assert wake is not None
    clock.set(wake)
    restored.on_tick()
    out = restored.drain()
    assert sorted((c.session_id, c.version, c.status) for c in out.changes) == [
        ("s1", 1, CrmStatus.TYPING),
        ("s1", 2, CrmStatus.CLEARED),
        ("s2", 1, CrmStatus.TYPING),
        ("s2", 2, CrmStatus.CLEARED),
    ]
    assert restored.tracked_sessions == 0
    assert (restored.version_floor("s1"), restored.version_floor("s2")) == (2, 2)


@settings(max_examples=150, deadline=None)
@given(
    gaps=st.lists(st.integers(100, 1400), min_size=1, max_size=40),
    latency=st.integers(0, 400),
    maximum=st.integers(1000, 8000),
)
def test_shown_until_never_lapses_while_typing_and_ends_within_a_second_of_the_deadline(
    gaps: list[int], latency: int, maximum: int
) -> None:
    clock = ManualClock(T0)
    store = PartitionStore(0, EngineConfig(messaging_max_duration_ms=maximum), clock)
    timeout = 1500
    events = [T0]
    for gap in gaps:
        events.append(events[-1] + gap)
    pending: list[tuple[int, Work]] = []
    shown: list[tuple[int, int]] = []  # (sent at, shown until)
    offset = 0
    end = events[-1] + timeout + 2000
    while clock.now_ms() <= end:
        now = clock.now_ms()
        while events and events[0] <= now:
            offset += 1
            store.on_event(ev("s1", Status.TYPING, events.pop(0), timeout=timeout), offset)
        store.on_tick()
        for at, work in [p for p in pending if p[0] <= now]:
            pending.remove((at, work))
            store.on_result(work, APPLIED)
        for work in store.take_work(5):
            shown.append((now + latency, now + latency + work.duration_ms))
            pending.append((now + latency, work))
        clock.advance(10)
    # every keystroke's deadline is covered from the first call on, without a gap
    last_deadline = T0 + sum(gaps) + timeout
    covered_until = shown[0][1]
    for sent, until in shown[1:]:
        assert sent <= covered_until, f"gap from {covered_until} to {sent}"
        covered_until = max(covered_until, until)
    assert covered_until >= last_deadline - 10 - latency  # typing was shown to its end
    assert covered_until <= last_deadline + 1000 + latency  # and lapsed within the bound


@pytest.mark.parametrize(
    "failure",
    [
        SinkResult(Outcome.RATE_LIMITED, http_status=429, attempts=1),
        SinkResult(Outcome.FAILED, http_status=400, attempts=1),
    ],
    ids=["rate-limited", "failed"],
)
def test_a_failed_refresh_on_the_old_target_does_not_hold_the_new_one_until_it_lapses(
    clock: ManualClock, failure: SinkResult
) -> None:
    """The refresh of the indicator shown on target A fails for good while the session
    moves to B. A's indicator cannot be taken down (no "Off"): it is recorded as lapsed at
    once, as a move with no call out does, and B is set as soon as the failure allows (at
    once after a 429, after the backoff otherwise), not when A's "shown until" passes."""
    config = EngineConfig(messaging_max_duration_ms=20_000)
    store = PartitionStore(0, config, clock)
    store.on_event(ev("s1", Status.TYPING, T0, timeout=60_000), 1)
    [shown] = store.take_work(5)
    store.on_result(shown, APPLIED)
    assert shown.desired is not None
    shown_until = shown.desired.expires_at
    assert shown_until == T0 + 20_000
    clock.set(shown_until - 2000)  # within the refresh lead (12 % of 20 s)
    store.on_event(ev("s1", Status.TYPING, clock.now_ms(), timeout=60_000), 2)
    store.on_tick()
    [refresh] = store.take_work(5)
    assert (refresh.kind, refresh.target) == (WorkKind.REFRESH, AgentTypingTarget(CONV, COMM))
    clock.advance(50)
    store.on_event(
        ev("s1", Status.TYPING, clock.now_ms(), target=OPEN, timeout=60_000, eid="moved"), 3
    )
    store.drain()
    store.on_result(refresh, failure)
    out = store.drain()
    assert [(c.status, c.reason, c.version) for c in out.changes] == [
        (CrmStatus.CLEARED, ChangeReason.EVENT, 2)
    ]
    failed_at = clock.now_ms()
    moved = store.take_work(5)
    while not moved and clock.now_ms() < shown_until:
        clock.advance(10)
        store.on_tick()
        moved = store.take_work(5)
    assert moved, "nothing was sent for the new target until the old one's shown-until"
    assert clock.now_ms() - failed_at <= config.retry_base_ms + config.timer_resolution_ms + 10
    [work] = moved
    # the move's event is carried by the set (not audited as suppressed meanwhile)
    assert (work.kind, work.version, work.event_id) == (WorkKind.SET, 3, "moved")
    assert work.target is not None
    assert work.target != AgentTypingTarget(CONV, COMM)


@pytest.mark.parametrize(
    ("outcome", "http_status"),
    [(Outcome.SESSION_NOT_FOUND, 404), (Outcome.SESSION_NOT_CONNECTED, 409)],
)
def test_the_old_webchat_session_gone_does_not_drop_the_indicator_wanted_elsewhere(
    store: PartitionStore, clock: ManualClock, outcome: Outcome, http_status: int
) -> None:
    """The session moved from its webchat session to a messaging target, and the clear of
    the webchat indicator finds that session unknown or closed: its indicator is gone with
    it, but the conversation the session moved to is another resource, and the indicator
    its last event wants there is still set (I4)."""
    store.on_event(ev("s1", Status.TYPING, T0, target=None), 1)
    [webchat] = store.take_work(5)
    store.on_result(webchat, APPLIED)
    clock.advance(300)
    store.on_event(ev("s1", Status.TYPING, clock.now_ms(), target=AGENT, eid="moved"), 2)
    [clear] = store.take_work(5)
    assert (clear.kind, clear.target) == (WorkKind.CLEAR, None)
    store.on_result(clear, SinkResult(outcome, http_status=http_status, attempts=1))
    out = store.drain()
    assert [(c.status, c.reason, c.version) for c in out.changes] == [
        (CrmStatus.TYPING, ChangeReason.EVENT, 1),
        (CrmStatus.CLEARED, ChangeReason.SESSION_CLOSED, 2),
    ]
    assert store.shown_webchat_count == 0
    [moved] = store.take_work(5)
    assert (moved.kind, moved.target, moved.version) == (
        WorkKind.SET,
        AgentTypingTarget(CONV, COMM),
        3,
    )
    store.on_result(moved, APPLIED)
    session = store.session("s1")
    assert session is not None
    assert (session.remote, session.remote_target) == (Status.TYPING, AgentTypingTarget(CONV, COMM))
    assert [(c.status, c.version) for c in store.drain().changes] == [(CrmStatus.TYPING, 3)]


def test_a_messaging_conversation_unknown_after_the_session_moved_back_to_webchat(
    store: PartitionStore, clock: ManualClock
) -> None:
    """The same the other way: a messaging set finds its conversation unknown after the
    session moved back to its webchat session, which still gets the indicator."""
    store.on_event(ev("s1", Status.TYPING, T0, target=AGENT), 1)
    [messaging] = store.take_work(5)
    clock.advance(50)
    store.on_event(ev("s1", Status.TYPING, clock.now_ms(), target=None), 2)
    store.on_result(messaging, SinkResult(Outcome.SESSION_NOT_FOUND, http_status=404, attempts=1))
    [webchat] = store.take_work(5)
    assert (webchat.kind, webchat.target, webchat.version) == (WorkKind.SET, None, 1)


def test_shown_messaging_lists_the_sessions_whose_indicator_is_shown(
    store: PartitionStore, clock: ManualClock
) -> None:
    """The planner owes each of them a refresh while typing goes on: listed once shown,
    after a restore too, and no longer once lapsed or moved to the webchat session."""
    store.on_event(ev("s1", Status.TYPING, T0, timeout=20_000), 1)
    store.on_event(ev("s2", Status.TYPING, T0, timeout=5000, target=OPEN), 2)
    assert store.shown_messaging_count == 0  # nothing shown before the calls land
    for work in store.take_work(5):
        store.on_result(work, APPLIED)
    assert sorted(s.sid for s in store.shown_messaging()) == ["s1", "s2"]
    restored = PartitionStore.restore(0, EngineConfig(), clock, store.drain().changelog)
    assert sorted(s.sid for s in restored.shown_messaging()) == ["s1", "s2"]
    clock.advance(100)
    store.on_event(ev("s1", Status.TYPING, clock.now_ms(), target=None), 3)  # moved
    clock.advance(5000)  # s2's indicator lapses with its deadline
    store.on_tick()
    assert store.shown_messaging_count == 0
    assert [s.sid for s in store.shown_webchat()] == []
    [webchat] = store.take_work(5)
    assert (webchat.session_id, webchat.target) == ("s1", None)


def _ambiguous(shown_until_ms: int | None = None, status: int | None = 503) -> SinkResult:
    """A messaging call that gave up without a definitive answer (a 5xx, a timeout)."""
    return SinkResult(
        Outcome.FAILED,
        http_status=status,
        attempts=1,
        error="POST answered HTTP 503" if status else "ReadTimeout",
        ambiguous=True,
        shown_until_ms=shown_until_ms,
    )


def test_an_ambiguous_call_is_recorded_as_landed_and_lapses_after_a_stop(
    store: PartitionStore, clock: ManualClock
) -> None:
    """A 5xx after the request went out: it may be shown until what the sink says, and
    cannot be read back. The CRM hears `typing` at once and `cleared` when it lapses, even
    though typing stops before anything is sent again (it used to hear neither)."""
    store.on_event(ev("s1", Status.TYPING, T0, timeout=3000, eid="typed"), 1)
    [work] = store.take_work(5)
    clock.advance(300)
    shown_until = T0 + 3100  # the sink's retry went out late
    store.on_result(work, _ambiguous(shown_until))
    out = store.drain()
    assert [(c.status, c.version, c.expires_at) for c in out.changes] == [
        (CrmStatus.TYPING, 1, shown_until)
    ]
    assert [(a.event_id, a.result) for a in out.audits] == [
        ("typed", Decision.FAILED),
        ("typed", Decision.APPLIED),
    ]
    assert "outcome unknown" in out.audits[1].error
    assert [s.sid for s in store.shown_messaging()] == ["s1"]
    clock.advance(50)
    store.on_event(ev("s1", Status.STOPPED, clock.now_ms(), eid="stop"), 2)
    while clock.now_ms() < shown_until:
        assert store.take_work(5) == [], "a call after the stop"
        clock.advance(10)
        store.on_tick()
    out = store.drain()
    assert [(c.status, c.reason, c.version, c.applied_at) for c in out.changes] == [
        (CrmStatus.CLEARED, ChangeReason.STOPPED, 2, shown_until)
    ]
    assert [(a.event_id, a.result) for a in out.audits] == [("stop", Decision.LAPSED)]
    assert store.shown_messaging_count == 0


def test_an_ambiguous_call_is_sent_again_after_the_backoff_while_still_wanted(
    store: PartitionStore, clock: ManualClock
) -> None:
    """It may not have landed: while the indicator is still wanted, a refresh follows as
    soon as the backoff allows (long before the usual refresh point), with the next
    version; a second ambiguous answer backs off longer, and a landing ends the doubt."""
    config = EngineConfig(messaging_max_duration_ms=5000)
    store.on_event(ev("s1", Status.TYPING, T0, timeout=20_000), 1)
    [work] = store.take_work(5)
    store.on_result(work, _ambiguous(status=None))  # a timeout: no "shown until" said
    [typing] = store.drain().changes
    assert (typing.version, typing.expires_at) == (1, work.issued_at + work.duration_ms)
    assert store.take_work(5) == []  # not before the backoff
    assert store.is_backing_off("s1")
    delays = []
    for version in (2, 3):
        failed_at = clock.now_ms()
        resent = store.take_work(5)
        while not resent:
            clock.advance(1)
            store.on_tick()
            resent = store.take_work(5)
        delays.append(clock.now_ms() - failed_at)
        [again] = resent
        assert (again.kind, again.version) == (WorkKind.REFRESH, version)
        assert again.duration_ms == 5000
        store.on_result(again, _ambiguous() if version == 2 else APPLIED)
    assert delays[0] <= config.retry_base_ms + config.timer_resolution_ms
    assert delays[1] > delays[0]  # backs off as for any failure
    assert [(c.status, c.version) for c in store.drain().changes] == [
        (CrmStatus.TYPING, 2),
        (CrmStatus.TYPING, 3),
    ]
    clock.advance(2000)  # landed: nothing more until the usual refresh point
    store.on_tick()
    assert store.take_work(5) == []


def test_an_ambiguous_call_answered_429_at_last_is_sent_again_when_the_budget_allows(
    store: PartitionStore, clock: ManualClock
) -> None:
    """A 5xx, then a 429 on the retry: the budget waits, not the session (no backoff),
    and the re-send is queued with the refreshes, ahead of new sets."""
    store.on_event(ev("s1", Status.TYPING, T0, timeout=20_000), 1)
    [work] = store.take_work(5)
    store.on_event(ev("s2", Status.TYPING, T0, timeout=20_000, target=OPEN), 2)
    store.on_result(
        work, SinkResult(Outcome.RATE_LIMITED, http_status=429, attempts=2, ambiguous=True)
    )
    assert [s.sid for s in store.queued_refreshes()] == ["s1"]
    assert [(w.session_id, w.kind, w.version) for w in store.take_work(5)] == [
        ("s1", WorkKind.REFRESH, 2),
        ("s2", WorkKind.SET, 1),
    ]


def test_an_ambiguous_call_is_not_sent_again_once_the_session_moved_away(
    store: PartitionStore, clock: ManualClock
) -> None:
    """Moved to another target while the call was out: the indicator it may show there
    is recorded, then lapsed at once (as a move does), and only the new target is set."""
    store.on_event(ev("s1", Status.TYPING, T0, timeout=20_000), 1)
    [work] = store.take_work(5)
    clock.advance(50)
    store.on_event(ev("s1", Status.TYPING, clock.now_ms(), target=OPEN, timeout=20_000), 2)
    store.on_result(work, _ambiguous())
    assert [(c.status, c.version) for c in store.drain().changes] == [
        (CrmStatus.TYPING, 1),
        (CrmStatus.CLEARED, 2),
    ]
    clock.advance(1000)
    store.on_tick()
    [moved] = store.take_work(5)
    assert (moved.kind, moved.version) == (WorkKind.SET, 3)
    assert moved.target == OpenMessagingTarget(INTEGRATION, "cust-1", "Opaque", None)


def test_a_new_nickname_is_the_same_customer_not_a_move(
    store: PartitionStore, clock: ManualClock
) -> None:
    """Open Messaging names the customer by integration, id and id type; the nickname is
    what the agent sees written. A producer that sends it on some events only (or renames
    the customer) does not move the indicator: no lapse recorded while Genesys still shows
    it, no new call; the next refresh carries the nickname last given. It used to count as
    a move: a `cleared` to the CRM and a set again, at every change of the nickname."""
    named = {**OPEN, "nickname": "Ann"}
    store.on_event(ev("s1", Status.TYPING, T0, target=named, timeout=20_000), 1)
    [first] = store.take_work(5)
    store.on_result(first, APPLIED)
    store.drain()
    clock.advance(300)
    store.on_event(ev("s1", Status.TYPING, clock.now_ms(), target=OPEN, timeout=20_000), 2)
    clock.advance(300)
    renamed = {**OPEN, "nickname": "Ann B."}
    store.on_event(ev("s1", Status.TYPING, clock.now_ms(), target=renamed, timeout=20_000), 3)
    assert store.take_work(5) == []
    out = store.drain()
    assert out.changes == []
    assert {a.result for a in out.audits} == {Decision.SUPPRESSED}
    assert first.desired is not None
    clock.set(first.desired.expires_at - 100)  # within the refresh lead
    store.on_tick()
    [refresh] = store.take_work(5)
    assert refresh.kind is WorkKind.REFRESH
    assert isinstance(refresh.target, OpenMessagingTarget)
    assert (refresh.target.from_id, refresh.target.nickname) == ("cust-1", "Ann B.")


@pytest.mark.parametrize(
    ("stop", "move_at", "reason"),
    [
        (True, 1000, ChangeReason.STOPPED),  # the stop waits for the lapse
        (True, 6000, ChangeReason.STOPPED),  # ran out after the stop, tick not run yet
        (False, 1000, ChangeReason.EVENT),  # typing goes on elsewhere
        (False, 6000, ChangeReason.EXPIRED),  # ran out by itself, tick not run yet
    ],
    ids=["stopped-then-moved", "stopped-ran-out-then-moved", "moved", "ran-out-then-moved"],
)
def test_a_move_records_the_old_target_lapse_for_what_ended_it(
    store: PartitionStore, clock: ManualClock, stop: bool, move_at: int, reason: ChangeReason
) -> None:
    """A messaging indicator shown on A is recorded as lapsed when the session moves to B
    (it cannot be taken down). The CRM hears why it ended: a stop that came before it ran
    out ended it (as when no move follows), and one that ran out before the move's event
    was processed expired. The move recorded `event` whatever had happened."""
    store.on_event(ev("s1", Status.TYPING, T0, timeout=20_000, eid="typed"), 1)
    [work] = store.take_work(5)
    store.on_result(work, APPLIED)
    store.drain()
    assert work.desired is not None
    shown_until = work.desired.expires_at
    assert shown_until == T0 + 5000
    if stop:
        clock.set(T0 + 500)
        store.on_event(ev("s1", Status.STOPPED, clock.now_ms(), eid="stop"), 2)
        assert store.drain().changes == []  # waits for the lapse
    clock.set(T0 + move_at)
    store.on_event(ev("s1", Status.TYPING, clock.now_ms(), target=OPEN, eid="moved"), 3)
    out = store.drain()
    assert [(c.status, c.reason, c.version, c.applied_at) for c in out.changes] == [
        (CrmStatus.CLEARED, reason, 2, min(clock.now_ms(), shown_until))
    ]
    lapsed = [(a.event_id, a.result) for a in out.audits if a.result is Decision.LAPSED]
    assert lapsed == [("stop" if stop else None, Decision.LAPSED)]
    [moved] = store.take_work(5)
    assert (moved.kind, moved.version, moved.event_id) == (WorkKind.SET, 3, "moved")


def test_a_call_landing_after_a_stop_that_moved_lapses_as_stopped(
    store: PartitionStore, clock: ManualClock
) -> None:
    """The call on A is out when a stop naming B comes: once it lands, A's indicator is
    recorded as lapsed (it cannot be taken down), ended by the stop, not by a move."""
    store.on_event(ev("s1", Status.TYPING, T0, timeout=20_000, eid="typed"), 1)
    [work] = store.take_work(5)
    clock.advance(100)
    store.on_event(ev("s1", Status.STOPPED, clock.now_ms(), target=OPEN, eid="stop"), 2)
    store.on_result(work, APPLIED)
    out = store.drain()
    assert [(c.status, c.reason, c.version) for c in out.changes] == [
        (CrmStatus.TYPING, ChangeReason.EVENT, 1),
        (CrmStatus.CLEARED, ChangeReason.STOPPED, 2),
    ]
    assert [(a.event_id, a.result) for a in out.audits] == [
        ("typed", Decision.APPLIED),
        ("stop", Decision.LAPSED),
    ]
    assert store.take_work(5) == []


@pytest.mark.parametrize("moved_first", [True, False], ids=["moved-while-out", "moved-after"])
def test_an_ambiguous_call_on_the_old_target_does_not_delay_the_new_one(
    store: PartitionStore, clock: ManualClock, moved_first: bool
) -> None:
    """A call on A timed out (it may have landed): its backoff spaces sending it again on
    A. Once the session is wanted on B (moved while the call was out, or after), nothing
    is sent on A again, and B's set goes at once; it used to wait for A's backoff."""
    store.on_event(ev("s1", Status.TYPING, T0, timeout=20_000), 1)
    [work] = store.take_work(5)
    clock.advance(50)
    moving = ev("s1", Status.TYPING, T0 + 50, target=OPEN, timeout=20_000, eid="moved")
    if moved_first:
        store.on_event(moving, 2)
    store.on_result(work, _ambiguous(status=None))
    if not moved_first:
        assert store.is_backing_off("s1")  # A's indicator waits to be sent again
        store.on_event(moving, 2)
    assert not store.is_backing_off("s1")
    [moved] = store.take_work(5)
    assert (moved.kind, moved.version, moved.event_id) == (WorkKind.SET, 3, "moved")
    assert moved.target == OpenMessagingTarget(INTEGRATION, "cust-1", "Opaque", None)


def test_a_quiet_period_after_a_404_keeps_only_that_target_quiet(
    store: PartitionStore, clock: ManualClock
) -> None:
    """Genesys said the conversation of A is unknown: calls to A wait for the quiet
    period; the same session typing on B (another resource) is set at once, whether it
    comes back on B or comes back on A and moves to B. A 404 on B then starts B's quiet
    period at its base, not doubled by A's answer. The quiet period was kept by session
    id alone, so B was kept quiet for A's answer."""
    quiet = EngineConfig().gone_quiet_base_ms
    store.on_event(ev("s1", Status.TYPING, T0, timeout=20_000), 1)
    [work] = store.take_work(5)
    store.on_result(work, SinkResult(Outcome.SESSION_NOT_FOUND, http_status=404, attempts=1))
    assert store.session("s1") is None
    clock.advance(100)
    store.on_event(ev("s1", Status.TYPING, clock.now_ms(), timeout=20_000), 2)
    assert store.take_work(5) == []  # A is kept quiet
    assert store.is_backing_off("s1")
    clock.advance(100)
    store.on_event(ev("s1", Status.TYPING, clock.now_ms(), target=OPEN, timeout=20_000), 3)
    [moved] = store.take_work(5)  # B is not
    assert moved.target == OpenMessagingTarget(INTEGRATION, "cust-1", "Opaque", None)
    store.on_result(moved, SinkResult(Outcome.SESSION_NOT_FOUND, http_status=404, attempts=1))
    gone_at = clock.now_ms()
    clock.advance(100)
    store.on_event(ev("s1", Status.TYPING, clock.now_ms(), target=OPEN, timeout=20_000), 4)
    assert store.take_work(5) == []  # B is kept quiet now
    clock.set(gone_at + quiet)  # the base period: not doubled by A's 404
    store.on_tick()
    [again] = store.take_work(5)
    assert again.target == moved.target


def test_a_session_back_on_another_target_than_its_404_is_set_at_once(
    store: PartitionStore, clock: ManualClock
) -> None:
    """The conversation of A has ended (409) and the session is forgotten; its next
    event names B (or the webchat session): no quiet period holds it there."""
    store.on_event(ev("s1", Status.TYPING, T0, timeout=20_000), 1)
    [work] = store.take_work(5)
    store.on_result(work, SinkResult(Outcome.SESSION_NOT_CONNECTED, http_status=409, attempts=1))
    clock.advance(100)
    store.on_event(ev("s1", Status.TYPING, clock.now_ms(), target=OPEN, timeout=20_000), 2)
    assert not store.is_backing_off("s1")
    [work] = store.take_work(5)
    assert work.target == OpenMessagingTarget(INTEGRATION, "cust-1", "Opaque", None)
    clock.advance(100)
    store.on_event(ev("s1", Status.TYPING, clock.now_ms(), target=None, timeout=20_000), 3)
    store.on_result(work, APPLIED)
    [webchat] = store.take_work(5)  # the webchat session is another resource too
    assert webchat.target is None
