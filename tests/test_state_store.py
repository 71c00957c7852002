"""Unit tests of `PartitionStore`, one rule at a time, driven by a `ManualClock`."""

from __future__ import annotations

import heapq
import itertools

import pytest

from processor.clock import ManualClock
from processor.domain import (
    ChangeReason,
    Decision,
    Indicator,
    Outcome,
    SessionState,
    SinkResult,
    Status,
)
from processor.models import CrmStatus, Participant, TypingEvent
from processor.state import EngineConfig, PartitionStore, Work, WorkKind
from processor.state.changelog import floor_record
from processor.state.timers import COMPACT_MIN_ENTRIES
from processor.state.work import crm_event_id

T0 = 1_700_000_000_000
APPLIED = SinkResult(Outcome.APPLIED, http_status=200, attempts=1, latency_ms=12.5)
_ids = itertools.count()


def ev(
    sid: str,
    status: Status,
    at: int,
    *,
    eid: str | None = None,
    timeout: int | None = None,
    role: str | None = None,
) -> TypingEvent:
    return TypingEvent(
        event_id=eid or f"e{next(_ids)}",
        session_id=sid,
        status=status,
        occurred_at=at,
        timeout_ms=timeout,
        participant=Participant(id="p", role=role) if role else None,
    )


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
def store(clock: ManualClock) -> PartitionStore:
    return PartitionStore(3, EngineConfig(), clock)


def decisions(store: PartitionStore) -> list[Decision]:
    return [a.result for a in store.drain().audits]


def apply_all(store: PartitionStore, limit: int = 100) -> list[Work]:
    """Take all ready work and acknowledge it as applied."""
    works = store.take_work(limit)
    for w in works:
        store.on_result(w, APPLIED)
    return works


def test_audit_latency_is_kept_to_a_hundredth_of_a_ms_as_the_tutorials(
    store: PartitionStore,
) -> None:
    store.on_event(ev("s1", Status.TYPING, T0, eid="a"), offset=7)
    [work] = store.take_work(1)
    store.on_result(
        work, SinkResult(Outcome.APPLIED, http_status=200, attempts=1, latency_ms=12.34567)
    )
    [audit] = store.drain().audits
    assert audit.latency_ms == 12.35


def test_typing_event_queues_one_set_to_the_deadline(store: PartitionStore) -> None:
    store.on_event(ev("s1", Status.TYPING, T0 - 200, eid="a"), offset=41)
    assert store.queued_work == 1
    [work] = store.take_work(10)
    assert work == Work(
        "s1",
        Indicator(Status.TYPING, T0 - 200, T0 - 200 + 5000, 1),
        ChangeReason.EVENT,
        WorkKind.SET,
        1,
        "a",
        41,
        Status.TYPING,
        issued_at=T0,
    )
    assert store.in_flight == 1
    assert store.take_work(10) == []  # never two calls for one session


def test_applied_set_emits_audit_crm_change_and_changelog(
    store: PartitionStore, clock: ManualClock
) -> None:
    store.on_event(ev("s1", Status.TYPING, T0, eid="a"), offset=7)
    [work] = store.take_work(1)
    clock.advance(30)
    store.on_result(work, APPLIED)
    out = store.drain()
    [audit] = out.audits
    assert (audit.session_id, audit.result, audit.indicator_status) == (
        "s1",
        Decision.APPLIED,
        "typing",
    )
    assert (audit.event_id, audit.offset, audit.partition) == ("a", 7, 3)
    assert (audit.http_status, audit.attempts, audit.latency_ms) == (200, 1, 12.5)
    [change] = out.changes
    assert change.status is CrmStatus.TYPING
    assert change.version == 1
    assert change.expires_at == T0 + 5000
    assert change.applied_at == T0 + 30
    assert change.reason is ChangeReason.EVENT
    epoch = store.session("s1").epoch  # type: ignore[union-attr]
    assert change.event_id == crm_event_id("s1", epoch, 1, CrmStatus.TYPING)
    assert [k for k, _ in out.changelog] == [b"s1"]
    assert store.drain().changelog == []  # nothing changed since


def test_exact_duplicate_event_id_is_dropped(store: PartitionStore) -> None:
    store.on_event(ev("s1", Status.TYPING, T0, eid="dup"), 1)
    store.on_event(ev("s1", Status.STOPPED, T0 + 1, eid="dup"), 2)
    assert decisions(store) == [Decision.DUPLICATE]
    assert store.desired("s1") is Status.TYPING


def test_the_same_event_id_in_two_sessions_is_no_duplicate(store: PartitionStore) -> None:
    """Producers that number events per session reuse ids across sessions: only the same
    id of the same session (a redelivery) is a duplicate."""
    store.on_event(ev("s1", Status.TYPING, T0, eid="1"), 1)
    store.on_event(ev("s2", Status.TYPING, T0, eid="1"), 2)
    assert Decision.DUPLICATE not in decisions(store)
    assert store.desired("s2") is Status.TYPING
    store.on_event(ev("s2", Status.STOPPED, T0 + 1, eid="1"), 3)
    assert decisions(store) == [Decision.DUPLICATE]
    assert store.desired("s2") is Status.TYPING


def test_repeat_within_window_is_suppressed_and_extends_the_deadline(
    store: PartitionStore, clock: ManualClock
) -> None:
    store.on_event(ev("s1", Status.TYPING, T0), 1)
    apply_all(store)
    store.drain()
    clock.advance(1000)
    store.on_event(ev("s1", Status.TYPING, T0 + 1000), 2)
    assert decisions(store) == [Decision.SUPPRESSED]
    assert store.queued_work == 0
    assert store.session("s1").deadline == T0 + 6000  # type: ignore[union-attr]


def test_repeat_outside_window_costs_no_call_either(
    store: PartitionStore, clock: ManualClock
) -> None:
    store.on_event(ev("s1", Status.TYPING, T0, timeout=20_000), 1)
    apply_all(store)
    store.drain()
    clock.advance(2000)
    store.on_event(ev("s1", Status.TYPING, T0 + 2000, timeout=20_000), 2)
    assert decisions(store) == [Decision.SUPPRESSED]
    assert store.take_work(10) == []


def test_status_change_within_window_is_never_suppressed(store: PartitionStore) -> None:
    store.on_event(ev("s1", Status.TYPING, T0), 1)
    apply_all(store)
    store.on_event(ev("s1", Status.PAUSED, T0), 2)
    [work] = store.take_work(5)
    assert work.desired is not None
    assert work.desired.status is Status.PAUSED


@pytest.mark.parametrize(
    ("status", "role", "timeout", "lifetime"),
    [
        (Status.TYPING, None, None, 5000),
        (Status.TYPING, "agent", None, 5000),
        (Status.TYPING, "bot", None, 3000),
        (Status.PAUSED, "customer", None, 2000),
        (Status.TYPING, "bot", 700, 700),
        (Status.PAUSED, None, 60_000, 60_000),
    ],
)
def test_timeout_from_matrix_or_event(
    store: PartitionStore, status: Status, role: str | None, timeout: int | None, lifetime: int
) -> None:
    store.on_event(ev("s1", status, T0, role=role, timeout=timeout), 1)
    [work] = store.take_work(1)
    assert work.desired is not None
    assert work.desired.expires_at == T0 + lifetime


def test_stopped_clears_now_and_clears_go_before_sets(store: PartitionStore) -> None:
    store.on_event(ev("s1", Status.TYPING, T0), 1)
    apply_all(store)
    store.on_event(ev("s2", Status.TYPING, T0), 2)
    store.on_event(ev("s1", Status.STOPPED, T0 + 1, eid="stop"), 3)
    first, second = store.take_work(2)
    assert (first.session_id, first.kind, first.desired) == ("s1", WorkKind.CLEAR, None)
    assert (first.reason, first.event_id, first.version) == (ChangeReason.STOPPED, "stop", 2)
    assert second.session_id == "s2"
    store.on_result(first, APPLIED)
    out = store.drain()
    assert out.audits[-1].result is Decision.CLEARED
    assert out.changes[-1].status is CrmStatus.CLEARED
    assert out.changes[-1].version == 2
    assert out.changes[-1].expires_at is None


def test_stopped_for_an_unshown_indicator_costs_nothing(store: PartitionStore) -> None:
    store.on_event(ev("s1", Status.STOPPED, T0), 1)
    assert store.take_work(5) == []
    assert decisions(store) == [Decision.SUPPRESSED]


def test_expiry_clears_at_the_deadline_within_the_slack(
    store: PartitionStore, clock: ManualClock
) -> None:
    store.on_event(ev("s1", Status.TYPING, T0, timeout=3000), 1)
    apply_all(store)
    wake = store.next_wakeup_ms()
    assert wake is not None
    assert T0 + 3000 <= wake <= T0 + 3000 + EngineConfig().clear_slack_ms
    clock.set(T0 + 2999)
    store.on_tick()
    assert store.queued_work == 0
    clock.set(wake)
    store.on_tick()
    [work] = store.take_work(5)
    assert (work.kind, work.reason) == (WorkKind.CLEAR, ChangeReason.EXPIRED)
    store.on_result(work, APPLIED)
    assert [a.result for a in store.drain().audits][-1] is Decision.EXPIRED


def _learn_latency(store: PartitionStore, latency_ms: float, n: int = 0) -> None:
    """One long-lived set on another session, answered after `latency_ms`."""
    store.on_event(ev(f"w{n}", Status.TYPING, T0, timeout=20_000), n)
    [work] = store.take_work(1)
    result = SinkResult(
        Outcome.APPLIED, http_status=200, attempts=1, latency_ms=latency_ms,
        call_latencies_ms=(latency_ms,),
    )  # fmt: skip
    store.on_result(work, result)


def test_an_expiry_clear_goes_out_one_median_latency_early(
    store: PartitionStore, clock: ManualClock
) -> None:
    # Landing takes a PATCH's latency: sent that much before the deadline, the clear
    # lands when it passes instead of showing the latency as phantom typing.
    for n, latency in enumerate([40, 35, 900, 30, 38]):  # one slow outlier
        _learn_latency(store, latency, n)
    store.on_event(ev("s1", Status.TYPING, T0, timeout=3000), 10)
    [work] = store.take_work(1)
    store.on_result(work, APPLIED)  # no latency measured: the estimate stays
    assert store.next_wakeup_ms() == T0 + 3000 - 38  # the median, not the mean
    clock.set(T0 + 3000 - 39)
    store.on_tick()
    assert store.queued_work == 0
    clock.set(T0 + 3000 - 38)
    store.on_tick()
    [work] = store.take_work(5)
    assert work.session_id == "s1"
    assert (work.kind, work.reason) == (WorkKind.CLEAR, ChangeReason.EXPIRED)


def test_clear_lead_is_bounded_by_the_timeout_and_the_setting(clock: ManualClock) -> None:
    store = PartitionStore(0, EngineConfig(clear_lead_max_ms=100), clock)
    _learn_latency(store, 400)  # a slow API: the setting caps the lead
    store.on_event(ev("s1", Status.TYPING, T0, timeout=5000), 1)
    store.on_event(ev("s2", Status.PAUSED, T0, timeout=1000), 2)
    for work in store.take_work(5):
        store.on_result(work, APPLIED)
    clock.set(T0 + 949)  # a twentieth of a 1 s timeout: 50 ms
    store.on_tick()
    assert store.queued_work == 0
    clock.set(T0 + 950)
    store.on_tick()
    assert [w.session_id for w in store.take_work(5)] == ["s2"]
    clock.set(T0 + 4900)
    store.on_tick()
    assert [w.session_id for w in store.take_work(5)] == ["s1"]


def test_an_event_before_an_early_clear_goes_out_keeps_the_indicator(
    store: PartitionStore, clock: ManualClock
) -> None:
    _learn_latency(store, 60)
    store.on_event(ev("s1", Status.TYPING, T0, timeout=3000), 1)
    [work] = store.take_work(1)
    store.on_result(work, APPLIED)
    clock.set(T0 + 2970)  # inside the lead, the tick not run yet: typing goes on
    store.on_event(ev("s1", Status.TYPING, T0 + 2970, timeout=3000), 2)
    store.on_tick()
    # no clear: the refresh I2 asks for, since Genesys' `expiresAt` is about to pass
    assert [w.kind for w in store.take_work(5)] == [WorkKind.REFRESH]


def test_an_unshown_indicator_is_wanted_until_its_deadline(
    store: PartitionStore, clock: ManualClock
) -> None:
    _learn_latency(store, 200)
    store.on_event(ev("s1", Status.TYPING, T0, timeout=10_000), 1)
    clock.set(T0 + 9850)  # within what would be the lead: still worth a set
    [work] = store.take_work(5)
    assert (work.session_id, work.kind) == ("s1", WorkKind.SET)


@pytest.mark.parametrize("gap", [100, 700, 1000, 1500, 2500, 3900])
def test_continuous_typing_never_lets_expires_at_lapse_and_refreshes_sparingly(
    store: PartitionStore, clock: ManualClock, gap: int
) -> None:
    timeout = 4000
    store.on_event(ev("s1", Status.TYPING, T0, timeout=timeout), 0)
    remote_expires = 0
    calls = 0
    for step in range(1, 20_001):  # 20 s, one ms at a time; an event every `gap` ms
        clock.advance(1)
        now = clock.now_ms()
        if step % gap == 0:
            store.on_event(ev("s1", Status.TYPING, now, timeout=timeout), step)
        wake = store.next_wakeup_ms()
        if wake is not None and wake <= now:
            store.on_tick()
        for work in store.take_work(5):
            assert work.kind is not WorkKind.CLEAR
            assert work.desired is not None
            assert work.desired.expires_at <= store.session("s1").deadline  # type: ignore[union-attr]
            calls += 1
            store.on_result(work, APPLIED)
            remote_expires = work.desired.expires_at
        assert remote_expires > now, f"expiresAt lapsed at {step} ms while typing"
    # one set, then refreshes at least half a timeout apart while events come at least
    # every quarter timeout, and on average no closer than 3/8 of it (see EngineConfig)
    spacing = timeout // 2 if gap <= timeout // 4 else timeout * 3 // 8
    assert calls <= 1 + 20_000 // spacing
    assert calls >= 2


def test_refresh_is_not_blocked_by_the_suppression_window(clock: ManualClock) -> None:
    store = PartitionStore(0, EngineConfig(suppression_window_ms=60_000), clock)
    store.on_event(ev("s1", Status.TYPING, T0, timeout=1000), 0)
    apply_all(store)
    clock.advance(900)  # past the refresh point (the lead before expiresAt)
    store.on_event(ev("s1", Status.TYPING, clock.now_ms(), timeout=1000), 1)
    [work] = store.take_work(5)
    assert work.kind is WorkKind.REFRESH
    assert work.desired is not None
    assert work.desired.expires_at == T0 + 1900
    assert work.desired.originated_at == T0  # the indicator's run started then
    assert work.version == 2


def test_stale_event_never_sets_an_indicator(store: PartitionStore) -> None:
    store.on_event(ev("s1", Status.TYPING, T0 - 5000), 1)
    assert store.take_work(5) == []
    [audit] = store.drain().audits
    assert audit.result is Decision.STALE
    assert store.desired("s1") is None


def test_newer_stale_event_of_another_status_clears(store: PartitionStore) -> None:
    store.on_event(ev("s1", Status.TYPING, T0, timeout=60_000), 1)
    apply_all(store)
    store.on_event(ev("s1", Status.PAUSED, T0 + 1 - 60_000 + 60_000, timeout=500), 2)
    store.take_work(5)  # the paused set
    store.on_event(ev("s1", Status.TYPING, T0 - 600 + 2, timeout=500), 3)  # out of order
    assert store.desired("s1") is Status.PAUSED
    assert decisions(store)[-1] is Decision.STALE


def test_out_of_order_event_never_overrides_a_newer_one(store: PartitionStore) -> None:
    store.on_event(ev("s1", Status.STOPPED, T0), 1)
    store.on_event(ev("s1", Status.TYPING, T0 - 10), 2)
    assert store.desired("s1") is None
    out = store.drain()
    assert out.audits[-1].result is Decision.STALE
    assert "out of order" in out.audits[-1].error


def test_producer_clock_ahead_is_clamped_to_now(store: PartitionStore) -> None:
    store.on_event(ev("s1", Status.TYPING, T0 + 3_600_000), 1)
    [work] = store.take_work(1)
    assert work.desired is not None
    assert work.desired.originated_at == T0
    assert work.desired.expires_at == T0 + 5000


class SteppedClock:
    """A wall clock that an operating system may step backwards (NTP, a restored VM), or
    that another host reads a little behind."""

    def __init__(self, now_ms: int) -> None:
        self.now = now_ms

    def now_ms(self) -> int:
        return self.now


def test_a_clock_stepped_back_never_makes_newer_events_out_of_order() -> None:
    clock = SteppedClock(T0)
    store = PartitionStore(0, EngineConfig(), clock)
    store.on_event(ev("s1", Status.TYPING, T0, timeout=60_000), 1)
    apply_all(store)
    store.drain()
    clock.now = T0 - 2000  # the wall clock steps back two seconds
    store.on_event(ev("s1", Status.STOPPED, T0 + 100), 2)  # the producer's time goes on
    assert decisions(store) == []  # not "stale": the stop is the newest word
    assert store.desired("s1") is None
    [work] = store.take_work(5)
    assert (work.kind, work.reason) == (WorkKind.CLEAR, ChangeReason.STOPPED)


def test_a_store_restored_on_a_host_whose_clock_is_behind_takes_newer_events() -> None:
    store = PartitionStore(0, EngineConfig(), SteppedClock(T0))
    store.on_event(ev("s1", Status.TYPING, T0, timeout=60_000), 1)
    apply_all(store)
    log = store.drain().changelog
    behind = SteppedClock(T0 - 1500)  # the next owner's clock is 1.5 s behind
    restored = PartitionStore.restore(0, EngineConfig(), behind, log)
    restored.on_event(ev("s1", Status.STOPPED, T0 + 200), 2)
    assert restored.desired("s1") is None
    assert [w.kind for w in restored.take_work(5)] == [WorkKind.CLEAR]


def test_versions_increase_by_one_per_applied_change_including_clears(
    store: PartitionStore, clock: ManualClock
) -> None:
    for i, status in enumerate([Status.TYPING, Status.PAUSED, Status.STOPPED, Status.TYPING]):
        clock.advance(10)
        store.on_event(ev("s1", status, clock.now_ms()), i)
        apply_all(store)
    versions = [c.version for c in store.drain().changes]
    assert versions == [1, 2, 3, 4]


def test_burst_during_a_call_collapses_to_the_latest_state(
    store: PartitionStore, clock: ManualClock
) -> None:
    store.on_event(ev("s1", Status.TYPING, T0, eid="a"), 1)
    [first] = store.take_work(5)
    for i, status in enumerate([Status.PAUSED, Status.STOPPED, Status.PAUSED]):
        clock.advance(1)
        store.on_event(ev("s1", status, clock.now_ms(), eid=f"b{i}"), 2 + i)
    assert store.take_work(5) == []  # one call at a time per session
    store.on_result(first, APPLIED)
    [follow_up] = store.take_work(5)
    assert follow_up.desired is not None
    assert follow_up.desired.status is Status.PAUSED
    assert (follow_up.event_id, follow_up.version) == ("b2", 2)
    coalesced = [
        (a.event_id, a.indicator_status)
        for a in store.drain().audits
        if a.result is Decision.COALESCED
    ]
    assert coalesced == [("b0", "paused"), ("b1", "stopped")]  # each with its own status


def test_change_back_to_the_shown_state_while_queued_costs_no_call(
    store: PartitionStore,
) -> None:
    store.on_event(ev("s1", Status.TYPING, T0), 1)
    apply_all(store)
    store.on_event(ev("s1", Status.PAUSED, T0 + 1), 2)
    store.on_event(ev("s1", Status.TYPING, T0 + 2), 3)
    assert store.take_work(5) == []


@pytest.mark.parametrize(
    ("outcome", "decision"),
    [
        (Outcome.SESSION_NOT_FOUND, Decision.SESSION_NOT_FOUND),
        (Outcome.SESSION_NOT_CONNECTED, Decision.SESSION_NOT_CONNECTED),
        (Outcome.REJECTED, Decision.REJECTED),
    ],
)
def test_closed_or_unknown_session_is_forgotten(
    store: PartitionStore, clock: ManualClock, outcome: Outcome, decision: Decision
) -> None:
    store.on_event(ev("s1", Status.TYPING, T0), 1)
    apply_all(store)
    store.drain()
    store.on_event(ev("s1", Status.PAUSED, T0 + 1), 2)
    [work] = store.take_work(5)
    store.on_result(work, SinkResult(outcome, http_status=404))
    out = store.drain()
    assert out.audits[-1].result is decision
    assert out.changelog == [floor_record("s1", 2, clock.now_ms() - EngineConfig().idle_evict_ms)]
    [change] = out.changes
    assert (change.status, change.reason, change.version) == (
        CrmStatus.CLEARED,
        ChangeReason.SESSION_CLOSED,
        2,
    )
    assert store.tracked_sessions == 0
    assert store.version_floor("s1") == 2
    assert store.take_work(5) == []


def test_failure_backs_off_then_retries_the_latest_state(
    store: PartitionStore, clock: ManualClock
) -> None:
    store.on_event(ev("s1", Status.TYPING, T0, timeout=60_000), 1)
    [work] = store.take_work(5)
    store.on_result(work, SinkResult(Outcome.CONFLICT, http_status=412))
    assert decisions(store) == [Decision.CONFLICT]
    assert store.is_backing_off("s1")
    assert store.take_work(5) == []
    wake = store.next_wakeup_ms()
    assert wake is not None
    assert wake <= T0 + EngineConfig().retry_base_ms
    clock.set(wake)
    store.on_tick()
    [retry] = store.take_work(5)
    assert retry.desired is not None
    assert retry.version == 1  # nothing was applied yet
    assert retry.event_id == work.event_id  # the cause rides on the retry
    # consecutive failures back off longer
    store.on_result(retry, SinkResult(Outcome.FAILED))
    assert (store.next_wakeup_ms() or 0) - clock.now_ms() > wake - T0


def test_a_429_waits_for_the_budget_not_for_a_backoff(store: PartitionStore) -> None:
    store.on_event(ev("s1", Status.TYPING, T0), 1)
    [work] = store.take_work(5)
    store.on_result(work, SinkResult(Outcome.RATE_LIMITED, http_status=429))
    assert decisions(store) == [Decision.RATE_LIMITED]
    assert not store.is_backing_off("s1")
    [retry] = store.take_work(5)  # the caller's budget decides when it goes out
    assert (retry.version, retry.event_id) == (1, work.event_id)


def test_a_set_that_went_stale_while_backing_off_is_not_resent(
    store: PartitionStore, clock: ManualClock
) -> None:
    store.on_event(ev("s1", Status.TYPING, T0, timeout=500), 1)
    [work] = store.take_work(5)
    store.on_result(work, SinkResult(Outcome.CONFLICT, http_status=412))
    clock.advance(5000)
    store.on_tick()
    assert store.take_work(5) == []
    assert store.desired("s1") is None


def test_an_ambiguous_failure_is_read_back_and_a_landed_change_recorded(
    store: PartitionStore, clock: ManualClock
) -> None:
    store.on_event(ev("s1", Status.TYPING, T0, eid="a"), 1)
    [work] = store.take_work(5)
    store.on_result(work, SinkResult(Outcome.FAILED, error="timeout", ambiguous=True))
    store.on_event(ev("s1", Status.STOPPED, T0 + 1, eid="b"), 2)
    clock.advance(60_000)
    store.on_tick()
    [read] = store.take_work(5)
    assert (read.kind, read.version) == (WorkKind.RESOLVE, 1)  # before anything else
    store.drain()
    assert work.desired is not None
    store.on_result(read, SinkResult(Outcome.APPLIED, remote_indicator=work.desired))
    out = store.drain()
    # the timed-out set did land: its CRM record and its cause's audit follow now
    assert [(c.status, c.version) for c in out.changes] == [(CrmStatus.TYPING, 1)]
    assert [(a.event_id, a.result) for a in out.audits] == [("a", Decision.APPLIED)]
    [clear] = store.take_work(5)
    assert (clear.kind, clear.version, clear.event_id) == (WorkKind.CLEAR, 2, "b")


def test_an_ambiguous_failure_that_did_not_land_reuses_its_version(
    store: PartitionStore, clock: ManualClock
) -> None:
    store.on_event(ev("s1", Status.TYPING, T0, eid="a", timeout=60_000), 1)
    [work] = store.take_work(5)
    store.on_result(work, SinkResult(Outcome.FAILED, error="HTTP 503", ambiguous=True))
    clock.advance(EngineConfig().retry_max_ms)
    store.on_tick()
    [read] = store.take_work(5)
    store.on_result(read, SinkResult(Outcome.APPLIED, remote_indicator=None))
    assert store.drain().changes == []
    [retry] = store.take_work(5)
    assert (retry.kind, retry.version, retry.event_id) == (WorkKind.SET, 1, "a")


def test_an_overtaken_call_adopts_the_version_shown_and_plans_again_at_once(
    store: PartitionStore, clock: ManualClock
) -> None:
    """Another writer (a previous owner during a rebalance) set version 3 while this store
    knew of version 1: the next change is version 4, for the same cause, without backoff."""
    store.on_event(ev("s1", Status.TYPING, T0, eid="a", timeout=60_000), 1)
    apply_all(store)
    store.drain()
    store.on_event(ev("s1", Status.PAUSED, T0 + 1, eid="b", timeout=60_000), 2)
    [work] = store.take_work(5)
    assert work.version == 2
    theirs = Indicator(Status.TYPING, T0, T0 + 30_000, 3)
    store.on_result(
        work, SinkResult(Outcome.OVERTAKEN, attempts=1, http_status=200, remote_indicator=theirs)
    )
    out = store.drain()
    assert out.changes == []
    assert [(a.event_id, a.result) for a in out.audits][-1] == ("b", Decision.CONFLICT)
    [retry] = store.take_work(5)
    assert (retry.kind, retry.version, retry.event_id) == (WorkKind.SET, 4, "b")
    assert retry.desired is not None
    assert retry.desired.status is Status.PAUSED
    store.on_result(retry, APPLIED)
    assert [(c.status, c.version) for c in store.drain().changes] == [(CrmStatus.PAUSED, 4)]


def test_clear_keeps_retrying_until_it_goes_through(
    store: PartitionStore, clock: ManualClock
) -> None:
    store.on_event(ev("s1", Status.TYPING, T0), 1)
    apply_all(store)
    store.on_event(ev("s1", Status.STOPPED, T0 + 1), 2)
    for _ in range(30):
        [clear] = store.take_work(5)
        assert clear.kind is WorkKind.CLEAR
        store.on_result(clear, SinkResult(Outcome.AUTH_CONFIG_ERROR, http_status=403))
        clock.advance(EngineConfig().retry_max_ms)
        store.on_tick()
    [clear] = store.take_work(5)
    store.on_result(clear, APPLIED)
    assert store.session("s1").remote is None  # type: ignore[union-attr]


def test_set_that_would_lapse_before_it_is_sent_is_dropped(
    store: PartitionStore, clock: ManualClock
) -> None:
    store.on_event(ev("s1", Status.TYPING, T0, timeout=1000, eid="late"), 1)
    clock.advance(950)  # queued behind the rate budget until 50 ms before its deadline
    assert store.take_work(5) == []
    out = store.drain()
    assert [(a.result, a.event_id) for a in out.audits] == [(Decision.EXPIRED, "late")]


def _typed_and_evicted(store: PartitionStore, clock: ManualClock) -> int:
    """s1 sets and clears an indicator (versions 1 and 2), then idles out; returns when
    it went idle."""
    store.on_event(ev("s1", Status.TYPING, T0), 1)
    apply_all(store)
    clock.advance(6000)
    store.on_tick()
    apply_all(store)  # the expiry clear
    store.drain()
    idle_since = clock.now_ms()
    clock.advance(EngineConfig().idle_evict_ms - 1000)
    store.on_tick()
    assert store.tracked_sessions == 1
    clock.advance(1000)
    store.on_tick()
    assert store.tracked_sessions == 0
    return idle_since


def test_idle_session_is_evicted_leaving_its_version_behind(
    store: PartitionStore, clock: ManualClock
) -> None:
    idle_since = _typed_and_evicted(store, clock)
    assert store.version_floor("s1") == 2
    assert store.drain().changelog == [floor_record("s1", 2, idle_since)]


def test_a_session_back_after_eviction_goes_on_with_the_next_version(
    store: PartitionStore, clock: ManualClock
) -> None:
    _typed_and_evicted(store, clock)
    store.drain()
    store.on_event(ev("s1", Status.TYPING, clock.now_ms(), eid="back"), 2)
    [work] = store.take_work(5)
    assert work.version == 3  # versions never repeat (I6)
    store.on_result(work, APPLIED)
    [change] = store.drain().changes
    assert change.version == 3
    assert store.version_floor("s1") is None  # tracked again


def test_a_closed_session_back_on_another_target_goes_on_with_the_next_version(
    store: PartitionStore, clock: ManualClock
) -> None:
    quiet = EngineConfig().gone_quiet_base_ms  # no call before it after a 409 or a 404
    store.on_event(ev("s1", Status.TYPING, T0), 1)
    [work] = store.take_work(5)
    store.on_result(work, SinkResult(Outcome.SESSION_NOT_CONNECTED, http_status=409))
    assert store.version_floor("s1") is None  # nothing was ever applied: nothing to keep
    clock.advance(quiet)
    store.on_event(ev("s1", Status.TYPING, T0 + quiet, eid="again"), 2)
    [work] = store.take_work(5)
    store.on_result(work, APPLIED)
    store.on_event(ev("s1", Status.PAUSED, T0 + quiet + 1, eid="paused"), 3)
    [work] = store.take_work(5)
    store.on_result(work, SinkResult(Outcome.SESSION_NOT_FOUND, http_status=404))
    assert store.version_floor("s1") == 2  # the set, then the clear the closing implies
    clock.advance(quiet)
    store.on_event(ev("s1", Status.TYPING, T0 + 2 * quiet, eid="reopened"), 4)
    [work] = store.take_work(5)
    assert work.version == 3


def test_a_version_floor_is_forgotten_after_version_memory_ms(clock: ManualClock) -> None:
    config = EngineConfig(version_memory_ms=EngineConfig().idle_evict_ms + 60_000)
    store = PartitionStore(0, config, clock)
    idle_since = _typed_and_evicted(store, clock)
    store.drain()
    clock.set(idle_since + config.version_memory_ms - 1)
    store.on_tick()
    assert store.version_floor("s1") == 2
    assert store.drain().changelog == []
    clock.advance(60_000)  # forgetting it is not urgent: within a minute
    store.on_tick()
    assert store.version_floor("s1") is None
    assert store.drain().changelog == [(b"s1", None)]
    store.on_event(ev("s1", Status.TYPING, clock.now_ms(), eid="new"), 2)
    [work] = store.take_work(5)
    assert work.version == 1  # a new lineage, under a new epoch


def test_a_stale_floor_timer_does_not_forget_a_later_floor(clock: ManualClock) -> None:
    config = EngineConfig(version_memory_ms=3 * EngineConfig().idle_evict_ms)
    store = PartitionStore(0, config, clock)
    first_idle = _typed_and_evicted(store, clock)
    store.on_event(ev("s1", Status.TYPING, clock.now_ms(), eid="back"), 2)
    apply_all(store)
    clock.advance(6000)
    store.on_tick()
    apply_all(store)
    clock.advance(config.idle_evict_ms)
    store.on_tick()
    assert store.version_floor("s1") == 4
    clock.set(first_idle + config.version_memory_ms + 60_000)  # the first floor's timer
    store.on_tick()
    assert store.version_floor("s1") == 4


def test_restore_agrees_with_the_live_store_on_a_floor_about_to_be_forgotten(
    clock: ManualClock,
) -> None:
    """A floor lasts until its (minute-wide) timer fires: a restore in between keeps it
    too, so that both give the session coming back the same version."""
    config = EngineConfig()
    store = PartitionStore(0, config, clock)
    idle_since = _typed_and_evicted(store, clock)
    log = store.drain().changelog
    clock.set(idle_since + config.version_memory_ms)  # due, its timer not fired yet
    store.on_tick()
    log += store.drain().changelog
    restored = PartitionStore.restore(0, config, clock, log)
    assert restored == store
    assert restored.version_floor("s1") == store.version_floor("s1") == 2


def test_restore_agrees_with_the_live_store_at_the_eviction_itself() -> None:
    """An idle session is forgotten as its timer fires, live and restored alike (here the
    eviction falls between two 2 ms timer buckets)."""
    clock = ManualClock(T0 + 1)
    config = EngineConfig()
    store = PartitionStore(0, config, clock)
    store.on_event(ev("s1", Status.TYPING, clock.now_ms()), 1)
    apply_all(store)
    clock.advance(6000)
    store.on_tick()
    apply_all(store)
    log = store.drain().changelog
    session = store.session("s1")
    assert session is not None
    clock.set(session.touched + config.idle_evict_ms)
    store.on_tick()
    log += store.drain().changelog
    assert PartitionStore.restore(0, config, clock, log) == store
    clock.advance(1)
    store.on_tick()
    log += store.drain().changelog
    assert store.tracked_sessions == 0
    assert PartitionStore.restore(0, config, clock, log) == store


def test_restore_keeps_floors_and_forgets_the_idled_out(clock: ManualClock) -> None:
    config = EngineConfig()
    store = PartitionStore(0, config, clock)
    log: list[tuple[bytes, bytes | None]] = []
    store.on_event(ev("idle", Status.TYPING, T0), 1)
    store.on_event(ev("quiet", Status.TYPING, T0 - 10_000, timeout=500), 2)  # stale: no change
    apply_all(store)
    clock.advance(6000)
    store.on_tick()
    apply_all(store)
    log += store.drain().changelog
    # a crash before the eviction tick: the restore forgets what was due
    clock.advance(config.idle_evict_ms)
    restored = PartitionStore.restore(0, config, clock, log)
    store.on_tick()
    assert restored == store
    assert restored.version_floor("idle") == 2
    assert restored.tracked_sessions == 0
    log += store.drain().changelog
    assert PartitionStore.restore(0, config, clock, log) == store


def test_tick_cost_is_proportional_to_due_timers(
    store: PartitionStore, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(2000):
        store.on_event(ev(f"s{i}", Status.TYPING, T0, timeout=60_000 if i % 100 else 1000), i)
    apply_all(store, 5000)
    settled: list[str] = []
    original = store._settle

    def spy(s, now, **kw):  # type: ignore[no-untyped-def]
        settled.append(s.sid)
        original(s, now, **kw)

    monkeypatch.setattr(store, "_settle", spy)
    clock.advance(1100)
    store.on_tick()
    assert len(settled) == 20


def test_restore_rebuilds_an_equal_store_and_resumes_pending_clears(
    store: PartitionStore, clock: ManualClock
) -> None:
    config = EngineConfig()
    log: list[tuple[bytes, bytes | None]] = []
    store.on_event(ev("shown", Status.TYPING, T0), 1)
    store.on_event(ev("gone", Status.TYPING, T0), 2)
    store.on_event(ev("flying", Status.PAUSED, T0), 3)
    apply_all(store)
    store.on_event(ev("gone", Status.STOPPED, T0 + 1), 4)
    [clear] = store.take_work(5)
    store.on_result(clear, SinkResult(Outcome.SESSION_NOT_FOUND, http_status=404))
    store.on_event(ev("shown", Status.STOPPED, T0 + 2), 5)  # pending clear
    store.on_event(ev("flying", Status.TYPING, T0 + 3), 6)
    [pending_clear, in_flight] = store.take_work(5)
    assert pending_clear.session_id == "shown"
    store.on_result(pending_clear, SinkResult(Outcome.RATE_LIMITED, http_status=429))
    log += store.drain().changelog

    restored = PartitionStore.restore(3, config, clock, log)
    assert restored == store
    assert restored.tracked_sessions == 2
    works = {w.session_id: w for w in restored.take_work(10)}
    assert works["shown"].kind is WorkKind.CLEAR  # the pending clear resumes at once
    # in flight at the crash: read back first, to learn whether it landed
    assert works["flying"].kind is WorkKind.RESOLVE
    assert works["flying"].version == in_flight.version
    # results of the old incarnation's calls are ignored by the new store
    restored.on_result(in_flight, APPLIED)
    assert restored.in_flight == 2


def test_restore_of_an_expired_indicator_clears_it(clock: ManualClock) -> None:
    store = PartitionStore(0, EngineConfig(), clock)
    store.on_event(ev("s1", Status.TYPING, T0), 1)
    apply_all(store)
    log = store.drain().changelog
    clock.advance(120_000)  # the partition was unowned for two minutes
    restored = PartitionStore.restore(0, EngineConfig(), clock, log)
    [work] = restored.take_work(5)
    assert (work.kind, work.reason) == (WorkKind.CLEAR, ChangeReason.EXPIRED)


def test_store_equality_follows_persisted_state(clock: ManualClock) -> None:
    a = PartitionStore(0, EngineConfig(), clock)
    b = PartitionStore(0, EngineConfig(), clock)
    assert a == b
    a.on_event(ev("s1", Status.TYPING, T0), 1)
    assert a != b
    assert a != "store"


def test_set_limit_keeps_capacity_for_clears(clock: ManualClock) -> None:
    store = PartitionStore(0, EngineConfig(), clock)
    for i in range(3):
        store.on_event(ev(f"s{i}", Status.TYPING, T0), i)
    first = store.take_work(10, set_limit=1)
    assert [w.kind for w in first] == [WorkKind.SET]
    for work in first:
        store.on_result(work, APPLIED)
    store.on_event(ev(first[0].session_id, Status.STOPPED, T0 + 1), 10)
    taken = store.take_work(10, set_limit=0)
    assert [(w.session_id, w.kind) for w in taken] == [(first[0].session_id, WorkKind.CLEAR)]
    assert len(store.take_work(10)) == 2


def test_a_read_back_that_finds_nothing_still_decides_the_cause(
    store: PartitionStore, clock: ManualClock
) -> None:
    store.on_event(ev("s1", Status.TYPING, T0, eid="lost", timeout=1000), 1)
    [work] = store.take_work(5)
    store.on_result(work, SinkResult(Outcome.FAILED, error="timeout", ambiguous=True))
    assert decisions(store) == [Decision.FAILED]
    clock.advance(EngineConfig().retry_max_ms)  # the wish lapses while the call is unresolved
    store.on_tick()
    [read] = store.take_work(5)
    assert read.kind is WorkKind.RESOLVE
    store.on_result(read, SinkResult(Outcome.APPLIED, remote_indicator=None))
    audits = store.drain().audits
    assert [(a.event_id, a.result) for a in audits] == [("lost", Decision.EXPIRED)]


def test_cancelled_timers_do_not_pile_up_under_churn(
    store: PartitionStore, clock: ManualClock
) -> None:
    """Every finished burst schedules its session's eviction 5 minutes on, and the next
    burst cancels it; cancelled entries used to stay until their time (one per burst per
    session). They are dropped once they outnumber the live ones: the timers stay within
    a small multiple of the sessions however long the churn goes on."""
    sessions = [f"s{i}" for i in range(100)]
    period = 10_000  # a burst every 10 s per session, 5 minutes' worth of them kept alive
    largest = 0
    offset = 0
    for step in range(0, 20 * 60_000, 500):
        clock.set(T0 + step)
        for i, sid in enumerate(sessions):
            if (step + 500 * i) % period == 0:
                offset += 1
                store.on_event(ev(sid, Status.TYPING, clock.now_ms(), timeout=3000), offset)
        store.on_tick()
        apply_all(store, 1000)
        store.drain()
        largest = max(largest, len(store._timers))
    assert store.tracked_sessions == len(sessions)
    assert largest <= 2 * len(sessions) + COMPACT_MIN_ENTRIES + 1, largest


@pytest.mark.parametrize(
    "outcome", [Outcome.SESSION_NOT_FOUND, Outcome.SESSION_NOT_CONNECTED, Outcome.REJECTED]
)
def test_a_session_genesys_said_is_gone_calls_again_only_after_a_quiet_period(
    store: PartitionStore, clock: ManualClock, outcome: Outcome
) -> None:
    """A producer typing into a session that is not there (or still queued) spent a call
    of the shared budget per keystroke: each event found the session forgotten and asked
    again. Its events are kept; its calls wait, twice as long after each such answer."""
    base = EngineConfig().gone_quiet_base_ms
    store.on_event(ev("s1", Status.TYPING, clock.now_ms(), timeout=30_000), 1)
    [work] = store.take_work(5)
    for quiet in (base, 2 * base, 4 * base):
        store.on_result(work, SinkResult(outcome, http_status=404))
        gone_at = clock.now_ms()
        for _ in range(3):  # keystrokes while quiet: no call
            clock.advance(quiet // 4)
            store.on_event(ev("s1", Status.TYPING, clock.now_ms(), timeout=30_000), 2)
            store.on_tick()
            assert store.take_work(5) == []
        clock.set(gone_at + quiet)
        store.on_tick()
        [work] = store.take_work(5)  # once the period is over, what the keystrokes asked
        assert work.kind is WorkKind.SET
        assert work.desired is not None
        assert (work.desired.originated_at, work.desired.expires_at) == (
            gone_at + quiet // 4,
            gone_at + 3 * (quiet // 4) + 30_000,
        )


def test_a_session_back_after_a_quiet_period_calls_at_once_again(
    store: PartitionStore, clock: ManualClock
) -> None:
    """Once a call lands, the session is there: nothing of its quiet is left."""
    store.on_event(ev("s1", Status.TYPING, clock.now_ms()), 1)
    [work] = store.take_work(5)
    store.on_result(work, SinkResult(Outcome.SESSION_NOT_CONNECTED, http_status=409))
    clock.advance(EngineConfig().gone_quiet_base_ms)
    store.on_event(ev("s1", Status.TYPING, clock.now_ms()), 2)
    [work] = store.take_work(5)
    store.on_result(work, APPLIED)
    store.on_event(ev("s1", Status.STOPPED, clock.now_ms()), 3)
    [clear] = store.take_work(5)
    store.on_result(clear, SinkResult(Outcome.SESSION_NOT_FOUND, http_status=404))
    store.on_event(ev("s1", Status.TYPING, clock.now_ms()), 4)
    assert store.take_work(5) == []  # quiet again, for the first period only
    clock.advance(EngineConfig().gone_quiet_base_ms)
    store.on_tick()
    assert [w.kind for w in store.take_work(5)] == [WorkKind.SET]


@pytest.mark.parametrize(
    ("state", "longest"),
    [
        (SessionState.QUEUED, EngineConfig().queued_quiet_max_ms),
        (SessionState.CLOSED, EngineConfig().gone_quiet_max_ms),
    ],
)
def test_a_queued_session_waits_less_than_a_closed_one(
    store: PartitionStore, clock: ManualClock, state: SessionState, longest: int
) -> None:
    """A customer typing while queued: the agent about to answer should see the first
    typing after that without a minute's wait; a closed session can wait the longest."""
    base = EngineConfig().gone_quiet_base_ms
    refused = SinkResult(Outcome.SESSION_NOT_CONNECTED, http_status=409, remote_state=state)
    for answers in range(1, 12):
        store.on_event(ev("s1", Status.TYPING, clock.now_ms(), timeout=60_000), 2 * answers)
        store.on_tick()
        [work] = store.take_work(5)
        store.on_result(work, refused)
        quiet = min(longest, base << (answers - 1))
        gone_at = clock.now_ms()
        clock.set(gone_at + quiet - 1)
        store.on_event(ev("s1", Status.TYPING, clock.now_ms(), timeout=60_000), 2 * answers + 1)
        store.on_tick()
        assert store.take_work(5) == [], (answers, quiet)
        clock.set(gone_at + quiet)
    assert quiet == longest


def _outcome_of(work: Work, clock: ManualClock, answered: set[str]) -> SinkResult:
    """What Genesys answers a call of session `s<i>`, by `i` (a mix of every answer), the
    first time (`answered` lists the sessions called before); a retry lands."""
    if work.kind is WorkKind.RESOLVE:
        return SinkResult(Outcome.APPLIED, remote_state=SessionState.CONNECTED)
    kind = int(work.session_id[1:]) % 8
    first = work.session_id not in answered
    answered.add(work.session_id)
    if kind == 1:
        return SinkResult(Outcome.SESSION_NOT_FOUND, http_status=404)
    if kind == 2:
        return SinkResult(Outcome.SESSION_NOT_CONNECTED, remote_state=SessionState.QUEUED)
    if kind == 3 and first:
        return SinkResult(Outcome.FAILED, http_status=503, ambiguous=True)
    if kind == 4 and first:
        return SinkResult(Outcome.RATE_LIMITED, http_status=429)
    if kind == 5 and first:
        ahead = Indicator(Status.TYPING, clock.now_ms(), clock.now_ms() + 2000, work.version + 1)
        return SinkResult(Outcome.OVERTAKEN, remote_indicator=ahead)
    if work.target is not None:
        return SinkResult(Outcome.APPLIED, shown_until_ms=clock.now_ms() + work.duration_ms)
    return SinkResult(Outcome.APPLIED, http_status=200, call_latencies_ms=(20.0,))


def test_memory_returns_to_a_small_bound_once_sessions_go_idle(clock: ManualClock) -> None:
    """Weeks of traffic see millions of sessions, each typing for a few minutes and never
    again: whatever the store keeps per session or per event goes once its session is
    forgotten (idle for `idle_evict_ms`), and its version floor after `version_memory_ms`.
    What stays is bounded by configuration, not by the sessions seen."""
    # (sessions said to be gone type on within their quiet period)
    quiet = 30_000
    config = EngineConfig(
        dedupe_capacity=1000,
        gone_memory=100,
        gone_quiet_base_ms=quiet,
        queued_quiet_max_ms=quiet,
    )
    store = PartitionStore(0, config, clock)
    agent = {
        "kind": "agent_typing",
        "conversation_id": "3fa85f64-5717-4562-b3fc-2c963f66afa6",
        "communication_id": "3fa85f64-5717-4562-b3fc-2c963f66afa7",
    }
    sessions = 20_000
    start_every = 60  # 20,000 sessions over 20 minutes, about 300 typing at once
    # (due, session index, burst step): typing every 20 s for a minute, then stopped
    due = [(T0 + i * start_every, i, 0) for i in range(sessions)]
    offsets = itertools.count()
    step_ms = 500
    answered: set[str] = set()
    while due:
        now = clock.advance(step_ms)
        while due and due[0][0] <= now:
            at, i, step = heapq.heappop(due)
            sid = f"s{i}"
            status = Status.STOPPED if step == 3 else Status.TYPING
            event = TypingEvent.model_validate(
                {
                    "event_id": f"e{i}-{step}",
                    "session_id": sid,
                    "status": status,
                    "occurred_at": at,
                    "timeout_ms": 25_000,
                    **({"target": agent} if i % 8 == 6 else {}),
                }
            )
            store.on_event(event, next(offsets))
            if step < 3:
                heapq.heappush(due, (at + 20_000, i, step + 1))
        store.on_tick()
        for work in store.take_work(1000):
            store.on_result(work, _outcome_of(work, clock, answered))
        store.drain()

    clock.advance(config.idle_evict_ms + 120_000)
    store.on_tick()
    store.drain()
    assert store.tracked_sessions == 0
    assert store.queued_work == 0
    assert store.in_flight == 0
    for name in ("_backoff", "_shown", "_shown_messaging", "_held", "_dirty"):
        assert len(getattr(store, name)) == 0, name
    assert len(store._timers) == 0
    assert len(store._dedupe) <= 2 * config.dedupe_capacity
    assert len(store._gone_quiet) <= config.gone_memory
    assert len(store._ints) <= 1
    assert len(store._leads) <= 2
    assert store._floors  # versions of sessions that changed something, for a day
    clock.advance(config.version_memory_ms)
    store.on_tick()
    assert len(store._floors) == 0
    assert len(store._floor_timers) == 0
    changelog = store.drain().changelog
    assert changelog
    assert all(value is None for _, value in changelog)  # tombstones: the topic shrinks too
